"""Inpainting with RePaint (Lugmayr et al. 2022): an unconditional DDPM fills a masked region.

At every reverse step the known region is replaced by the data noised to
the same step, x_{t-1} = m ⊙ q_sample(x_0, t-1) + (1 - m) ⊙ p_sample(x_t)
(Algorithm 1), and the chain is resampled: after every `jump_length` steps
down it goes back up `jump_length` steps through the forward process and
descends again, `resamplings` times in all (Sec. 4.2), so the generated
region harmonises with the known one. The mask covers the data's positions
(pixels, voxels, sequence elements, points) and all their channels.

Point sets (motif scaffolding by replacement): a network for point sets is
translation-invariant (as the samplers assume) and its predictions are
centred, so the chain runs in the frame of the given points: the known
points keep their coordinates and the generated ones are placed around them.
"""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import samplers
from diffusion.config import betas_from_config, clip_x0, data_spec
from diffusion.forward import q_sample
from diffusion.models import as_denoiser
from diffusion.reverse import p_sample
from diffusion.sampling import class_labels, in_batches, memoized, over_samples
from diffusion.schedules import Schedule, respace_betas


def repaint_schedule(num_steps: int, jump_length: int = 10, resamplings: int = 10) -> np.ndarray:
  """The chain indices RePaint visits, from num_steps - 1 down to -1 (clean data).

  Descending, the chain jumps back up `jump_length` steps at every multiple of
  `jump_length` below num_steps - jump_length, `resamplings - 1` times each.
  """
  if jump_length < 1 or resamplings < 1:
    raise ValueError(f"`jump_length` and `resamplings` must be positive; got {jump_length} "
                     f"and {resamplings}")
  jumps = {i: resamplings - 1 for i in range(0, num_steps - jump_length, jump_length)}
  i = num_steps - 1
  visits = [i]
  while i >= 0:
    i -= 1
    visits.append(i)
    if jumps.get(i, 0) > 0:
      jumps[i] -= 1
      for _ in range(jump_length):
        i += 1
        visits.append(i)
  return np.array(visits)


def repaint_chain(denoise_fn, schedule: Schedule, kept: np.ndarray, visits: np.ndarray,
                  x0: jax.Array, known: jax.Array, x: jax.Array, keys: jax.Array, *,
                  prediction: str, variance: str, clip_x0: bool = True) -> jax.Array:
  """Runs RePaint over `visits` (indices into the chain `schedule` of kept timesteps `kept`).

  x0: [N, ...] the data, known: [N, ..., 1] bool mask, x: [N, ...] at visits[0].
  """
  kept = jnp.asarray(kept)
  shape = x.shape[1:]
  noise = lambda k: jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, k), shape))(keys)

  def down(x, k, i, j):
    out = denoise_fn(x, jnp.full((x.shape[0],), kept[i]))
    step = lambda o, xi, key: p_sample(schedule, o, xi, jnp.full((1,), i), key,
                                       prediction=prediction, variance=variance,
                                       clip_x0=clip_x0)[0]
    unknown = samplers.per_sample(step, out, x, keys, 2 * k)
    t = jnp.full((x.shape[0],), jnp.maximum(j, 0))
    noised = jnp.where(j >= 0, q_sample(schedule, x0, t, noise(2 * k + 1)), x0)
    return jnp.where(known, noised, unknown)

  def up(x, k, i, j):
    beta = schedule.betas[j]
    return jnp.sqrt(1 - beta) * x + jnp.sqrt(beta) * noise(2 * k)

  def body(x, visit):
    k, i, j = visit
    return jax.lax.cond(j < i, down, up, x, k, i, j), None

  pairs = (jnp.arange(len(visits) - 1), jnp.asarray(visits[:-1]), jnp.asarray(visits[1:]))
  x, _ = jax.lax.scan(body, x, pairs)
  return x


def inpaint(model, variables, config, data: np.ndarray, mask: np.ndarray, mesh, key, *,
            num_samples: int = 1, steps: int | None = None, jump_length: int = 10,
            resamplings: int = 10, class_label: int | None = None, batch: int = 256,
            progress: bool = True) -> np.ndarray:
  """Fills the positions where `mask` is False.

  data: one example [*shape] in the data's units and dtype (`config.data`:
  uint8 images or volumes, float sequences or point sets), completed
  `num_samples` times, or a batch [N, *shape], each completed once; mask:
  bool [*shape[:-1]] (pixels, voxels, elements or points; for every example)
  or [N, *shape[:-1]], True = known (kept, all channels). Returns [num_samples
  or N, *shape] in the data's units and dtype. The chain runs on `steps`
  timesteps respaced from the model's T (default: 250, as RePaint, or T if fewer). A
  class-conditional model is conditioned on `class_label`, else on its null
  class. Point sets (motif scaffolding): the known points keep their
  coordinates, and the generated ones are placed around them. Drawn `batch` at a time with
  a progress bar (`progress`); the result does not depend on `batch`.
  """
  spec = data_spec(config)
  betas = betas_from_config(config)
  steps = min(250, len(betas)) if steps is None else steps
  if not 1 <= steps <= len(betas):
    raise ValueError(f"`steps` must lie in [1, {len(betas)}] (the model's T); got {steps}")
  if resamplings > 1 and not 1 <= jump_length < steps:
    raise ValueError(f"`jump_length` {jump_length} must lie in [1, {steps}) (`steps`) for the "
                     f"chain to jump back at all (`resamplings` {resamplings})")
  if not (isinstance(num_samples, int) and num_samples >= 1):
    raise ValueError(f"`num_samples` must be an int >= 1; got {num_samples!r}")
  data, single = spec.batch(data, "the data to inpaint")
  data = data if spec.dtype == "uint8" else data.astype(np.float32)
  if single:
    data = np.repeat(data, num_samples, 0)
  positions = spec.shape[:-1]
  mask = np.asarray(mask)
  if mask.dtype != bool or mask.shape not in (positions, (len(data),) + positions):
    raise ValueError(f"the mask must be bool of shape {positions} or {(len(data),) + positions} "
                     f"(True = known); got {mask.dtype} {mask.shape}")
  known = np.broadcast_to(mask, data.shape[:-1])[..., None]
  labels = class_labels(model, config, len(data), class_label)
  run = _repaint_program(model, config, mesh, steps, jump_length, resamplings)
  x0 = spec.to_model(data).astype(np.float32)
  generated = spec.from_model(in_batches(
      lambda first, rows: run(variables, key, first, x0[rows], known[rows], labels[rows]),
      len(data), batch, mesh, desc="inpaint", progress=progress))
  return np.where(known, data, generated)


@memoized
def _repaint_program(model, config, mesh, steps: int, jump_length: int, resamplings: int):
  """run(variables, key, first_index, x0 [N, *shape] model units, known bool [N, *shape[:-1],
  1], labels int [N]) -> the chains' ends [N, *shape]: RePaint over `steps` respaced
  timesteps, jitted and sharded over `mesh` (N divisible by its size)."""
  d = config.diffusion
  model = as_denoiser(model, config.model)
  spec = data_spec(config)
  betas = betas_from_config(config)
  kept = np.sort(samplers.spaced_steps(Schedule.from_betas(betas), steps))
  chain = Schedule.from_betas(respace_betas(betas, kept))
  visits = repaint_schedule(len(kept), jump_length, resamplings)
  conditional = model.num_classes > 0
  clip = clip_x0(config)

  def device_fn(variables, key, index, x0, known, y):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
    x = jax.vmap(lambda k: jax.random.normal(jax.random.split(k)[0], x0.shape[1:]))(keys)
    denoise = lambda x, t: spec.project_output(
        model(variables, x, t, y if conditional else None), x.shape[-1])
    return repaint_chain(denoise, chain, kept, visits, x0, known, x, keys,
                         prediction=d.prediction, variance=d.variance,
                         clip_x0=clip)

  return over_samples(device_fn, mesh, 3)
