"""One step of the learned reverse process: DDPM ancestral and DDIM.

Shapes: x_t [B, ..., C] (channels last, any number of data dimensions);
model_output [B, ..., C], or [B, ..., 2C] for learned variances (the mean
part first, then the variance part, as in improved DDPM); t int [B], 0-based.
Outputs have x_t's dtype.
"""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import _checks
from diffusion.forward import q_posterior
from diffusion.parameterization import eps_from_x0, x0_from_prediction
from diffusion.schedules import Schedule, extract


def _compute_dtype(x):
  return jnp.promote_types(x.dtype, jnp.float32)


def _split(model_output, x_t, variance):
  """Mean and variance parts of the model output, in x_t's compute dtype."""
  model_output = _checks.floating(model_output, "model_output")
  _checks.model_output(model_output, x_t, variance)
  model_output = model_output.astype(_compute_dtype(x_t))
  if variance in _checks.LEARNED_VARIANCES:
    return jnp.split(model_output, 2, axis=-1)
  return model_output, None


def _pred_x0(schedule, mean_output, x_t, t, prediction, clip_x0):
  pred_x0 = x0_from_prediction(schedule, prediction, x_t, t, mean_output)
  return jnp.clip(pred_x0, -1, 1) if clip_x0 else pred_x0


def _fixed_large_variance(schedule: Schedule) -> jax.Array:
  """β_t, with β̃ at the first step so its log stays finite (authors' code)."""
  if schedule.num_steps == 1:
    return schedule.betas
  return jnp.concatenate([schedule.posterior_variance[1:2], schedule.betas[1:]])


def p_mean_variance(schedule: Schedule, model_output: jax.Array, x_t: jax.Array,
                    t: jax.Array, *, prediction: str = "eps",
                    variance: str = "fixed_small", clip_x0: bool = True
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Moments of p_θ(x_{t-1} | x_t) = N(μ_θ, Σ_θ), eq. (1) with Sec. 3.2.

  The mean is the posterior mean μ̃_t (eq. 7) at the predicted x_0, which for
  ε-prediction without clipping is eq. (11):
  μ_θ = (x_t - β_t / sqrt(1 - ᾱ_t) ε_θ) / sqrt(α_t).

  Args:
    schedule: the forward process.
    model_output: the network's output at (x_t, t).
    x_t: [B, ..., C].
    t: int [B].
    prediction: what the mean channels predict: "eps", "x0" or "v".
    variance: "fixed_small" (Σ = β̃_t), "fixed_large" (Σ = β_t, β̃ at t = 0),
      "learned_range" (improved DDPM eq. 15: log Σ = u log β_t + (1 - u)
      log β̃_t with u = (v + 1) / 2, v the variance channels) or "learned"
      (the variance channels are log Σ).
    clip_x0: clip the predicted x_0 to [-1, 1] before computing the mean.
  Returns:
    mean, variance, log_variance, pred_x0, each of x_t's shape and dtype.
  """
  _checks.choice(prediction, _checks.PREDICTIONS, "prediction")
  _checks.choice(variance, _checks.VARIANCES, "variance")
  x_t = _checks.floating(x_t, "x_t")
  t = _checks.timesteps(t, x_t.shape[0], like="x_t")
  mean_output, var_output = _split(model_output, x_t, variance)
  dtype, x_t = x_t.dtype, x_t.astype(_compute_dtype(x_t))

  if variance == "learned":
    log_var = var_output
  elif variance == "learned_range":
    min_log = extract(schedule.posterior_log_variance_clipped, t, x_t)
    max_log = extract(jnp.log(schedule.betas), t, x_t)
    frac = (var_output + 1.0) / 2.0
    log_var = frac * max_log + (1.0 - frac) * min_log
  elif variance == "fixed_small":
    log_var = extract(schedule.posterior_log_variance_clipped, t, x_t)
  else:
    log_var = extract(jnp.log(_fixed_large_variance(schedule)), t, x_t)
  if variance == "fixed_small":
    # β̃ itself is 0 at the first step; only its log is clipped.
    var = extract(schedule.posterior_variance, t, x_t)
  else:
    var = jnp.exp(log_var)

  pred_x0 = _pred_x0(schedule, mean_output, x_t, t, prediction, clip_x0)
  mean, _, _ = q_posterior(schedule, pred_x0, x_t, t)
  return tuple(jnp.broadcast_to(a, x_t.shape).astype(dtype)
               for a in (mean, var, log_var, pred_x0))


def p_sample(schedule: Schedule, model_output: jax.Array, x_t: jax.Array,
             t: jax.Array, key: jax.Array, *, prediction: str = "eps",
             variance: str = "fixed_small", clip_x0: bool = True
             ) -> tuple[jax.Array, jax.Array]:
  """Draws x_{t-1} ~ p_θ(x_{t-1} | x_t): μ_θ + σ_t z (Algorithm 2, line 4).

  No noise is added at t = 0, whose output is the final sample.

  Args: as `p_mean_variance`, plus `key` for z ~ N(0, I).
  Returns:
    x_prev, pred_x0: x_t's shape and dtype.
  """
  x_t = _checks.floating(x_t, "x_t")
  mean, _, log_var, pred_x0 = p_mean_variance(
      schedule, model_output, x_t.astype(_compute_dtype(x_t)), t,
      prediction=prediction, variance=variance, clip_x0=clip_x0)
  z = jax.random.normal(key, x_t.shape, mean.dtype)
  nonzero = (t != 0).reshape(t.shape + (1,) * (x_t.ndim - 1))
  x_prev = mean + jnp.where(nonzero, jnp.exp(0.5 * log_var) * z, 0.0)
  return x_prev.astype(x_t.dtype), pred_x0.astype(x_t.dtype)


def _alpha_bar(schedule: Schedule, t: jax.Array, x: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """ᾱ_t, 1 - ᾱ_t and log ᾱ_t shaped to broadcast against x.

  t = -1 stands for clean data (ᾱ = 1). The complement and the log come from
  their own float64-built tables, free of float32 cancellation near ᾱ = 1.
  """
  def padded(table, value):
    return extract(jnp.concatenate([jnp.full((1,), value, table.dtype), table]),
                   t + 1, x)
  return (padded(schedule.alphas_cumprod, 1.0),
          padded(jnp.exp(schedule.log_one_minus_alphas_cumprod), 0.0),
          padded(schedule.log_alphas_cumprod, 0.0))


def _check_eta(eta):
  """η in [0, 1] when it is known at trace time (a Python or NumPy number, a concrete array);
  a traced η cannot be checked."""
  if isinstance(eta, jax.core.Tracer) or np.ndim(eta) != 0:
    return
  if not 0.0 <= float(eta) <= 1.0:
    raise ValueError(f"eta must lie in [0, 1]; got {eta!r}")


def _ddim_estimates(schedule, model_output, x_t, t, t_to, t_to_name, prediction,
                    variance, clip_x0):
  """Checks a DDIM step's arguments; returns x_t, t, t_to, x̂_0, ε̂ in compute dtype."""
  _checks.choice(prediction, _checks.PREDICTIONS, "prediction")
  _checks.choice(variance, _checks.VARIANCES, "variance")
  x_t = _checks.floating(x_t, "x_t")
  t = _checks.timesteps(t, x_t.shape[0], like="x_t")
  t_to = _checks.timesteps(t_to, x_t.shape[0], t_to_name, like="x_t")
  mean_output, _ = _split(model_output, x_t, variance)
  x_t = x_t.astype(_compute_dtype(x_t))
  pred_x0 = _pred_x0(schedule, mean_output, x_t, t, prediction, clip_x0)
  return x_t, t, t_to, pred_x0, eps_from_x0(schedule, x_t, t, pred_x0)


def ddim_step(schedule: Schedule, model_output: jax.Array, x_t: jax.Array,
              t: jax.Array, t_prev: jax.Array, key: jax.Array | None, *,
              eta: float = 0.0, prediction: str = "eps",
              variance: str = "fixed_small", clip_x0: bool = True
              ) -> tuple[jax.Array, jax.Array]:
  """The generalised DDIM update from step t to any earlier step t_prev.

  DDIM (Song et al. 2020) eq. (12) with σ from eq. (16):
    x_prev = sqrt(ᾱ_prev) x̂_0 + sqrt(1 - ᾱ_prev - σ²) ε̂ + σ z,
    σ = η sqrt((1 - ᾱ_prev) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_prev),
  where ε̂ is recomputed from the (possibly clipped) x̂_0. η = 0 is the
  deterministic DDIM sampler; η = 1 with t_prev = t - 1 is ancestral DDPM
  with Σ = β̃_t.

  Args:
    schedule: the forward process.
    model_output: the network's output at (x_t, t); for a learned-variance
      model (`variance`) only the mean channels are used.
    x_t: [B, ..., C].
    t: int [B], the step of x_t.
    t_prev: int [B], the step to go to, t_prev < t; -1 means x_0 (ᾱ = 1).
    key: for z; may be None when eta is 0.
    eta: η in [0, 1].
    prediction, variance, clip_x0: as in `p_mean_variance`.
  Returns:
    x_prev, pred_x0: x_t's shape and dtype.
  """
  _check_eta(eta)
  if key is None and not (isinstance(eta, (int, float)) and eta == 0):
    raise ValueError("key must be given when eta is not 0")
  dtype = jnp.result_type(x_t)
  x_t, t, t_prev, pred_x0, eps = _ddim_estimates(
      schedule, model_output, x_t, t, t_prev, "t_prev", prediction, variance,
      clip_x0)
  _, one_minus, log_alpha_bar = _alpha_bar(schedule, t, x_t)
  alpha_bar_prev, one_minus_prev, log_alpha_bar_prev = _alpha_bar(
      schedule, t_prev, x_t)
  # σ² = η² (1 - ᾱ_prev) / (1 - ᾱ_t) · (1 - ᾱ_t / ᾱ_prev)
  sigma_sq = (eta**2 * one_minus_prev / one_minus
              * -jnp.expm1(log_alpha_bar - log_alpha_bar_prev))
  x_prev = (jnp.sqrt(alpha_bar_prev) * pred_x0
            # rounding alone can take this a hair below 0 at η = 1
            + jnp.sqrt(jnp.maximum(one_minus_prev - sigma_sq, 0.0)) * eps)
  if key is not None:
    x_prev = x_prev + jnp.sqrt(sigma_sq) * jax.random.normal(
        key, x_t.shape, x_t.dtype)
  return x_prev.astype(dtype), pred_x0.astype(dtype)


def ddim_inverse_step(schedule: Schedule, model_output: jax.Array,
                      x_t: jax.Array, t: jax.Array, t_next: jax.Array, *,
                      prediction: str = "eps", variance: str = "fixed_small",
                      clip_x0: bool = False) -> tuple[jax.Array, jax.Array]:
  """The deterministic DDIM update run forward, from step t to t_next > t.

  x_next = sqrt(ᾱ_next) x̂_0 + sqrt(1 - ᾱ_next) ε̂: the η = 0 update of
  `ddim_step` solved the other way (the DDIM ODE, Song et al. Sec. 4.3),
  which encodes an image into the latent that `ddim_step` decodes back. To
  encode data start at t = 0 with x_t = x_0, as is usual.

  Args:
    model_output: the network's output at (x_t, t).
    x_t: [B, ..., C].
    t: int [B], the step of x_t.
    t_next: int [B], t < t_next < T.
    prediction, variance, clip_x0: as in `p_mean_variance` (no clipping by
      default, so that inversion stays exact).
  Returns:
    x_next, pred_x0: x_t's shape and dtype.
  """
  dtype = jnp.result_type(x_t)
  x_t, t, t_next, pred_x0, eps = _ddim_estimates(
      schedule, model_output, x_t, t, t_next, "t_next", prediction, variance,
      clip_x0)
  x_next = (extract(schedule.sqrt_alphas_cumprod, t_next, x_t) * pred_x0
            + extract(schedule.sqrt_one_minus_alphas_cumprod, t_next, x_t) * eps)
  return x_next.astype(dtype), pred_x0.astype(dtype)
