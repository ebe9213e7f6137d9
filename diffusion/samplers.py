"""Reverse chains over a chosen list of timesteps: ancestral DDPM, DDIM, DPM-Solver++(2M),
and EDM's Heun and stochastic samplers (`edm.py`).

Each chain is a pure function compiled as one `lax.scan`:

  x0 = chain(denoise_fn, ..., steps, x, keys)

- `denoise_fn(x_t [N, ..., C], t int [N])` is the network (any guidance
  already folded in); `t` is always the original (unspaced) timestep.
- `steps` is a decreasing NumPy array of timesteps to visit, from the step
  of `x` down; `spaced_steps` makes them (uniform, quadratic, log-SNR).
- `keys` [N] holds one key per sample; the noise of visit i of sample n is
  drawn from fold_in(keys[n], i), so samples do not depend on batching.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import edm
from diffusion.parameterization import x0_from_prediction
from diffusion.reverse import ddim_step, p_sample
from diffusion.schedules import Schedule, extract, respace_betas

# "consistency" is a consistency model's own chain (`consistency.sample`), for its runs only.
SAMPLERS = ("ddpm", "ddim", "dpm++", "heun", "edm-sde", "consistency")
# None: every step. Heun's 18 steps are EDM's 35 evaluations for CIFAR-10.
DEFAULT_STEPS = {"ddpm": None, "ddim": 50, "dpm++": 20, "heun": 18, "edm-sde": 40,
                 "consistency": 1}
SPACINGS = ("uniform", "quadratic", "logsnr", "karras")
DEFAULT_SPACING = {"ddpm": "uniform", "ddim": "uniform", "dpm++": "logsnr", "heun": "karras",
                   "edm-sde": "karras", "consistency": "karras"}


def evaluations(sampler: str, steps: int) -> int:
  """Network evaluations of a chain of `steps` visited timesteps (unguided): 2 steps - 1 for
  EDM's samplers (Heun's correction at every step but the last), else one per step."""
  return 2 * steps - 1 if sampler in ("heun", "edm-sde") else steps

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]


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


def per_sample(step_fn, out, x, keys, i):
  """Runs a one-example step for each sample with its own key fold_in(keys[n], i)."""
  one = lambda o, xi, k: step_fn(o[None], xi[None], jax.random.fold_in(k, i))[0]
  return jax.vmap(one)(out, x, keys)


def ancestral(denoise_fn: Denoiser, betas: np.ndarray, steps: np.ndarray, x: jax.Array,
              keys: jax.Array, *, prediction: str = "eps", variance: str = "fixed_small",
              clip_x0: bool = True) -> jax.Array:
  """Ancestral sampling (Algorithm 2) over `steps`, respaced as in improved DDPM (Sec. 4).

  With S < T visited steps the chain runs on the respaced schedule whose ᾱ are
  those of the visited steps (`respace_betas`); a learned variance then
  interpolates between that schedule's β and β̃, as in improved DDPM.

  Args:
    betas: float64 [T], the original schedule.
    steps: decreasing timesteps; x is at steps[0]. Every step but the last adds noise.
  Returns: x_0 [N, ...].
  """
  if isinstance(betas, Schedule):
    raise TypeError("ancestral takes the schedule's float64 betas [T] (it respaces them), not "
                    "a Schedule: samplers.ancestral(denoise_fn, betas, steps, x, keys)")
  kept = np.sort(edm.check_steps(steps, len(betas), x, keys))
  respaced = Schedule.from_betas(respace_betas(betas, kept))
  index = np.arange(len(kept))[::-1]  # the respaced index of each visited step

  def body(x, visit):
    i, t, j = visit
    n = x.shape[0]
    out = denoise_fn(x, jnp.full((n,), t))
    step = lambda o, xi, k: p_sample(respaced, o, xi, jnp.full((1,), j), k, prediction=prediction,
                                     variance=variance, clip_x0=clip_x0)[0]
    return per_sample(step, out, x, keys, i), None

  visits = (jnp.arange(len(kept)), jnp.asarray(kept[::-1]), jnp.asarray(index))
  x, _ = jax.lax.scan(body, x, visits)
  return x


def ddim(denoise_fn: Denoiser, schedule: Schedule, steps: np.ndarray, x: jax.Array,
         keys: jax.Array, *, eta: float = 0.0, prediction: str = "eps",
         variance: str = "fixed_small", clip_x0: bool = True) -> jax.Array:
  """DDIM (Song et al. 2020, eq. 12) from steps[0] through each of `steps` to x_0.

  η = 0 is deterministic; η = 1 over every step is ancestral DDPM with β̃.
  """
  steps = edm.check_chain(schedule, steps, x, keys)
  targets = np.append(steps[1:], -1)

  def body(x, visit):
    i, t, t_prev = visit
    n = x.shape[0]
    out = denoise_fn(x, jnp.full((n,), t))
    step = lambda o, xi, k: ddim_step(schedule, o, xi, jnp.full((1,), t), jnp.full((1,), t_prev),
                                      k, eta=eta, prediction=prediction, variance=variance,
                                      clip_x0=clip_x0)[0]
    return per_sample(step, out, x, keys, i), None

  x, _ = jax.lax.scan(body, x, (jnp.arange(len(targets)), jnp.asarray(steps), jnp.asarray(targets)))
  return x


def dpm_solver_pp_2m(denoise_fn: Denoiser, schedule: Schedule, steps: np.ndarray, x: jax.Array,
                     keys: jax.Array | None = None, *, prediction: str = "eps",
                     variance: str = "fixed_small", clip_x0: bool = True) -> jax.Array:
  """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a deterministic second-order multistep
  solver of the diffusion ODE in the data prediction x̂_0, in λ = log(α/σ).

    x_{t_i} = (σ_{t_i} / σ_{t_{i-1}}) x_{t_{i-1}} - α_{t_i} (e^{-h_i} - 1) D_i,
    D_i = (1 + 1/(2 r_i)) x̂_0(t_{i-1}) - 1/(2 r_i) x̂_0(t_{i-2}),  r_i = h_{i-1} / h_i,

  first order (D = x̂_0) at the first step; the last step goes to σ = 0,
  where the update is x̂_0 itself. `keys` is unused (the solver adds no noise).
  """
  del keys
  steps = edm.check_chain(schedule, steps, x)
  targets = np.append(steps[1:], -1)
  channels = x.shape[-1]
  lam = lambda t: 0.5 * (extract(schedule.log_alphas_cumprod, t, x)
                         - extract(schedule.log_one_minus_alphas_cumprod, t, x))

  def body(carry, visit):
    x, prev_x0, prev_h = carry
    i, t, t_next = visit
    n = x.shape[0]
    ts = jnp.full((n,), t)
    out = denoise_fn(x, ts)[..., :channels]
    x0 = x0_from_prediction(schedule, prediction, x, ts, out.astype(x.dtype))
    x0 = jnp.clip(x0, -1, 1) if clip_x0 else x0
    tn = jnp.full((n,), jnp.maximum(t_next, 0))
    h = lam(tn) - lam(ts)
    r = prev_h / h
    d = jnp.where(i == 0, x0, (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev_x0)
    sigma_ratio = jnp.exp(0.5 * (extract(schedule.log_one_minus_alphas_cumprod, tn, x)
                                 - extract(schedule.log_one_minus_alphas_cumprod, ts, x)))
    x_next = (sigma_ratio * x - extract(schedule.sqrt_alphas_cumprod, tn, x)
              * jnp.expm1(-h) * d)
    x_next = jnp.where(t_next < 0, x0, x_next).astype(x.dtype)
    return (x_next, x0.astype(x.dtype), h.astype(jnp.float32)), None

  init = (x, jnp.zeros_like(x), jnp.ones((x.shape[0],) + (1,) * (x.ndim - 1), jnp.float32))
  (x, _, _), _ = jax.lax.scan(
      body, init, (jnp.arange(len(targets)), jnp.asarray(steps), jnp.asarray(targets)))
  return x


def run(sampler: str, denoise_fn: Denoiser, betas: np.ndarray, schedule: Schedule,
        steps: np.ndarray, x: jax.Array, keys: jax.Array, *, eta: float = 0.0, prediction: str,
        variance: str, clip_x0: bool = True, churn: float | None = None) -> jax.Array:
  """The chain named `sampler` (one of SAMPLERS) from x at steps[0] to x_0; `churn` is
  EDM's S_churn for "edm-sde" (default `edm.CHURN`)."""
  options = dict(prediction=prediction, variance=variance, clip_x0=clip_x0)
  if sampler == "heun":
    return edm.heun(denoise_fn, schedule, steps, x, keys, prediction=prediction,
                    clip_x0=clip_x0)
  if sampler == "edm-sde":
    return edm.edm_sde(denoise_fn, schedule, steps, x, keys, prediction=prediction,
                       clip_x0=clip_x0, churn=edm.CHURN if churn is None else churn)
  if sampler == "ddpm":
    return ancestral(denoise_fn, betas, steps, x, keys, **options)
  if sampler == "ddim":
    return ddim(denoise_fn, schedule, steps, x, keys, eta=eta, **options)
  if sampler == "dpm++":
    return dpm_solver_pp_2m(denoise_fn, schedule, steps, x, keys, **options)
  if sampler == "consistency":
    raise ValueError("the consistency sampler needs a consistency model: consistency.sample")
  raise ValueError(f"sampler must be one of {SAMPLERS}; got {sampler!r}")


def classifier_free_guidance(model_fn: Callable[..., jax.Array], labels: jax.Array,
                             null_class: int, scale: float, channels: int) -> Denoiser:
  """ε̃ = ε(x, ∅) + w (ε(x, y) - ε(x, ∅)) (Ho & Salimans 2022) on the mean channels.

  `model_fn(x, t, y)` is the class-conditional network; both terms come from
  one call on the doubled batch. A learned variance keeps the conditional one.
  """
  def denoise(x, t):
    n = x.shape[0]
    both = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                    jnp.concatenate([labels, jnp.full((n,), null_class, labels.dtype)]))
    cond, uncond = both[:n], both[n:]
    mean = uncond[..., :channels] + scale * (cond[..., :channels] - uncond[..., :channels])
    return jnp.concatenate([mean, cond[..., channels:]], axis=-1)
  return denoise
