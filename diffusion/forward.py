"""The forward (noising) process q of DDPM (Ho et al. 2020, Sec. 2).

Shapes: x0, x_t, noise are [B, ..., C] (any number of data dimensions,
channels last); t is int [B], 0-based. Outputs have the input's dtype; the
arithmetic runs in at least float32.
"""

import jax
import jax.numpy as jnp

from diffusion import _checks
from diffusion.schedules import Schedule, extract


def q_mean_variance(schedule: Schedule, x0: jax.Array, t: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Moments of q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I), eq. (4).

  Returns:
    mean, variance, log_variance, each of x0's shape and dtype.
  """
  x0 = _checks.floating(x0, "x0")
  t = _checks.timesteps(t, x0.shape[0], like="x0")
  mean = extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
  log_variance = jnp.broadcast_to(
      extract(schedule.log_one_minus_alphas_cumprod, t, x0), x0.shape)
  variance = jnp.exp(log_variance)  # 1 - ᾱ_t without cancellation
  return tuple(a.astype(x0.dtype) for a in (mean, variance, log_variance))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array,
             noise: jax.Array) -> jax.Array:
  """Draws x_t ~ q(x_t | x_0), eq. (4): x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε.

  Args:
    schedule: the forward process.
    x0: [B, ..., C] data.
    t: int [B] timesteps.
    noise: ε ~ N(0, I), x0's shape.
  Returns:
    x_t: x0's shape and dtype.
  """
  x0 = _checks.floating(x0, "x0")
  noise = _checks.floating(noise, "noise")
  _checks.same_shape(x0, noise, "x0", "noise")
  t = _checks.timesteps(t, x0.shape[0], like="x0")
  x_t = (extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
         + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise)
  return x_t.astype(x0.dtype)


def q_posterior(schedule: Schedule, x0: jax.Array, x_t: jax.Array,
                t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Moments of q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I), eq. (6)-(7).

  μ̃_t = sqrt(ᾱ_{t-1}) β_t / (1 - ᾱ_t) x_0 + sqrt(α_t) (1 - ᾱ_{t-1}) / (1 - ᾱ_t) x_t
  β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) β_t

  Args:
    schedule: the forward process.
    x0, x_t: [B, ..., C].
    t: int [B], the index of x_t.
  Returns:
    mean, variance, log_variance, each of x_t's shape and dtype. The log
    variance is clipped at t = 0 (where β̃ = 0) as in the authors' code.
  """
  x0 = _checks.floating(x0, "x0")
  x_t = _checks.floating(x_t, "x_t")
  _checks.same_shape(x_t, x0, "x_t", "x0")
  t = _checks.timesteps(t, x_t.shape[0], like="x_t")
  mean = (extract(schedule.posterior_mean_coef1, t, x_t) * x0
          + extract(schedule.posterior_mean_coef2, t, x_t) * x_t)
  variance = jnp.broadcast_to(
      extract(schedule.posterior_variance, t, x_t), x_t.shape)
  log_variance = jnp.broadcast_to(
      extract(schedule.posterior_log_variance_clipped, t, x_t), x_t.shape)
  return tuple(a.astype(x_t.dtype) for a in (mean, variance, log_variance))
