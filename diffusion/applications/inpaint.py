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
from diffusion.forward import q_sample
from diffusion.reverse import p_sample
from diffusion.sampling import class_labels, in_batches, memoized, needs_ddpm, over_samples
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


class RePaint(samplers.Sampler):
  """RePaint's chain (Algorithm 1 with resampling) as a Sampler run by `samplers.run`: over
  the visited timesteps `kept` (decreasing, respaced as in improved DDPM), it goes down a step
  (p_sample, then the known positions replaced by x0 noised to the step below) or back up
  one (the forward process), as `repaint_schedule` says. Made inside the trace: it holds the
  data x0 [N, ...] (model units) and the mask `known` [N, ..., 1] of the examples."""
  name = "repaint"

  def __init__(self, x0: jax.Array, known: jax.Array, jump_length: int = 10,
               resamplings: int = 10):
    self.x0, self.known = x0, known
    self.jump_length, self.resamplings = jump_length, resamplings

  def options(self):
    return {"jump_length": self.jump_length, "resamplings": self.resamplings}

  def visits(self, diffusion, steps):
    path = repaint_schedule(len(steps), self.jump_length, self.resamplings)
    return np.arange(len(path) - 1), path[:-1], path[1:]

  def update(self, chain, x, visit):
    k, i, j = visit  # visit k, from the respaced chain's index i to j (j = -1: the data)
    kept = np.sort(chain.steps)
    schedule = Schedule.from_betas(respace_betas(chain.diffusion.betas, kept))
    d, keys, x0 = chain.diffusion, chain.keys, self.x0
    noise = lambda n: jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, n),
                                                             x.shape[1:]))(keys)

    def down(x, k, i, j):
      out = chain.network(x, jnp.full((x.shape[0],), jnp.asarray(kept)[i]))
      step = lambda o, xi, key: p_sample(schedule, o, xi, jnp.full((1,), i), key,
                                         prediction=d.prediction, variance=d.variance,
                                         clip_x0=d.clip_x0)[0]
      unknown = samplers.per_sample(step, out, x, keys, 2 * k)
      t = jnp.full((x.shape[0],), jnp.maximum(j, 0))
      noised = jnp.where(j >= 0, q_sample(schedule, x0, t, noise(2 * k + 1)), x0)
      return jnp.where(self.known, noised, unknown)

    def up(x, k, i, j):
      beta = schedule.betas[j]
      return jnp.sqrt(1 - beta) * x + jnp.sqrt(beta) * noise(2 * k)

    return jax.lax.cond(j < i, down, up, x, k, i, j)


def inpaint(run, variables, data: np.ndarray, mask: np.ndarray, mesh, key, *,
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
  needs_ddpm(run, "inpainting (RePaint)")
  spec, num_steps = run.diffusion.spec, run.diffusion.num_steps
  steps = min(250, num_steps) if steps is None else steps
  if not 1 <= steps <= num_steps:
    raise ValueError(f"`steps` must lie in [1, {num_steps}] (the model's T); got {steps}")
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
  labels = class_labels(run, len(data), class_label)
  program = _repaint_program(run, mesh, steps, jump_length, resamplings)
  x0 = spec.to_model(data).astype(np.float32)
  generated = spec.from_model(in_batches(
      lambda first, rows: program(variables, key, first, x0[rows], known[rows], labels[rows]),
      len(data), batch, mesh, desc="inpaint", progress=progress))
  return np.where(known, data, generated)


@memoized
def _repaint_program(run, mesh, steps: int, jump_length: int, resamplings: int):
  """program(variables, key, first_index, x0 [N, *shape] model units, known bool [N,
  *shape[:-1], 1], labels int [N]) -> the chains' ends [N, *shape]: RePaint over `steps`
  respaced timesteps, jitted and sharded over `mesh` (N divisible by its size)."""
  model, diffusion = run.model, run.diffusion
  spec = diffusion.spec
  kept = np.sort(samplers.spaced_steps(diffusion.schedule, steps))
  conditional = model.num_classes > 0

  def device_fn(variables, key, index, x0, known, y):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
    x = jax.vmap(lambda k: jax.random.normal(jax.random.split(k)[0], x0.shape[1:]))(keys)
    network = lambda x, t: spec.project_output(
        model(variables, x, t, y if conditional else None), x.shape[-1])
    return samplers.run(RePaint(x0, known, jump_length, resamplings), network, diffusion,
                        kept[::-1].copy(), x, keys)

  return over_samples(device_fn, mesh, 3)
