"""EDM's samplers (Karras et al. 2022) over a trained discrete-time DDPM.

Any ε-, x_0- or v-model of a VP schedule is a denoiser D(x; σ) (Karras et al.
Table 1): with σ_t = sqrt(1/ᾱ_t - 1) and the data scaled as x = x_t / sqrt(ᾱ_t)
(so that x = x_0 + σ n), D(x; σ_t) = x̂_0(sqrt(ᾱ_t) x, t). A discrete-time model
knows only its own σ_t (about [0.01, 157] for the linear schedule, T = 1000),
so every σ a chain visits is one of them: the samplers take decreasing
timesteps (`samplers.spaced_steps(..., "karras")` spaces them as EDM's eq. 5,
ρ = 7, rounded to the model's σ_t) and end at σ = 0 (t = -1, the data).

Chains have the signature of `diffusion.samplers`' and are one `lax.scan`:
x [N, ..., C] at steps[0] in the DDPM's units (x_t) -> x_0 [N, ..., C].
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.parameterization import x0_from_prediction
from diffusion.schedules import Schedule, extract

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]

SIGMA_MAX = 80.0  # EDM's σ_max: where "karras" spacing starts (or at σ_start, if lower)
# EDM's stochastic sampler settings for VP models (Karras et al. Table 5).
CHURN, S_TMIN, S_TMAX, S_NOISE = 30.0, 0.01, 1.0, 1.007


def sigmas(schedule: Schedule) -> np.ndarray:
  """σ_t = sqrt(1/ᾱ_t - 1) of every timestep, float64 [T], increasing."""
  log_ac = np.asarray(schedule.log_alphas_cumprod, np.float64)
  return np.sqrt(np.expm1(-log_ac))


def nearest_steps(schedule: Schedule, values, low: int = 0, high: int | None = None) -> np.ndarray:
  """The timesteps in [low, high] (default: to T - 1) whose σ_t lie nearest in log to `values`
  (σ's of any shape), int of that shape: how a σ becomes one of a discrete model's."""
  table = np.log(sigmas(schedule)[low:None if high is None else high + 1])
  return low + np.abs(table - np.log(np.asarray(values, np.float64))[..., None]).argmin(-1)


def karras_sigmas(count: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
  """EDM's eq. (5): σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ, i < n,
  float64 [count], decreasing from σ_max to σ_min."""
  if count == 1:
    return np.array([sigma_max], np.float64)
  ramp = np.linspace(0, 1, count)
  inv = 1.0 / rho
  return (sigma_max ** inv + ramp * (sigma_min ** inv - sigma_max ** inv)) ** rho


def denoiser(denoise_fn: Denoiser, schedule: Schedule, *, prediction: str = "eps",
             clip_x0: bool = False) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """D(x; σ_t) as a function of (x [N, ..., C] in EDM's units, t int [N]): the model's x̂_0
  at x_t = sqrt(ᾱ_t) x (the mean channels of a learned-variance model)."""
  def d(x, t):
    x_t = extract(schedule.sqrt_alphas_cumprod, t, x) * x
    out = denoise_fn(x_t.astype(x.dtype), t)[..., :x.shape[-1]].astype(x.dtype)
    x0 = x0_from_prediction(schedule, prediction, x_t, t, out)
    return jnp.clip(x0, -1, 1) if clip_x0 else x0
  return d


def to_edm(schedule: Schedule, x_t: jax.Array, t: int) -> jax.Array:
  """x = x_t / sqrt(ᾱ_t): a DDPM state at step t in EDM's units (x_0 + σ_t n)."""
  return x_t * schedule.sqrt_recip_alphas_cumprod[t].astype(x_t.dtype)


def visit_noise(keys: jax.Array, i, shape: tuple[int, ...]) -> jax.Array:
  """Standard normal noise [N, *shape] of visit i: sample n's from fold_in(keys[n], i), so a
  sample's noise does not depend on the batch it is drawn in."""
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), shape))(keys)


def heun_step(d, x: jax.Array, t: jax.Array, t_next: jax.Array, sigma: jax.Array,
              sigma_next: jax.Array) -> jax.Array:
  """One step of EDM's Algorithm 1 from σ = σ_t to σ_next = σ_{t_next} > 0 (2 evaluations):

    d_i = (x - D(x; σ)) / σ,  x' = x + (σ_next - σ) d_i,
    x_next = x + (σ_next - σ) (d_i + (x' - D(x'; σ_next)) / σ_next) / 2.

  x [N, ..., C]; t, t_next int [N]; sigma, sigma_next broadcastable to x.
  """
  slope = (x - d(x, t)) / sigma
  euler = x + (sigma_next - sigma) * slope
  slope_next = (euler - d(euler, t_next)) / sigma_next
  return x + (sigma_next - sigma) * 0.5 * (slope + slope_next)


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


def _tables(schedule: Schedule, steps: np.ndarray, x: jax.Array | None = None,
            keys: jax.Array | None = None):
  return check_chain(schedule, steps, x, keys), sigmas(schedule)


def heun(denoise_fn: Denoiser, schedule: Schedule, steps: np.ndarray, x: jax.Array,
         keys: jax.Array | None = None, *, prediction: str = "eps", clip_x0: bool = False
         ) -> jax.Array:
  """EDM's deterministic sampler (Karras et al. Algorithm 1): Heun's 2nd-order method on the
  probability-flow ODE dx/dσ = (x - D(x; σ)) / σ through σ_{steps[0]} > ... > σ_{steps[-1]}
  and then one Euler step to σ = 0. N steps cost 2N - 1 network evaluations (one step is
  a single Euler step: x_0 = D(x; σ_max)). `keys` is unused (no noise is added).
  """
  del keys
  steps, table = _tables(schedule, steps, x)
  d = denoiser(denoise_fn, schedule, prediction=prediction, clip_x0=clip_x0)
  n = x.shape[0]
  x = to_edm(schedule, x, steps[0])

  def body(x, visit):
    t, t_next, sigma, sigma_next = visit
    full = lambda v: jnp.full((n,), v)
    return heun_step(d, x, full(t), full(t_next), sigma.astype(x.dtype),
                     sigma_next.astype(x.dtype)).astype(x.dtype), None

  visits = (steps[:-1], steps[1:], table[steps[:-1]], table[steps[1:]])
  if len(steps) > 1:
    x, _ = jax.lax.scan(body, x, jax.tree.map(jnp.asarray, visits))
  return d(x, jnp.full((n,), steps[-1])).astype(x.dtype)  # the last step: Euler to σ = 0


def churned_steps(schedule: Schedule, steps: np.ndarray, churn: float = CHURN,
                  s_tmin: float = S_TMIN, s_tmax: float = S_TMAX) -> np.ndarray:
  """The timestep t̂_i of σ̂_i = σ_i (1 + γ_i) for each visited step, γ_i = min(S_churn / N,
  sqrt(2) - 1) where S_tmin <= σ_i <= S_tmax, else 0 (EDM's Algorithm 2), rounded to the
  nearest of the model's σ_t at or above σ_i: int [len(steps)], t̂_i >= steps[i]."""
  steps, table = _tables(schedule, steps)
  gamma = min(churn / len(steps), np.sqrt(2.0) - 1.0)
  out = steps.copy()
  for i, t in enumerate(steps):
    sigma = table[t]
    if churn > 0 and s_tmin <= sigma <= s_tmax:
      out[i] = nearest_steps(schedule, sigma * (1 + gamma), low=t)
  return out


def edm_sde(denoise_fn: Denoiser, schedule: Schedule, steps: np.ndarray, x: jax.Array,
            keys: jax.Array, *, prediction: str = "eps", clip_x0: bool = False,
            churn: float = CHURN, s_tmin: float = S_TMIN, s_tmax: float = S_TMAX,
            s_noise: float = S_NOISE) -> jax.Array:
  """EDM's stochastic sampler (Karras et al. Algorithm 2): before each Heun step from σ_i,
  raise the noise to σ̂_i = σ_{t̂_i} (`churned_steps`) by adding N(0, (σ̂² - σ²) S_noise² I),
  then step from σ̂_i to σ_{i+1}; the last step is Euler to σ = 0 (2N - 1 evaluations).
  The noise of visit i of sample n is drawn from fold_in(keys[n], i).
  """
  steps, table = _tables(schedule, steps, x, keys)
  hats = churned_steps(schedule, steps, churn, s_tmin, s_tmax)
  d = denoiser(denoise_fn, schedule, prediction=prediction, clip_x0=clip_x0)
  n = x.shape[0]
  x = to_edm(schedule, x, steps[0])
  full = lambda v: jnp.full((n,), v)

  # The spread of each visit's added noise, on the host in float64: exactly 0 where σ̂ = σ
  # (γ = 0). In float32 under jit, σ̂² - σ² keeps a rounding residue that the square root
  # turns into noise of ~1e-4 σ at every step Algorithm 2 adds none.
  spreads = np.sqrt(np.maximum(table[hats] ** 2 - table[steps] ** 2, 0.0)) * s_noise

  def churn_noise(x, i, spread):
    return x + spread.astype(x.dtype) * visit_noise(keys, i, x.shape[1:]).astype(x.dtype)

  def body(x, visit):
    i, t_hat, t_next, spread, sigma_hat, sigma_next = visit
    x = churn_noise(x, i, spread)
    return heun_step(d, x, full(t_hat), full(t_next), sigma_hat.astype(x.dtype),
                     sigma_next.astype(x.dtype)).astype(x.dtype), None

  visits = (np.arange(len(steps) - 1), hats[:-1], steps[1:], spreads[:-1], table[hats[:-1]],
            table[steps[1:]])
  if len(steps) > 1:
    x, _ = jax.lax.scan(body, x, jax.tree.map(jnp.asarray, visits))
  last = len(steps) - 1
  x = churn_noise(x, last, jnp.asarray(spreads[last]))
  return d(x, full(hats[-1])).astype(x.dtype)
