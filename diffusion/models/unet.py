"""ε_θ: the U-Net of DDPM (Ho et al. 2020, Appendix B), for 1-D, 2-D and 3-D data.

A PixelCNN++-style U-Net of wide ResNet blocks with GroupNorm and swish, a
sinusoidal timestep embedding, self-attention at chosen resolutions and
learned down- and upsampling, as in the authors' `diffusion_utils/nn.py` and
`models/unet.py`. Options for the later papers: 2C output channels for learned
variances, class conditioning with a null class for classifier-free guidance,
a conditioning image as extra input channels, several attention heads.

Shapes: x [B, *spatial, C] channels last (spatial of 1, 2 or 3 axes, each
divisible by 2^(len(ch_mult) - 1)); t [B] timesteps (0-based ints, or floats).
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion import platforms
from diffusion.models.attention import attention


class GroupNorm(nn.Module):
  """Group normalisation over [B, *spatial, C] (statistics per example and group), with the
  parameters ("scale", "bias") of `flax.linen.GroupNorm`, which it equals to rounding.

  The statistics are reduced in two levels, over the spatial axes per channel and then
  over each group's channels, in float32: XLA compiles this to far faster code than the
  one-level reduction over (spatial, channels-in-group), about 4-7× on CPUs (see
  `ddpm bench --layers`).
  """
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    if channels % self.num_groups:
      raise ValueError(f"GroupNorm: {channels} channels are not divisible into "
                       f"num_groups={self.num_groups} groups")
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    batch, per_group = x.shape[0], channels // self.num_groups
    flat = x.astype(jnp.float32).reshape(batch, -1, channels)
    group_mean = lambda a: jnp.mean(a, axis=1).reshape(batch, self.num_groups, per_group).mean(-1)
    mean, mean_sq = group_mean(flat), group_mean(jnp.square(flat))  # [B, G]
    inv = jax.lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + self.epsilon)
    a = jnp.repeat(inv, per_group, axis=1) * scale[None]  # y = x a + b, per example and channel
    b = bias[None] - jnp.repeat(mean, per_group, axis=1) * a
    return (flat * a[:, None, :] + b[:, None, :]).reshape(x.shape).astype(self.dtype)


class Conv(nn.Module):
  """`flax.linen.Conv` (the same parameters, initialisation and result) for the U-Net's
  convolutions. On the CPU a 3-D convolution runs as a sum over the kernel's depth taps of
  2-D convolutions of depth slices: XLA's CPU 3-D convolution is about 5× slower than that
  (docs/benchmarks.md); on accelerators it is the library's 3-D convolution. The platform is
  that of the program being built (`platforms.current()`), not the host's."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | None = None
  padding: Any = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    nd = x.ndim - 2
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    strides = tuple(self.strides or (1,) * nd)
    padding = ([(self.padding, self.padding)] * nd if isinstance(self.padding, int)
               else [tuple(p) for p in self.padding])
    spatial = "DHW"[3 - nd:]
    numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    if nd == 3 and platforms.current() == "cpu":
      (low, high), stride = padding[0], strides[0]
      padded = jnp.pad(x, ((0, 0), (low, high), (0, 0), (0, 0), (0, 0)))
      depth = (padded.shape[1] - kernel.shape[0]) // stride + 1
      y = 0
      for d in range(kernel.shape[0]):
        part = padded[:, d:d + stride * (depth - 1) + 1:stride]
        y = y + jax.lax.conv_general_dilated(
            part.reshape(-1, *part.shape[2:]), kernel[d], strides[1:], padding[1:],
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
      y = y.reshape(x.shape[0], depth, *y.shape[1:])
    else:
      y = jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=numbers)
    return y + bias.reshape((1,) * (nd + 1) + (-1,))


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0
                       ) -> jax.Array:
  """The sinusoidal embedding of the Transformer, as in DDPM: [B] -> float32 [B, dim].

  [sin(t ω_k), cos(t ω_k)] with ω_k = max_period^(-k / (dim/2 - 1)).
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
                  / (half - 1))
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class ResBlock(nn.Module):
  """GroupNorm, swish, conv, + time embedding, GroupNorm, swish, dropout, conv; skip."""
  features: int
  dropout: float
  deterministic: bool
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
    nd = x.ndim - 2
    norm = lambda name: GroupNorm(self.num_groups, dtype=self.dtype, name=name)
    conv = lambda name: Conv(self.features, (3,) * nd, padding=1, dtype=self.dtype, name=name)
    h = conv("conv1")(nn.swish(norm("norm1")(x)))
    temb = nn.Dense(self.features, dtype=self.dtype, name="temb_proj")(nn.swish(temb))
    h = h + temb.reshape(temb.shape[:1] + (1,) * nd + temb.shape[1:])
    h = nn.swish(norm("norm2")(h))
    h = nn.Dropout(self.dropout)(h, deterministic=self.deterministic)
    h = conv("conv2")(h)
    if x.shape[-1] != self.features:
      x = nn.Dense(self.features, dtype=self.dtype, name="shortcut")(x)  # 1×1 conv
    return x + h


class AttnBlock(nn.Module):
  """Self-attention over all positions, residual (the authors' `attn_block`)."""
  num_heads: int = 1
  head_dim: int | None = None  # if set, num_heads = channels // head_dim
  num_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, channels = x.shape[0], x.shape[-1]
    heads = channels // self.head_dim if self.head_dim else self.num_heads
    if channels % heads:
      raise ValueError(f"the attention at {x.shape[1:-1]} has {channels} channels, "
                       f"not divisible into num_heads={heads} heads")
    h = GroupNorm(self.num_groups, dtype=self.dtype, name="norm")(x)
    h = h.reshape(batch, -1, channels)
    q, k, v = (nn.Dense(channels, dtype=self.dtype, name=name)(h)
               .reshape(batch, -1, heads, channels // heads)
               for name in ("q", "k", "v"))
    h = attention(q, k, v).reshape(batch, -1, channels)
    h = nn.Dense(channels, dtype=self.dtype, name="proj_out")(h)
    return x + h.reshape(x.shape)


class Downsample(nn.Module):
  """Halves every spatial axis: a stride-2 3×3 conv (TF "SAME" padding) or average pooling."""
  with_conv: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    nd = x.ndim - 2
    if self.with_conv:
      return Conv(x.shape[-1], (3,) * nd, strides=(2,) * nd,
                  padding=((0, 1),) * nd, dtype=self.dtype, name="conv")(x)
    return nn.avg_pool(x, (2,) * nd, strides=(2,) * nd)


class Upsample(nn.Module):
  """Doubles every spatial axis: nearest neighbour, then a 3×3 conv."""
  with_conv: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for axis in range(1, x.ndim - 1):
      x = jnp.repeat(x, 2, axis=axis)
    if self.with_conv:
      x = Conv(x.shape[-1], (3,) * (x.ndim - 2), padding=1, dtype=self.dtype, name="conv")(x)
    return x


class UNet(nn.Module):
  """The DDPM U-Net: `model.apply(variables, x_t, t)` -> float32 [B, *spatial, C_out].

  Attributes:
    ch: channels at the first resolution (128 in the paper).
    ch_mult: channel multiplier per resolution; len(ch_mult) - 1 downsamplings.
    num_res_blocks: ResNet blocks per resolution on the way down.
    attn_resolutions: spatial sizes (of the first spatial axis) with attention.
    dropout: dropout rate in the ResNet blocks (active with train=True).
    num_heads, head_dim: attention heads (head_dim, if set, fixes their width).
    num_classes: if > 0, class-conditional: y in [0, num_classes] where
      y = num_classes is the null class of classifier-free guidance.
    cond_channels: if > 0, a conditioning image of that many channels is
      concatenated to x_t (image-to-image, enhancement, super-resolution).
    learned_variance: output 2C channels (mean and variance parts).
    out_channels: output channels of the mean part; default the channels of x_t.
    num_groups: GroupNorm groups (32).
    resample_with_conv: learned (conv) down- and upsampling.
    dtype: computation dtype (bfloat16 on TPU/GPU); parameters stay float32.
    remat: rematerialise the ResNet and attention blocks in the backward pass.
  """
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  num_heads: int = 1
  head_dim: int | None = None
  num_classes: int = 0
  cond_channels: int = 0
  learned_variance: bool = False
  out_channels: int | None = None
  num_groups: int = 32
  resample_with_conv: bool = True
  dtype: Any = jnp.float32
  remat: bool = False

  def _check(self, x, t, y, cond):
    for name in ("ch_mult", "attn_resolutions"):
      if not isinstance(getattr(self, name), (tuple, list)):
        raise ValueError(f"UNet {name} must be a tuple of ints, e.g. (1, 2, 2); got "
                         f"{getattr(self, name)!r}")
    if x.ndim < 3:
      raise ValueError(f"x must be [B, *spatial, C] with 1 to 3 spatial axes; got shape {x.shape}")
    factor = 2 ** (len(self.ch_mult) - 1)
    if any(size % factor for size in x.shape[1:-1]):
      raise ValueError(
          f"x has spatial shape {x.shape[1:-1]}; each axis must be divisible by "
          f"{factor} for the {len(self.ch_mult) - 1} downsamplings of ch_mult={tuple(self.ch_mult)}")
    sizes = [x.shape[1] // 2 ** level for level in range(len(self.ch_mult))]
    unused = sorted(set(self.attn_resolutions) - set(sizes))
    if unused:
      raise ValueError(f"UNet attn_resolutions {tuple(self.attn_resolutions)}: no level has size "
                       f"{unused[0]} for x of spatial shape {x.shape[1:-1]} (the levels' sizes "
                       f"along the first spatial axis: {sizes}), so it would add no attention")
    if t.shape != x.shape[:1]:
      raise ValueError(f"t must have shape [B] = ({x.shape[0]},); got {t.shape}")
    if self.num_classes:
      if y is None:
        raise ValueError(f"y (int [B] class labels in [0, {self.num_classes}], "
                         f"{self.num_classes} being the null class) is required: "
                         f"the model has num_classes={self.num_classes}")
      if y.shape != x.shape[:1] or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must be int [B] = ({x.shape[0]},); got {y.dtype}{list(y.shape)}")
    elif y is not None:
      raise ValueError("y was given, but the model is unconditional (num_classes=0)")
    if self.cond_channels:
      want = x.shape[:-1] + (self.cond_channels,)
      if cond is None or cond.shape != want:
        raise ValueError(f"cond must be the conditioning image of shape {want}; got "
                         f"{None if cond is None else cond.shape}")
    elif cond is not None:
      raise ValueError("cond was given, but the model has cond_channels=0")

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None,
               cond: jax.Array | None = None, *, train: bool = False) -> jax.Array:
    """ε_θ(x_t, t[, y][, cond]).

    Args:
      x: x_t [B, *spatial, C].
      t: [B] timesteps.
      y: int [B] class labels, for num_classes > 0.
      cond: [B, *spatial, cond_channels], for cond_channels > 0.
      train: enables dropout (needs a "dropout" rng).
    Returns:
      float32 [B, *spatial, C_out], C_out = (out_channels or C) × (2 if
      learned_variance).
    """
    self._check(x, t, y, cond)
    out_channels = (self.out_channels or x.shape[-1]) * (2 if self.learned_variance else 1)
    res_block = nn.remat(ResBlock) if self.remat else ResBlock
    attn_block = nn.remat(AttnBlock) if self.remat else AttnBlock
    res = lambda features, name: res_block(
        features, self.dropout, not train, self.num_groups, self.dtype, name=name)
    attn = lambda name: attn_block(self.num_heads, self.head_dim, self.num_groups,
                                   self.dtype, name=name)

    temb = timestep_embedding(t, self.ch)
    temb = nn.Dense(4 * self.ch, dtype=self.dtype, name="temb_dense0")(temb)
    temb = nn.Dense(4 * self.ch, dtype=self.dtype, name="temb_dense1")(nn.swish(temb))
    if self.num_classes:
      temb = temb + nn.Embed(self.num_classes + 1, 4 * self.ch, dtype=self.dtype,
                             name="class_embed")(y)

    if cond is not None:
      x = jnp.concatenate([x, cond.astype(x.dtype)], axis=-1)
    nd = x.ndim - 2
    hs = [Conv(self.ch, (3,) * nd, padding=1, dtype=self.dtype, name="conv_in")(x)]
    for level, mult in enumerate(self.ch_mult):
      for block in range(self.num_res_blocks):
        h = res(self.ch * mult, f"down_{level}_res_{block}")(hs[-1], temb)
        if h.shape[1] in self.attn_resolutions:
          h = attn(f"down_{level}_attn_{block}")(h)
        hs.append(h)
      if level != len(self.ch_mult) - 1:
        hs.append(Downsample(self.resample_with_conv, self.dtype,
                             name=f"down_{level}_downsample")(hs[-1]))

    h = res(hs[-1].shape[-1], "mid_res_0")(hs[-1], temb)
    h = attn("mid_attn")(h)
    h = res(h.shape[-1], "mid_res_1")(h, temb)

    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for block in range(self.num_res_blocks + 1):
        h = res(self.ch * mult, f"up_{level}_res_{block}")(
            jnp.concatenate([h, hs.pop()], axis=-1), temb)
        if h.shape[1] in self.attn_resolutions:
          h = attn(f"up_{level}_attn_{block}")(h)
      if level != 0:
        h = Upsample(self.resample_with_conv, self.dtype, name=f"up_{level}_upsample")(h)
    assert not hs

    h = nn.swish(GroupNorm(self.num_groups, dtype=self.dtype, name="norm_out")(h))
    h = Conv(out_channels, (3,) * nd, padding=1, dtype=self.dtype, name="conv_out")(h)
    return h.astype(jnp.float32)
