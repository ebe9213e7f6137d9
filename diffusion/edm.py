"""EDM's view of a trained discrete-time DDPM (Karras et al. 2022): σ's, denoiser, Heun step.

Any ε-, x_0- or v-model of a VP schedule is a denoiser D(x; σ) (Karras et al.
Table 1): with σ_t = sqrt(1/ᾱ_t - 1) and the data scaled as x = x_t / sqrt(ᾱ_t)
(so that x = x_0 + σ n), D(x; σ_t) = x̂_0(sqrt(ᾱ_t) x, t). A discrete-time model
knows only its own σ_t (about [0.01, 157] for the linear schedule, T = 1000),
so every σ a chain visits is one of them: the samplers take decreasing
timesteps (`samplers.spaced_steps(..., "karras")` spaces them as EDM's eq. 5,
ρ = 7, rounded to the model's σ_t) and end at σ = 0 (t = -1, the data).

EDM's chains (Heun, the stochastic sampler) are `diffusion.samplers.edm`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.parameterization import x0_from_prediction
from diffusion.schedules import Schedule, extract

# The network as a chain calls it: (x_t [N, ..., C], t int [N]) -> its output.
NetworkFn = Callable[[jax.Array, jax.Array], jax.Array]

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


def denoiser(denoise_fn: NetworkFn, schedule: Schedule, *, prediction: str = "eps",
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


# EDM's training (Karras et al. 2022, Table 1, config F): σ ~ log-normal, the network F_θ
# preconditioned into a denoiser D(x; σ) = c_skip x + c_out F_θ(c_in x, c_noise), the loss
# weighted by λ(σ), all on continuous σ (VE: x = x_0 + σ n).
P_MEAN, P_STD, SIGMA_DATA = -1.2, 1.2, 0.5


def preconditioning(sigma: jax.Array, sigma_data: float = SIGMA_DATA):
  """(c_skip, c_out, c_in, c_noise) of σ (any shape): c_skip = σ_d² / (σ² + σ_d²),
  c_out = σ σ_d / sqrt(σ² + σ_d²), c_in = 1 / sqrt(σ² + σ_d²), c_noise = ln(σ) / 4."""
  sigma = jnp.asarray(sigma, jnp.float32)
  total = sigma ** 2 + sigma_data ** 2
  return (sigma_data ** 2 / total, sigma * sigma_data / jnp.sqrt(total), 1 / jnp.sqrt(total),
          jnp.log(sigma) / 4)


def loss_weight(sigma: jax.Array, sigma_data: float = SIGMA_DATA) -> jax.Array:
  """λ(σ) = (σ² + σ_d²) / (σ σ_d)², which makes λ c_out² = 1: the network's own target has
  unit weight at every σ."""
  sigma = jnp.asarray(sigma, jnp.float32)
  return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def sample_sigmas(key: jax.Array, shape, p_mean: float = P_MEAN, p_std: float = P_STD
                  ) -> jax.Array:
  """Training noise levels: ln σ ~ N(P_mean, P_std²), float32 of `shape`."""
  return jnp.exp(p_mean + p_std * jax.random.normal(key, shape, jnp.float32))


def preconditioned(network_fn, sigma_data: float = SIGMA_DATA):
  """D(x; σ) = c_skip x + c_out F(c_in x, c_noise) for F = `network_fn(x_in [B, ..., C], c_noise
  float [B]) -> [B, ..., C]`; x [B, ..., C], σ float [B]."""
  def d(x, sigma):
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, sigma_data)
    shape = (-1,) + (1,) * (x.ndim - 1)
    out = network_fn((c_in.reshape(shape) * x).astype(x.dtype), c_noise)[..., :x.shape[-1]]
    return (c_skip.reshape(shape) * x + c_out.reshape(shape) * out).astype(x.dtype)
  return d


def training_loss(denoiser_fn, x0: jax.Array, noise: jax.Array, sigma: jax.Array,
                  sigma_data: float = SIGMA_DATA) -> jax.Array:
  """λ(σ) ||D(x_0 + σ n; σ) − x_0||² averaged over the data dimensions, float32 [B], for a
  denoiser D(x, σ) (e.g. `preconditioned`); x0, noise [B, ..., C], σ float [B]."""
  shape = (-1,) + (1,) * (x0.ndim - 1)
  x = x0 + jnp.asarray(sigma, x0.dtype).reshape(shape) * noise
  err = (denoiser_fn(x, sigma).astype(jnp.float32) - x0.astype(jnp.float32))
  return loss_weight(sigma, sigma_data) * jnp.mean(err.reshape(err.shape[0], -1) ** 2, axis=1)


def ode_field(denoiser_fn):
  """EDM's probability-flow ODE in σ, dx/dσ = (x − D(x; σ)) / σ, as a field for
  `diffusion.ode`."""
  def f(x, sigma):
    s = sigma.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
    return (x - denoiser_fn(x, sigma)) / s
  return f
