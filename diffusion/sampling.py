"""Ancestral sampling (Algorithm 2) of a whole batch as one compiled `lax.scan`.

Sample i of a request draws all of its noise from fold_in(key, i), so the
samples do not depend on how they are split into batches or devices: the same
seed gives the same samples.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffusion.reverse import p_sample
from diffusion.schedules import Schedule


def ancestral_chain(denoise_fn: Callable[[jax.Array, jax.Array], jax.Array], schedule: Schedule,
                    keys: jax.Array, shape: tuple[int, ...], *, prediction: str = "eps",
                    variance: str = "fixed_small", clip_x0: bool = True) -> jax.Array:
  """x_T ~ N(0, I), then T steps of `p_sample`: returns float32 x_0 [N, *shape].

  keys: [N] one key per sample; x_T of sample i uses fold_in(keys[i], T) and
  the noise of step t uses fold_in(keys[i], t).
  """
  num_steps = schedule.num_steps
  draw = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, num_steps), shape))
  x = draw(keys)

  def step(x, t):
    ts = jnp.full((x.shape[0],), t)
    out = denoise_fn(x, ts)
    one = lambda o, xi, k: p_sample(schedule, o[None], xi[None], ts[:1], jax.random.fold_in(k, t),
                                    prediction=prediction, variance=variance, clip_x0=clip_x0)[0][0]
    return jax.vmap(one)(out, x, keys), None

  x, _ = jax.lax.scan(step, x, jnp.arange(num_steps - 1, -1, -1))
  return x


def make_sampler(model, schedule: Schedule, diffusion_config, shape: tuple[int, ...], mesh: Mesh):
  """A jitted `(params, key, first_index, labels) -> uint8 [N, *shape]`, sharded over the mesh.

  `first_index` numbers the first sample of the batch within the request, and
  `labels` (int [N], or None for unconditional models) are the classes.
  N must be divisible by the number of devices in the mesh.
  """
  options = dict(prediction=diffusion_config.prediction, variance=diffusion_config.variance,
                 clip_x0=diffusion_config.get("clip_x0", True))

  def device_sample(params, key, index, labels):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
    kwargs = {"y": labels} if model.num_classes else {}
    denoise = lambda x, t: model.apply({"params": params}, x, t, **kwargs)
    x0 = ancestral_chain(denoise, schedule, keys, shape, **options)
    return to_uint8(x0)

  sharded = jax.shard_map(device_sample, mesh=mesh, in_specs=(P(), P(), P("data"), P("data")),
                          out_specs=P("data"), check_vma=False)
  jitted = jax.jit(sharded)
  data = NamedSharding(mesh, P("data"))

  def sample(params, key, first_index: int, labels: np.ndarray) -> jax.Array:
    n = labels.shape[0]
    index = jax.device_put(np.arange(first_index, first_index + n, dtype=np.int32), data)
    return jitted(params, key, index, jax.device_put(labels.astype(np.int32), data))
  return sample


def to_uint8(x: jax.Array) -> jax.Array:
  """[-1, 1] floats -> uint8 pixels, rounding to the nearest of the 256 levels."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def gather(x: jax.Array) -> np.ndarray:
  """A sharded global array as one NumPy array on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))
