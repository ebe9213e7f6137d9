"""Conversions between the ε, x_0 and v parameterisations of the denoiser.

With x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε (eq. 4) and
v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0 (Salimans & Ho 2022), any one of x_0, ε, v
together with x_t gives the other two. Shapes: [B, ..., C] arrays, t int [B];
outputs have x_t's dtype (x0's for `v_from_x0_eps`).
"""

import jax

from diffusion import _checks
from diffusion.schedules import Schedule, extract


def _operands(x_t, t, other, other_name, x_name="x_t"):
  x_t = _checks.floating(x_t, x_name)
  other = _checks.floating(other, other_name)
  _checks.same_shape(x_t, other, x_name, other_name)
  t = _checks.timesteps(t, x_t.shape[0], like=x_name)
  return x_t, t, other


def x0_from_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array,
                eps: jax.Array) -> jax.Array:
  """x_0 = x_t / sqrt(ᾱ_t) - sqrt(1/ᾱ_t - 1) ε (eq. 4 solved for x_0)."""
  x_t, t, eps = _operands(x_t, t, eps, "eps")
  x0 = (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t
        - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)
  return x0.astype(x_t.dtype)


def eps_from_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array,
                x0: jax.Array) -> jax.Array:
  """ε = (x_t / sqrt(ᾱ_t) - x_0) / sqrt(1/ᾱ_t - 1) (eq. 4 solved for ε)."""
  x_t, t, x0 = _operands(x_t, t, x0, "x0")
  eps = ((extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0)
         / extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t))
  return eps.astype(x_t.dtype)


def v_from_x0_eps(schedule: Schedule, x0: jax.Array, t: jax.Array,
                  eps: jax.Array) -> jax.Array:
  """The v target: v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0."""
  x0, t, eps = _operands(x0, t, eps, "eps", x_name="x0")
  v = (extract(schedule.sqrt_alphas_cumprod, t, x0) * eps
       - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * x0)
  return v.astype(x0.dtype)


def x0_from_v(schedule: Schedule, x_t: jax.Array, t: jax.Array,
              v: jax.Array) -> jax.Array:
  """x_0 = sqrt(ᾱ_t) x_t - sqrt(1 - ᾱ_t) v."""
  x_t, t, v = _operands(x_t, t, v, "v")
  x0 = (extract(schedule.sqrt_alphas_cumprod, t, x_t) * x_t
        - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * v)
  return x0.astype(x_t.dtype)


def eps_from_v(schedule: Schedule, x_t: jax.Array, t: jax.Array,
               v: jax.Array) -> jax.Array:
  """ε = sqrt(1 - ᾱ_t) x_t + sqrt(ᾱ_t) v."""
  x_t, t, v = _operands(x_t, t, v, "v")
  eps = (extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
         + extract(schedule.sqrt_alphas_cumprod, t, x_t) * v)
  return eps.astype(x_t.dtype)


def x0_from_prediction(schedule: Schedule, prediction: str, x_t: jax.Array,
                       t: jax.Array, output: jax.Array) -> jax.Array:
  """x_0 implied by a denoiser `output` [B, ..., C] of type `prediction`."""
  _checks.choice(prediction, _checks.PREDICTIONS, "prediction")
  if prediction == "eps":
    return x0_from_eps(schedule, x_t, t, output)
  if prediction == "v":
    return x0_from_v(schedule, x_t, t, output)
  _operands(x_t, t, output, "model_output")
  return output.astype(x_t.dtype)


def target(schedule: Schedule, prediction: str, x0: jax.Array, t: jax.Array,
           noise: jax.Array) -> jax.Array:
  """What a denoiser of type `prediction` should output for x_t = q_sample(x0, t, noise)."""
  _checks.choice(prediction, _checks.PREDICTIONS, "prediction")
  if prediction == "v":
    return v_from_x0_eps(schedule, x0, t, noise)
  x0, t, noise = _operands(x0, t, noise, "noise", x_name="x0")
  return noise.astype(x0.dtype) if prediction == "eps" else x0
