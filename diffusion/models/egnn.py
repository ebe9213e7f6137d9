"""An E(n)-equivariant graph network (Satorras et al. 2021) for point sets: registered as "egnn".

For chains such as protein backbones (Cα traces): every point is a node of a
fully connected graph; a node's features start from the timestep, its
position along the chain and its class; an edge carries the squared distance
and the chain separation |i - j| (so the network can learn that consecutive
residues sit 3.8 Å apart). Each layer (Satorras et al., Eq. 3-6):

  m_ij = φ_e(h_i, h_j, ||x_i - x_j||², a_ij)
  x_i ← x_i + Σ_{j≠i} (x_i - x_j) / (||x_i - x_j|| + 1) · φ_x(m_ij) / (N - 1)
  h_i ← h_i + φ_h(h_i, Σ_j m_ij)

The output is x_L - x_0 with its mean over points removed: it rotates with
the input, does not change when the input is translated, and lies in the
subspace of zero centre of mass, where the point-set data kind diffuses.

Shapes: x [B, N, 3], t [B]; returns float32 [B, N, 3].
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion.models.denoiser import Denoiser, linen
from diffusion.models.unet import timestep_embedding


def _mlp(features: int, name: str, dtype, out: int | None = None, zero: bool = False):
  last = nn.Dense(out or features, dtype=dtype, name=f"{name}_out",
                  kernel_init=nn.initializers.zeros if zero else nn.initializers.lecun_normal())
  first = nn.Dense(features, dtype=dtype, name=f"{name}_in")
  return lambda h: last(nn.silu(first(h)))


class EGNN(nn.Module):
  """The equivariant denoiser: `apply(variables, x_t, t[, y])`.

  Attributes:
    hidden: node and message features.
    depth: message-passing layers.
    chain: add sequence-position features (for ordered chains; False for sets).
    max_separation: chain separations |i - j| beyond this share one feature.
    num_classes: > 0 for class conditioning, with the null class num_classes.
    dtype: computation dtype.
    remat: rematerialise each layer in the backward pass (memory for compute).
  """
  hidden: int = 64
  depth: int = 4
  chain: bool = True
  max_separation: int = 8
  num_classes: int = 0
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None) -> jax.Array:
    batch, n, _ = x.shape
    x = x.astype(jnp.float32)
    h = timestep_embedding(t, self.hidden)[:, None, :].repeat(n, axis=1)
    if self.chain:
      h = h + timestep_embedding(jnp.arange(n), self.hidden)[None]
    if self.num_classes:
      h = h + nn.Embed(self.num_classes + 1, self.hidden, name="class_embed")(y)[:, None]
    h = nn.Dense(self.hidden, dtype=self.dtype, name="embed")(h)
    index = jnp.arange(n)
    separation = jnp.minimum(jnp.abs(index[:, None] - index[None, :]), self.max_separation)
    edge = (jax.nn.one_hot(separation, self.max_separation + 1) if self.chain
            else jnp.zeros((n, n, 0)))
    start = x
    step = nn.remat(EGNN._layer, static_argnums=(1,)) if self.remat else EGNN._layer
    for layer in range(self.depth):
      x, h = step(self, layer, x, h, edge)
    out = x - start
    return (out - jnp.mean(out, axis=1, keepdims=True)).astype(jnp.float32)

  def _layer(self, layer: int, x: jax.Array, h: jax.Array, edge: jax.Array):
    """Message-passing layer `layer`: (x [B, N, 3], h [B, N, hidden]) -> both updated."""
    n = x.shape[1]
    not_self = 1.0 - jnp.eye(n)
    diff = x[:, :, None] - x[:, None, :]  # [B, N, N, 3]: x_i - x_j
    dist2 = jnp.sum(diff ** 2, axis=-1, keepdims=True)
    # φ_e's first layer on [h_i, h_j, d², a_ij] as a sum of per-node, per-edge and distance
    # terms: the same function, with the matrix products done per node, not per pair.
    dense = lambda name, bias=False: nn.Dense(self.hidden, use_bias=bias, dtype=self.dtype,
                                              name=f"edge_{layer}_{name}")
    pre = (dense("i", bias=True)(h)[:, :, None] + dense("j")(h)[:, None, :]
           + dense("d")(dist2) + (dense("a")(edge)[None] if self.chain else 0.0))
    out = nn.Dense(self.hidden, dtype=self.dtype, name=f"edge_{layer}_out")
    m = nn.silu(out(nn.silu(pre)))
    m = m * not_self[None, :, :, None]
    weight = _mlp(self.hidden, f"coord_{layer}", self.dtype, out=1, zero=True)(m)
    # sqrt(d² + 1e-8): the gradient of sqrt at a point's zero distance to itself is finite.
    direction = diff / (jnp.sqrt(dist2 + 1e-8) + 1.0)
    x = x + jnp.sum(direction * weight.astype(jnp.float32), axis=2) / max(n - 1, 1)
    h = h + _mlp(self.hidden, f"node_{layer}", self.dtype)(
        jnp.concatenate([h, jnp.sum(m, axis=2)], axis=-1))
    return x, h


_FIELDS = {"hidden", "depth", "chain", "max_separation", "num_classes", "dtype", "remat"}


def egnn(settings: dict, shape: tuple[int, ...]) -> Denoiser:
  """An EGNN from the `model` section, for point sets of shape (N, 3)."""
  unknown = sorted(set(settings) - _FIELDS - {"learned_variance", "cond_channels"})
  if unknown:
    raise ValueError(f"config.model has keys {unknown} that the EGNN does not take; it takes "
                     f"{sorted(_FIELDS)}")
  if settings.get("learned_variance") or settings.get("cond_channels"):
    raise ValueError("config.model: the EGNN predicts ε of the coordinates only: "
                     "learned_variance and cond_channels must be off")
  settings = {k: v for k, v in settings.items() if k in _FIELDS}
  if isinstance(settings.get("dtype"), str):
    settings["dtype"] = jnp.dtype(settings["dtype"])
  model = EGNN(**settings)

  def check(shape):
    if len(shape) != 2 or shape[-1] != 3:
      raise ValueError(f"config.data.shape {tuple(shape)}: the EGNN (config.model.name 'egnn') "
                       "takes point sets of shape (num_points, 3)")
  return dataclasses.replace(linen(model, check=check, name="egnn", kinds=("points",)),
                             output_fits=True)
