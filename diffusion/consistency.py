"""Consistency models (Song, Dhariwal, Chen & Sutskever 2023) on a discrete-time DDPM's σ's.

In EDM's units (x = x_t / sqrt(ᾱ_t) = x_0 + σ_t n, `edm.py`) a consistency
function maps any point of a probability-flow trajectory to its origin:

  f_θ(x, σ) = c_skip(σ) x + c_out(σ) F_θ(sqrt(ᾱ_t) x, t),              (eq. 5)
  c_skip(σ) = σ_d² / ((σ - σ_min)² + σ_d²),  c_out(σ) = σ_d (σ - σ_min) / sqrt(σ_d² + σ²),

(App. C), so that f(x, σ_min) = x holds exactly (c_skip = 1, c_out = 0) at
σ_min = σ_0, the model's smallest σ. F_θ is the DDPM's network (its input is
x_t, as the teacher's), σ_d the data's std (0.5 in the paper).

Training on N discretisation points σ_min = σ_{t_1} < ... < σ_{t_N} (EDM's
ρ = 7 spacing rounded to the model's σ_t, `grid`): draw n, put x_{n+1} = x_0 +
σ_{n+1} z, step back to σ_n (distillation: one Heun step of the teacher's ODE;
training: x_0 + σ_n z, the same z) and pull f_θ(x_{n+1}) towards the target
network's f_θ⁻(x̂_n) (eq. 7 and 10; θ⁻ an EMA of θ with decay μ).
"""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import edm, spacing
from diffusion.schedules import Schedule

METRICS = ("l2", "pseudo_huber")


def coefficients(sigma: jax.Array, sigma_min: float, sigma_data: float):
  """(c_skip, c_out) of the boundary-respecting parameterisation (App. C), sigma's shape."""
  c_skip = sigma_data ** 2 / ((sigma - sigma_min) ** 2 + sigma_data ** 2)
  c_out = sigma_data * (sigma - sigma_min) / jnp.sqrt(sigma_data ** 2 + sigma ** 2)
  return c_skip, c_out


def consistency_fn(net_fn, schedule: Schedule, sigma_data: float):
  """f_θ(x, t) for x [B, ..., C] in EDM's units and t int [B] (σ = σ_t), from the network
  `net_fn(x_t, t)` (its first C channels are F_θ)."""
  table = jnp.asarray(edm.sigmas(schedule), jnp.float32)
  sigma_min = table[0]

  def f(x, t):
    shape = (-1,) + (1,) * (x.ndim - 1)
    sigma = table[t].reshape(shape)
    c_skip, c_out = coefficients(sigma, sigma_min, sigma_data)
    x_t = x * schedule.sqrt_alphas_cumprod[t].reshape(shape)
    out = net_fn(x_t.astype(x.dtype), t)[..., :x.shape[-1]].astype(x.dtype)
    return (c_skip * x + c_out * out).astype(x.dtype)
  return f


def grid(schedule: Schedule, n: int) -> np.ndarray:
  """The N discretisation timesteps t_1 = 0 < ... < t_N (σ_{t_N} ≈ EDM's σ_max = 80), int [N]."""
  return spacing.spaced_steps(schedule, n, "karras")[::-1].copy()


def grid_table(schedule: Schedule, max_n: int) -> np.ndarray:
  """Row n holds `grid(schedule, n)` padded with its last entry, int32 [max_n + 1, max_n]
  (rows 0 and 1 unused): the grids of a schedule of N, indexed by a traced N."""
  table = np.zeros((max_n + 1, max_n), np.int32)
  for n in range(2, max_n + 1):
    g = grid(schedule, n)
    table[n] = np.concatenate([g, np.full(max_n - n, g[-1])])
  return table


def num_points(k: jax.Array, total: int, s0: int, s1: int) -> jax.Array:
  """N(k) = ceil(sqrt(k/K ((s1 + 1)² - s0²) + s0²) - 1) + 1 of consistency training (App. C),
  k the training step, K = `total` steps: from s0 points up to s1 + 1. int32."""
  k = jnp.asarray(k, jnp.float32)
  return (jnp.ceil(jnp.sqrt(k / total * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1) + 1
          ).astype(jnp.int32)


def num_points_doubling(k: jax.Array, total: int, s0: int, s1: int) -> jax.Array:
  """N(k) = min(s0 2^floor(k / K'), s1) + 1 with K' = floor(K / (floor(log2 floor(s1 / s0)) + 1))
  of improved consistency training (Song & Dhariwal 2023, eq. 8), K = `total` steps. int32."""
  stages = int(np.floor(np.log2(s1 // s0))) + 1
  doublings = jnp.minimum(jnp.asarray(k) // max(total // stages, 1), 30)
  return (jnp.minimum(jnp.left_shift(s0, doublings), s1) + 1).astype(jnp.int32)


def target_decay(n: jax.Array, s0: int, mu0: float) -> jax.Array:
  """μ(k) = exp(s0 log μ0 / N(k)) of consistency training (App. C); 0 for μ0 = 0 (improved
  consistency training: the target is the student itself, without its gradient)."""
  if mu0 == 0:
    return jnp.zeros(jnp.shape(n), jnp.float32)
  return jnp.exp(s0 * np.log(mu0) / jnp.asarray(n, jnp.float32))


def lognormal_logits(sigmas: jax.Array, n: jax.Array, p_mean: float = -1.1,
                     p_std: float = 2.0) -> jax.Array:
  """log p(j) of the pair (σ_j, σ_{j+1}) of a grid `sigmas` [M] (increasing; its first n
  entries are the grid) under improved consistency training's discretised lognormal (eq. 9):
  p(j) ∝ erf((log σ_{j+1} - P_mean) / (sqrt(2) P_std)) - erf((log σ_j - P_mean) / (sqrt(2)
  P_std)) for j < n - 1; -inf from j = n - 1 on. [M - 1]."""
  cdf = jax.scipy.special.erf((jnp.log(sigmas) - p_mean) / (np.sqrt(2.0) * p_std))
  mass = jnp.maximum(cdf[1:] - cdf[:-1], 0.0)
  return jnp.where(jnp.arange(len(mass)) < n - 1, jnp.log(mass), -jnp.inf)


def distance(a: jax.Array, b: jax.Array, metric: str = "l2") -> jax.Array:
  """d(a, b) per example, [B]: "l2" the mean squared difference; "pseudo_huber" sqrt(‖a - b‖² +
  c²) - c with c = 0.00054 sqrt(dim) (Song & Dhariwal 2023, improved consistency training)."""
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
  diff = (a - b).astype(jnp.float32).reshape(a.shape[0], -1)
  if metric == "l2":
    return jnp.mean(diff ** 2, axis=1)
  c = 0.00054 * np.sqrt(diff.shape[1])
  return jnp.sqrt(jnp.sum(diff ** 2, axis=1) + c ** 2) - c


def loss(student_f, target_f, schedule: Schedule, x0: jax.Array, noise: jax.Array,
         t_lo: jax.Array, t_hi: jax.Array, *, teacher_d=None, metric: str = "l2"
         ) -> jax.Array:
  """d(f_θ(x_{n+1}, σ_{n+1}), f_θ⁻(x̂_n, σ_n)) per example, [B] (eq. 7 for distillation, eq. 10
  for training; λ = 1).

  x0, noise [B, ..., C]; t_lo, t_hi int [B]: the timesteps of σ_n < σ_{n+1}.
  `teacher_d(x, t)` (EDM units) makes x̂_n one Heun step of the teacher's ODE
  from x_{n+1} (consistency distillation); without it x̂_n = x_0 + σ_n z
  (consistency training).
  """
  table = jnp.asarray(edm.sigmas(schedule), jnp.float32)
  shape = (-1,) + (1,) * (x0.ndim - 1)
  sigma_lo, sigma_hi = table[t_lo].reshape(shape), table[t_hi].reshape(shape)
  x_hi = x0 + sigma_hi * noise
  if teacher_d is None:
    x_lo = x0 + sigma_lo * noise
  else:
    x_lo = jax.lax.stop_gradient(edm.heun_step(teacher_d, x_hi, t_hi, t_lo, sigma_hi,
                                               sigma_lo))
  return distance(student_f(x_hi, t_hi), jax.lax.stop_gradient(target_f(x_lo, t_lo)), metric)


def sampling_steps(schedule: Schedule, count: int) -> np.ndarray:
  """The `count` decreasing timesteps of a multistep chain: EDM's ρ = 7 spacing from σ ≈ 80
  over count + 1 points, less the last (σ_min, where f is the identity)."""
  return spacing.spaced_steps(schedule, count + 1, "karras")[:-1].copy()


def steps_at(schedule: Schedule, sigmas, most: int) -> np.ndarray:
  """The decreasing timesteps of a chain through the noise levels `sigmas` (EDM's units, the
  first where the chain starts), each the timestep whose σ_t is nearest in log, above σ_min and
  at most the top of `sampling_steps` (σ ≈ 80). A ValueError naming --sigmas for an empty or
  too long list (more than `most` steps), a σ <= 0, or levels that do not decrease after
  rounding."""
  sigmas = np.asarray(sigmas, np.float64).reshape(-1)
  if not 1 <= len(sigmas) <= most:
    raise ValueError(f"`sigmas` must hold 1 to {most} noise levels for this consistency model; "
                     f"got {len(sigmas)}")
  if not np.all(np.isfinite(sigmas) & (sigmas > 0)):
    raise ValueError(f"`sigmas` must be positive; got {sigmas.tolist()}")
  steps = edm.nearest_steps(schedule, sigmas, low=1, high=int(sampling_steps(schedule, 1)[0]))
  if np.any(np.diff(steps) >= 0):
    raise ValueError(f"`sigmas` must decrease, and stay apart on the model's noise levels "
                     f"(rounded: {np.round(edm.sigmas(schedule)[steps], 4).tolist()})")
  return steps
