"""The timesteps a reverse chain visits: spacing them (uniform, quadratic, log-SNR, EDM's σ) and
checking a given list (decreasing, in [0, T), one key per sample)."""

import jax
import numpy as np

from diffusion import edm
from diffusion.schedules import Schedule

SPACINGS = ("uniform", "quadratic", "logsnr", "karras")


def check_chain(schedule: Schedule, steps, x: jax.Array | None = None,
                keys: jax.Array | None = None) -> np.ndarray:
  """`check_steps` for a chain on `schedule`, after checking that it is a Schedule."""
  if not isinstance(schedule, Schedule):
    raise TypeError(f"schedule must be a diffusion Schedule (Schedule.from_betas(betas)); got "
                    f"{type(schedule).__name__}")
  return check_steps(steps, schedule.num_steps, x, keys)


def check_steps(steps, num_steps: int, x: jax.Array | None = None,
                keys: jax.Array | None = None) -> np.ndarray:
  """The timesteps of a chain as a host int array, after checking them (decreasing, in [0,
  num_steps)) and `keys` (one per sample of x [N, ...], if given): a ValueError naming the
  argument instead of a failure inside the trace."""
  steps = np.asarray(steps)
  if (steps.ndim != 1 or len(steps) < 1 or steps.dtype.kind not in "iu"
      or np.any(np.diff(steps) >= 0) or steps[-1] < 0 or steps[0] >= num_steps):
    raise ValueError(f"steps must be decreasing int timesteps in [0, {num_steps}); got {steps}")
  if keys is not None and (getattr(keys, "ndim", 0) < 1 or keys.shape[0] != x.shape[0]):
    raise ValueError(f"keys must hold one key per sample, [{x.shape[0]}] for x {x.shape} "
                     f"(jax.random.split(key, {x.shape[0]})); got shape "
                     f"{getattr(keys, 'shape', ())}")
  return steps



def spaced_steps(schedule: Schedule, count: int | None = None, spacing: str = "uniform",
                 start: int | None = None) -> np.ndarray:
  """`count` timesteps in [0, start], decreasing: the steps a sampler visits.

  "uniform" and "quadratic" (t_i ∝ i², denser near the data) are the DDIM
  paper's two (Song et al., App. D.2); "logsnr" spaces λ_t = log(α_t/σ_t)
  evenly, as DPM-Solver recommends for pixel-space models; "karras" is EDM's
  σ spacing (Karras et al. eq. 5, ρ = 7) between σ_start and σ_0, rounded to
  the model's σ_t = sqrt(1/ᾱ_t - 1) in log σ. All include
  `start` (default T - 1) and 0, but "karras" starts at the step whose σ_t is
  nearest EDM's σ_max = 80 where σ_start is higher (the linear schedule's
  σ_999 is 157; x_T ~ N(0, I) is as good a start there); count=None visits every step.
  """
  num_steps = schedule.num_steps
  start = num_steps - 1 if start is None else start
  if not 0 <= start < num_steps:
    raise ValueError(f"the start step must lie in [0, {num_steps}); got {start}")
  if spacing == "karras":  # EDM's chains start at σ_max = 80 (or σ_start, if lower)
    start = int(edm.nearest_steps(schedule, edm.SIGMA_MAX, high=start))
  count = start + 1 if count is None else count
  if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 1 <= count <= start + 1:
    raise ValueError(f"steps must be an int in [1, {start + 1}] (the number of timesteps up to "
                     f"{start}); got {count!r}")
  if spacing not in SPACINGS:
    raise ValueError(f"spacing must be one of {SPACINGS}; got {spacing!r}")
  if count == 1:
    return np.array([start])
  grid = np.linspace(0, 1, count)
  if spacing == "logsnr":
    log_snr = (np.asarray(schedule.log_alphas_cumprod, np.float64)
               - np.asarray(schedule.log_one_minus_alphas_cumprod, np.float64))[:start + 1]
    targets = log_snr[0] + grid * (log_snr[-1] - log_snr[0])
    steps = np.abs(log_snr[None, :] - targets[:, None]).argmin(axis=1)
  elif spacing == "karras":
    table = edm.sigmas(schedule)
    steps = edm.nearest_steps(schedule, edm.karras_sigmas(count, table[0], table[start])[::-1],
                              high=start)
  else:
    steps = np.round(start * (grid if spacing == "uniform" else grid ** 2)).astype(int)
  for i in range(1, count):  # neighbours merged by rounding: push them apart
    steps[i] = max(steps[i], steps[i - 1] + 1)
  steps[-1] = start
  for i in range(count - 2, -1, -1):  # ... without passing `start`
    steps[i] = min(steps[i], steps[i + 1] - 1)
  return steps[::-1].copy()
