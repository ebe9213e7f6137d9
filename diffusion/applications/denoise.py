"""Denoising given data with a DDPM prior.

Data y = x + n, n ~ N(0, s² I), is y' = x' + n' in the model's units with
std s' (`DataSpec.noise_std`: s' = 2s for uint8 data with s in units of the
[0, 1] range, s / scale for float data). Scaled by sqrt(ᾱ_k) it is a draw
of the forward process at step k, x_k = sqrt(ᾱ_k) x_0 + sqrt(1 - ᾱ_k) ε,
when (1 - ᾱ_k) / ᾱ_k = s'². The step chosen is the first whose
noise-to-signal ratio reaches s'; the small remainder of noise is added, so
that x_k follows q(x_k | x_0) exactly. The reverse chain then runs from step
k. Several chains give the posterior mean and a per-element standard deviation.
"""

import numpy as np

from diffusion.sampling import class_labels, in_batches, make_sampler, needs_ddpm


def noise_step(alphas_cumprod: np.ndarray, std: float) -> tuple[int, float]:
  """(k, extra std): the first step whose noise-to-signal ratio reaches `std` (the noise's
  standard deviation in the model's units), and the standard deviation of the noise to add
  to the data (model units, before scaling) so that it is a draw of q(x_k | x_0)."""
  ac = np.asarray(alphas_cumprod, np.float64)
  ratio = (1 - ac) / ac  # the variance of noise relative to the signal at each step
  target = float(std) ** 2
  if ratio[-1] < target:
    raise ValueError(f"`sigma` is more noise than the model's last step holds (in the "
                     f"model's units at most {np.sqrt(ratio[-1]):.3g}; asked for {std:.3g})")
  k = int(np.argmax(ratio >= target))
  return k, float(np.sqrt(ratio[k] - target))


def denoise(run, variables, noisy: np.ndarray, sigma: float, mesh, key, *,
            sampler: str = "ddpm", steps: int | None = None, seed: int = 0,
            class_label: int | None = None, batch: int = 256,
            progress: bool = True) -> np.ndarray:
  """One posterior sample of the clean data for each noisy example.

  noisy: [N, *shape] in the data's units and dtype (`config.data`: uint8
  images or volumes, float sequences or point sets), or one example
  [*shape]; sigma: the noise's standard deviation (`DataSpec.noise_std`:
  in units of the [0, 1] range for uint8 data, else the data's units).
  Returns float32 of the same shape in the model's units
  (`DataSpec.from_model` gives the data's). Pass an example several times
  for several samples (their mean and standard deviation: an uncertainty
  map). A class-conditional model is conditioned on `class_label`, else on
  its null class (`sampling.class_labels`). Point sets are centred. Drawn `batch` at a
  time with a progress bar (`progress`); the result does not depend on `batch`.
  """
  needs_ddpm(run, "denoising")
  spec = run.diffusion.spec
  noisy, single = spec.batch(noisy, "noisy data")
  std = spec.noise_std(sigma, "`sigma`")
  schedule = run.diffusion.schedule
  ac = np.asarray(schedule.alphas_cumprod, np.float64)
  try:
    k, extra = noise_step(ac, std)
  except ValueError:  # say it in the units --sigma was given in
    most = np.sqrt((1 - ac[-1]) / ac[-1]) * float(sigma) / std
    raise ValueError(f"`sigma` {sigma} is more noise than the model's last step holds (at most "
                     f"{most:.3g} in the units of `sigma`)") from None
  labels = class_labels(run, len(noisy), class_label)
  rng = np.random.default_rng(seed)
  y = spec.project(spec.to_model(noisy))
  x_k = (np.sqrt(ac[k]) * (y + extra * spec.project(rng.standard_normal(y.shape)))
         ).astype(np.float32)
  if isinstance(steps, int) and steps > k + 1:
    raise ValueError(f"`steps` {steps}: the noise of `sigma` {sigma} is the model's step {k}, "
                     f"so the chain from it has at most {k + 1} steps")
  sample = make_sampler(run, mesh, sampler=sampler, steps=steps, start=k)
  out = in_batches(lambda first, rows: sample(variables, key, first, labels[rows],
                                              x_start=x_k[rows]),
                   len(noisy), batch, mesh, desc="denoise", progress=progress)
  return out[0] if single else out
