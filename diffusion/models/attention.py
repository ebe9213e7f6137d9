"""Scaled dot-product attention through the fastest kernel the backend has.

On NVIDIA GPUs, cuDNN's fused attention for bf16/fp16 heads of at most 128 channels (a
multiple of 8); XLA's otherwise. Measured on an H200 (docs/benchmarks.md, forward and
backward at 256 positions, batch 128, bf16): four heads of 64 channels 0.213 ms with cuDNN
against 0.496 ms with XLA; one head of 256 channels (the DDPM U-Net's) 0.225 against 0.181.
"""

import jax
import jax.numpy as jnp

from diffusion import platforms

_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def implementation(dtype, head_dim: int, platform: str | None = None) -> str | None:
  """The `implementation` argument of `jax.nn.dot_product_attention` for heads of `head_dim`
  channels in `dtype` on `platform` (default: the platform being built for, `platforms.current()`):
  "cudnn" or None (XLA)."""
  platform = platform or platforms.current()
  if (platform in ("gpu", "cuda") and jnp.dtype(dtype) in _HALF and head_dim <= 128
      and head_dim % 8 == 0):
    return "cudnn"
  return None


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """softmax(q kᵀ / √D) v per head: q [B, L, H, D], k and v [B, S, H, D] -> [B, L, H, D]."""
  kernel = implementation(q.dtype, q.shape[-1])
  if kernel:
    try:
      return jax.nn.dot_product_attention(q, k, v, implementation=kernel)
    except (ValueError, NotImplementedError):  # a shape or cuDNN version it does not take
      pass
  return jax.nn.dot_product_attention(q, k, v)


def flax_attention_fn(query, key, value, bias=None, mask=None, dropout_rate=0.0,
                      deterministic=True, **kwargs):
  """`attention` as the `attention_fn` of `flax.linen.MultiHeadDotProductAttention` (same
  parameters); with a bias, a mask or dropout, Flax's own function."""
  if bias is not None or mask is not None or (dropout_rate > 0 and not deterministic):
    import flax.linen as nn
    return nn.dot_product_attention(query, key, value, bias=bias, mask=mask,
                                    dropout_rate=dropout_rate, deterministic=deterministic,
                                    **kwargs)
  return attention(query, key, value)
