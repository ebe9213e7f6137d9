"""A Diffusion Transformer (Peebles & Xie 2023) for data of any spatial rank: registered as "dit".

The example [*spatial, C] is cut into patches of `patch_size` along every
spatial axis, each patch a token; fixed sine-cosine positions per axis; a
stack of Transformer blocks conditioned by adaLN-Zero (the timestep's and
class's embedding regress a shift, a scale and a gate per block, the gates
and the final layer zero-initialised, so the network starts as the zero
function); a final linear layer turns tokens back into patches.

Shapes: x [B, *spatial, C] (1 to 3 spatial axes, each divisible by
patch_size), t [B]; returns float32 [B, *spatial, C × (2 if learned_variance)].
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion.models.attention import flax_attention_fn
from diffusion.models.denoiser import Denoiser, linen
from diffusion.models.unet import timestep_embedding


def positions(grid: tuple[int, ...], dim: int) -> jax.Array:
  """Sine-cosine embeddings of every position of `grid`, per axis, concatenated and padded to
  `dim`: float32 [prod(grid), dim]."""
  per_axis = (dim // len(grid)) // 2 * 2
  coords = jnp.stack(jnp.meshgrid(*[jnp.arange(n) for n in grid], indexing="ij"), -1)
  coords = coords.reshape(-1, len(grid))
  parts = [timestep_embedding(coords[:, a], per_axis) if per_axis >= 4 else
           jnp.zeros((coords.shape[0], per_axis)) for a in range(len(grid))]
  emb = jnp.concatenate(parts, axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim - emb.shape[-1])))


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1 + scale[:, None]) + shift[:, None]


def patchify(x: jax.Array, p: int) -> tuple[jax.Array, tuple[int, ...]]:
  """[B, *spatial, C] -> (tokens [B, N, p^d C], grid): token n is the block of side p at grid
  position n (row-major), flattened in the block's own row-major order."""
  batch, spatial, channels = x.shape[0], x.shape[1:-1], x.shape[-1]
  nd, grid = len(spatial), tuple(n // p for n in spatial)
  split = x.reshape((batch,) + sum(((g, p) for g in grid), ()) + (channels,))
  order = (0,) + tuple(1 + 2 * a for a in range(nd)) + tuple(2 + 2 * a for a in range(nd))
  tokens = split.transpose(order + (2 * nd + 1,)).reshape(batch, math.prod(grid), -1)
  return tokens, grid


def unpatchify(tokens: jax.Array, grid: tuple[int, ...], p: int, channels: int) -> jax.Array:
  """The inverse of `patchify`: tokens [B, N, p^d C] -> [B, *spatial, C]."""
  batch, nd = tokens.shape[0], len(grid)
  h = tokens.reshape((batch,) + grid + (p,) * nd + (channels,))
  inverse = (0,) + sum(((1 + a, 1 + nd + a) for a in range(nd)), ()) + (2 * nd + 1,)
  return h.transpose(inverse).reshape((batch,) + tuple(g * p for g in grid) + (channels,))


class Block(nn.Module):
  """A pre-norm Transformer block with adaLN-Zero conditioning on c [B, D]."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    dim = x.shape[-1]
    mod = nn.Dense(6 * dim, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                   name="adaLN")(nn.silu(c))
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
    norm = lambda name: nn.LayerNorm(use_bias=False, use_scale=False, epsilon=1e-6,
                                     dtype=self.dtype, name=name)
    h = modulate(norm("norm1")(x), shift1, scale1)
    h = nn.MultiHeadDotProductAttention(self.num_heads, dtype=self.dtype,
                                        attention_fn=flax_attention_fn, name="attn")(h, h)
    x = x + gate1[:, None] * h
    h = modulate(norm("norm2")(x), shift2, scale2)
    h = nn.Dense(int(dim * self.mlp_ratio), dtype=self.dtype, name="mlp_in")(h)
    h = nn.Dense(dim, dtype=self.dtype, name="mlp_out")(nn.gelu(h, approximate=True))
    return x + gate2[:, None] * h


class DiT(nn.Module):
  """The Diffusion Transformer: `apply(variables, x_t, t[, y][, cond])`.

  Attributes:
    patch_size: patch side along every spatial axis.
    hidden_size, depth, num_heads, mlp_ratio: the Transformer's (DiT-S: 384, 12, 6, 4).
    num_classes: > 0 for class conditioning, with the null class num_classes.
    cond_channels: > 0 for a conditioning input concatenated to x_t.
    learned_variance: output 2C channels.
    dtype: computation dtype; parameters stay float32.
    remat: rematerialise each block in the backward pass (memory for compute).
  """
  patch_size: int = 2
  hidden_size: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  num_classes: int = 0
  cond_channels: int = 0
  learned_variance: bool = False
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None,
               cond: jax.Array | None = None) -> jax.Array:
    spatial, channels = x.shape[1:-1], x.shape[-1]
    p, nd = self.patch_size, len(spatial)
    out_channels = channels * (2 if self.learned_variance else 1)
    if cond is not None:
      x = jnp.concatenate([x, cond.astype(x.dtype)], axis=-1)
    tokens, grid = patchify(x, p)
    h = nn.Dense(self.hidden_size, dtype=self.dtype, name="patch_embed")(tokens)
    h = h + positions(grid, self.hidden_size).astype(h.dtype)[None]

    c = timestep_embedding(t, 256)
    c = nn.Dense(self.hidden_size, dtype=self.dtype, name="t_embed0")(c)
    c = nn.Dense(self.hidden_size, dtype=self.dtype, name="t_embed1")(nn.silu(c))
    if self.num_classes:
      c = c + nn.Embed(self.num_classes + 1, self.hidden_size, dtype=self.dtype,
                       name="class_embed")(y)
    block = nn.remat(Block) if self.remat else Block
    for i in range(self.depth):
      h = block(self.num_heads, self.mlp_ratio, self.dtype, name=f"block_{i}")(h, c)

    shift, scale = jnp.split(nn.Dense(2 * self.hidden_size, kernel_init=nn.initializers.zeros,
                                      dtype=self.dtype, name="final_adaLN")(nn.silu(c)), 2, -1)
    h = modulate(nn.LayerNorm(use_bias=False, use_scale=False, epsilon=1e-6, dtype=self.dtype,
                              name="final_norm")(h), shift, scale)
    h = nn.Dense(p ** nd * out_channels, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                 name="final")(h)
    return unpatchify(h, grid, p, out_channels).astype(jnp.float32)


_FIELDS = {"patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio", "num_classes",
           "cond_channels", "learned_variance", "dtype", "remat"}


def dit(settings: dict, shape: tuple[int, ...]) -> Denoiser:
  """A DiT from the `model` section (keys: the DiT's attributes; others are refused)."""
  settings = {k: v for k, v in settings.items() if v is not None}
  unknown = sorted(set(settings) - _FIELDS)
  if unknown:
    raise ValueError(f"config.model has keys {unknown} that the DiT does not take; it takes "
                     f"{sorted(_FIELDS)}")
  if isinstance(settings.get("dtype"), str):
    settings["dtype"] = jnp.dtype(settings["dtype"])
  model = DiT(**settings)
  if model.hidden_size % model.num_heads:
    raise ValueError(f"config.model.hidden_size {model.hidden_size} must be divisible by "
                     f"config.model.num_heads {model.num_heads}")

  def check(shape):
    if not 2 <= len(shape) <= 4:
      raise ValueError(f"config.data.shape {tuple(shape)}: the DiT takes [*spatial, channels] "
                       "with 1 to 3 spatial axes")
    if any(n % model.patch_size for n in shape[:-1]):
      raise ValueError(f"config.data.shape {tuple(shape)}: each spatial axis must be divisible "
                       f"by config.model.patch_size {model.patch_size}")
  return dataclasses.replace(linen(model, check=check, name="dit"), output_fits=True)
