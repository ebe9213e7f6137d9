"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023) as pure functions.

The path from data to noise is a straight line, x_t = (1 − t) x_0 + t ε with t ∈ [0, 1] and
ε ~ N(0, I), and the network predicts its velocity u = dx_t/dt = ε − x_0 (the conditional
target whose regression gives the marginal field v(x, t) = E[ε − x_0 | x_t = x]). Sampling
integrates dx/dt = v(x, t) from t = 1 (pure noise) to t = 0 (`diffusion.ode`). Times are
drawn uniformly or logit-normally, t = sigmoid(m + s z) (Esser et al. 2024, SD3: m = 0, s = 1).

Every Gaussian path is the same process up to scale: x_t / (1 − t) = x_0 + σ ε with
σ = t / (1 − t), EDM's noise level (`to_sigma`), so a flow-matching model is an EDM denoiser
D(x; σ) = x̂_0 and EDM's samplers run on it (and conversely).

Shapes: x0, noise, x_t [B, ..., C]; t float [B].
"""

import jax
import jax.numpy as jnp
import numpy as np

TIMES = ("uniform", "logit_normal")


def _column(t, x):
  return jnp.asarray(t, jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))


def interpolate(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """x_t = (1 − t) x_0 + t ε."""
  t = _column(t, x0)
  return ((1 - t) * x0 + t * noise).astype(x0.dtype)


def velocity(x0: jax.Array, noise: jax.Array) -> jax.Array:
  """The conditional velocity ε − x_0, dx_t/dt of `interpolate` (the regression target)."""
  return noise - x0


def x0_from_velocity(x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
  """x̂_0 = x_t − t v̂."""
  return x_t - _column(t, x_t) * v


def eps_from_velocity(x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
  """ε̂ = x_t + (1 − t) v̂."""
  return x_t + (1 - _column(t, x_t)) * v


def to_sigma(t):
  """EDM's σ = t / (1 − t) of time t: x_t / (1 − t) = x_0 + σ ε."""
  return t / (1 - t)


def from_sigma(sigma):
  """t = σ / (1 + σ), the inverse of `to_sigma`."""
  return sigma / (1 + sigma)


def sample_times(key: jax.Array, shape, distribution: str = "uniform", m: float = 0.0,
                 s: float = 1.0) -> jax.Array:
  """Training times, float32 of `shape`: uniform on [0, 1), or logit-normal, t = sigmoid(m +
  s z) with z ~ N(0, 1) (SD3's m = 0, s = 1 puts more weight in the middle of the path)."""
  if distribution not in TIMES:
    raise ValueError(f"`distribution` must be one of {', '.join(TIMES)}; got {distribution!r}")
  if distribution == "uniform":
    return jax.random.uniform(key, shape, jnp.float32)
  if not s > 0:
    raise ValueError(f"`s` must be > 0; got {s!r}")
  return jax.nn.sigmoid(m + s * jax.random.normal(key, shape, jnp.float32))


def loss(velocity_fn, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """||v_θ(x_t, t) − (ε − x_0)||² averaged over the data dimensions, float32 [B]
  (conditional flow matching)."""
  x_t = interpolate(x0, noise, t)
  err = (velocity_fn(x_t, t).astype(jnp.float32)
         - velocity(x0, noise).astype(jnp.float32))
  return jnp.mean(err.reshape(err.shape[0], -1) ** 2, axis=1)


def time_grid(steps: int, shift: float = 1.0) -> np.ndarray:
  """steps + 1 times from 1 down to 0, float64: uniform, or with `shift` α > 1 spending more
  of them near t = 1 (SD3's t' = α t / (1 + (α − 1) t))."""
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"`steps` must be a positive int; got {steps!r}")
  if not shift > 0:
    raise ValueError(f"`shift` must be > 0; got {shift!r}")
  t = np.linspace(1.0, 0.0, steps + 1)
  return shift * t / (1 + (shift - 1) * t)
