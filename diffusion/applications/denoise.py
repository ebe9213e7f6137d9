"""Denoising a given noisy image with a DDPM prior.

An image y = x + n, n ~ N(0, s² I) in units of the [0, 1] pixel range, is
s' = 2s in the model's [-1, 1] range. Scaled by sqrt(ᾱ_k) it is a draw of
the forward process at step k, x_k = sqrt(ᾱ_k) x_0 + sqrt(1 - ᾱ_k) ε, when
(1 - ᾱ_k) / ᾱ_k = s'². The step chosen is the first whose noise-to-signal
ratio reaches s'; the small remainder of noise is added, so that x_k follows
q(x_k | x_0) exactly. The reverse chain then runs from step k. Several
chains give the posterior mean and a per-pixel standard deviation.
"""

import numpy as np

from diffusion.config import schedule_from_config
from diffusion.distributed import gather, pad_to_devices
from diffusion.images import to_float
from diffusion.sampling import class_labels, make_sampler


def noise_step(alphas_cumprod: np.ndarray, sigma: float) -> tuple[int, float]:
  """(k, extra std): the first step whose noise-to-signal ratio reaches 2·sigma, and the
  standard deviation of the noise to add to the image (in [-1, 1] units, before scaling)."""
  if not 0 < sigma <= 1:
    raise ValueError(f"--sigma must lie in (0, 1] (a standard deviation in units of the [0, 1] "
                     f"pixel range); got {sigma!r}")
  ac = np.asarray(alphas_cumprod, np.float64)
  ratio = (1 - ac) / ac  # the variance of noise relative to the signal at each step
  target = (2 * sigma) ** 2
  if ratio[-1] < target:
    raise ValueError(f"--sigma {sigma} is more noise than the model's last step holds "
                     f"(at most {np.sqrt(ratio[-1]) / 2:.3g})")
  k = int(np.argmax(ratio >= target))
  return k, float(np.sqrt(ratio[k] - target))


def denoise(model, variables, config, noisy: np.ndarray, sigma: float, mesh, key, *,
            sampler: str = "ddpm", steps: int | None = None, seed: int = 0,
            class_label: int | None = None) -> np.ndarray:
  """One posterior sample of the clean image for each noisy one.

  noisy: uint8 [N, H, W, C] (or one image [H, W, C]); returns float32 of the
  same shape in [-1, 1]. Pass an image several times for several samples
  (their mean and standard deviation: an uncertainty map). A class-conditional
  model is conditioned on `class_label`, else on its null class
  (`sampling.class_labels`).
  """
  single = noisy.ndim == 3
  noisy = noisy[None] if single else noisy
  schedule = schedule_from_config(config)
  ac = np.asarray(schedule.alphas_cumprod, np.float64)
  k, extra = noise_step(ac, sigma)
  labels = pad_to_devices(class_labels(model, config, len(noisy), class_label), mesh)
  n = len(noisy)
  rng = np.random.default_rng(seed)
  y = pad_to_devices(to_float(noisy), mesh)
  x_k = np.sqrt(ac[k]) * (y + extra * rng.standard_normal(y.shape))
  sample = make_sampler(model, config, noisy.shape[1:], mesh, sampler=sampler,
                        steps=None if steps is None else min(steps, k + 1), start=k)
  out = gather(sample(variables, key, 0, labels, x_start=x_k.astype(np.float32)))[:n]
  return out[0] if single else out
