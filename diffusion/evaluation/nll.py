"""Negative log-likelihood of a dataset in bits/dim: the full variational bound of a trained run
(all T terms and the prior, the core's `bits_per_dim`), sharded over devices, as DDPM's Table 1.

Example i draws its noise from fold_in(key, i), so a result does not depend
on the batch size or the number of devices.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffusion.likelihood import bits_per_dim
from diffusion.images import to_float
from diffusion.sampling import in_batches, memoized, needs_ddpm, over_samples


@memoized
def make_bpd_fn(run, mesh: Mesh, *, chunk_size: int = 10):
  """bpd(variables, key, first_index, images float [N, ...], labels int [N] or None) ->
  (total [N], terms [N, T], prior [N]) of a `runs.Run`'s network, jitted and sharded over
  `mesh` (N divisible by its size); the same for the same arguments (`sampling.memoized`)."""
  needs_ddpm(run, "the variational bound (bits/dim)")
  model, d = run.model, run.diffusion
  schedule, clip = d.schedule, d.clip_x0

  def device_bpd(variables, key, index, x0, labels):
    def one(x, i, y):
      def denoise(x_t, t):
        return model(variables, x_t, t, jnp.broadcast_to(y, t.shape) if model.num_classes
                     else None)
      result = bits_per_dim(denoise, schedule, x[None], jax.random.fold_in(key, i),
                            prediction=d.prediction, variance=d.variance,
                            clip_x0=clip, chunk_size=chunk_size)
      return result.total[0], result.terms[0], result.prior[0]
    return jax.vmap(one)(x0, index, labels)

  program = over_samples(device_bpd, mesh, 2)

  def bpd(variables, key, first_index, images, labels=None):
    labels = np.zeros(len(images), np.int32) if labels is None else np.asarray(labels, np.int32)
    return program(variables, key, first_index, np.asarray(images, np.float32), labels)

  def lower(variables, n: int):
    """The program `bpd` runs on n images, lowered from the shapes of `variables` alone."""
    images = jax.ShapeDtypeStruct((n, *d.spec.shape), jnp.float32)
    return program.lower(variables, jax.eval_shape(jax.random.key, 0), n, images,
                     jax.ShapeDtypeStruct((n,), jnp.int32))

  bpd.lower = lower
  bpd.loop_trips = -(-d.num_steps // min(chunk_size, d.num_steps))  # the terms' lax.map
  return bpd


def checked_images(run, images) -> np.ndarray:
  """`images` as uint8 [N >= 1, *the run's data shape], or a ValueError naming them."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 (bits/dim is defined on the 8-bit grid); got "
                     f"{images.dtype}")
  shape = run.diffusion.spec.shape
  if images.ndim != len(shape) + 1 or images.shape[1:] != shape or not len(images):
    raise ValueError(f"images must be [N >= 1, {', '.join(map(str, shape))}] (the run's "
                     f"config.data.shape); got {images.shape}")
  return images


def dataset_bits_per_dim(run, variables, images: np.ndarray, mesh: Mesh, key: jax.Array,
                         *, labels: np.ndarray | None = None, batch: int = 64,
                         chunk_size: int = 10, progress: bool = True) -> dict:
  """The variational bound of uint8 images [N, H, W, C] under a run's network, in bits/dim.

  Returns {"bpd": mean total, "bpd_stderr": its standard error, "per_image":
  [N], "terms": mean L_t [T] (t = 0..T-1; L_0 the decoder), "prior": mean L_T,
  "num_images": N}.
  """
  needs_ddpm(run, "the variational bound (bits/dim)")
  images = checked_images(run, images)
  if batch < 1:
    raise ValueError(f"`batch` must be positive; got {batch}")
  batch += (-batch) % mesh.size
  fn = make_bpd_fn(run, mesh, chunk_size=chunk_size)
  totals, terms, priors = in_batches(
      lambda first, rows: fn(variables, key, first, to_float(images[rows]),
                             None if labels is None else labels[rows]),
      len(images), batch, mesh, desc="bits/dim", unit="image", progress=progress)
  return {"bpd": float(totals.mean()), "bpd_stderr": float(totals.std(ddof=1) / np.sqrt(len(totals)))
          if len(totals) > 1 else float("nan"), "per_image": totals, "terms": terms.mean(axis=0),
          "prior": float(priors.mean()), "num_images": len(totals)}
