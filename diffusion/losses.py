"""Training objectives: L_simple (Ho et al. eq. 14, the survey's eq. 9), L_vlb
and L_hybrid (Nichol & Dhariwal eq. 16), and min-SNR-γ weighting (Hang et al. 2023).

Each takes a batch of data and one key, draws t ~ U{0, ..., T-1} and
ε ~ N(0, I) inside (Algorithm 1), and returns float32 values.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion import _checks
from diffusion.forward import q_sample
from diffusion.likelihood import vlb_term
from diffusion.parameterization import target
from diffusion.schedules import Schedule

LOSSES = ("simple", "vlb", "hybrid")


def training_losses(denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
                    schedule: Schedule, x0: jax.Array, key: jax.Array, *,
                    loss: str = "simple", prediction: str = "eps",
                    variance: str = "fixed_small", t: jax.Array | None = None,
                    noise: jax.Array | None = None,
                    vlb_weight: float = 0.001) -> dict[str, jax.Array]:
  """Per-example training losses for a batch.

  - "simple": L_simple, eq. (14): ||target - f_θ(x_t, t)||², averaged over
    the data dimensions, the target being ε, x_0 or v by `prediction`.
  - "vlb": L_vlb = T · L_t, an unbiased one-sample estimate of the bound's
    sum over t (bits/dim, without the parameter-free L_T).
  - "hybrid": improved DDPM eq. (16), L_simple + λ L_vlb with λ =
    `vlb_weight`, the vlb term seeing the mean channels through a stop-gradient
    so that it trains only the variance; needs a learned variance.

  Args:
    denoise_fn: (x_t [B, ..., C], t int [B]) -> model output, [B, ..., C] or
      [B, ..., 2C] for learned variances.
    schedule: the forward process.
    x0: [B, ..., C] data in [-1, 1] (on the 8-bit grid for the vlb terms).
    key: draws t and ε where they are not given.
    loss: "simple", "vlb" or "hybrid".
    prediction, variance: as in `p_mean_variance`.
    t: optional int [B] timesteps (e.g. from an importance sampler).
    noise: optional ε [B, ..., C], e.g. drawn per example from keys of their own.
    vlb_weight: λ of the hybrid loss.
  Returns:
    dict of [B] arrays: "loss" (what to minimise), "mse" and, for "vlb" and
    "hybrid", "vb" (L_t in bits/dim, unscaled); and "t", the int timesteps.
  """
  _checks.choice(loss, LOSSES, "loss")
  _checks.choice(prediction, _checks.PREDICTIONS, "prediction")
  _checks.choice(variance, _checks.VARIANCES, "variance")
  if loss == "hybrid" and variance not in _checks.LEARNED_VARIANCES:
    raise ValueError(
        "loss='hybrid' trains the variance, so variance must be one of "
        f"{', '.join(map(repr, _checks.LEARNED_VARIANCES))}; got {variance!r}")
  x0 = _checks.floating(x0, "x0")
  num_steps, batch = schedule.num_steps, x0.shape[0]
  key_t, key_noise = jax.random.split(key)
  if t is None:
    t = jax.random.randint(key_t, (batch,), 0, num_steps)
  t = _checks.timesteps(t, batch, like="x0")
  if noise is None:
    noise = jax.random.normal(key_noise, x0.shape)
  elif noise.shape != x0.shape:
    raise ValueError(f"noise has shape {noise.shape}; x0 has {x0.shape}")
  noise = noise.astype(x0.dtype)
  x_t = q_sample(schedule, x0, t, noise)

  output = denoise_fn(x_t, t)
  output = _checks.floating(output, "model_output")
  _checks.model_output(output, x_t, variance)
  mean_output = output[..., :x0.shape[-1]]
  err = (target(schedule, prediction, x0, t, noise).astype(jnp.float32)
         - mean_output.astype(jnp.float32))
  terms = {"mse": jnp.mean(err.reshape(batch, -1) ** 2, axis=1), "t": t}

  if loss == "simple":
    terms["loss"] = terms["mse"]
    return terms
  if loss == "hybrid":
    output = jnp.concatenate(
        [jax.lax.stop_gradient(mean_output), output[..., x0.shape[-1]:]], -1)
  terms["vb"] = vlb_term(schedule, output, x0, x_t, t, prediction=prediction,
                         variance=variance, clip_x0=False)
  if loss == "vlb":
    terms["loss"] = num_steps * terms["vb"]
  else:
    terms["loss"] = terms["mse"] + vlb_weight * num_steps * terms["vb"]
  return terms


def loss_simple(denoise_fn, schedule, x0, key, **kwargs) -> jax.Array:
  """L_simple averaged over the batch, a float32 scalar; args as `training_losses`."""
  return jnp.mean(training_losses(
      denoise_fn, schedule, x0, key, loss="simple", **kwargs)["loss"])


def loss_vlb(denoise_fn, schedule, x0, key, **kwargs) -> jax.Array:
  """L_vlb averaged over the batch, a float32 scalar; args as `training_losses`."""
  return jnp.mean(training_losses(
      denoise_fn, schedule, x0, key, loss="vlb", **kwargs)["loss"])


def loss_hybrid(denoise_fn, schedule, x0, key, **kwargs) -> jax.Array:
  """L_hybrid averaged over the batch, a float32 scalar; args as `training_losses`."""
  return jnp.mean(training_losses(
      denoise_fn, schedule, x0, key, loss="hybrid", **kwargs)["loss"])


def min_snr_weight(schedule: Schedule, t: jax.Array, prediction: str, gamma: float) -> jax.Array:
  """Min-SNR-γ weights (Hang et al. 2023) of the per-example L_simple of `prediction`, float32
  [B] for t int [B]: with SNR_t = ᾱ_t / (1 - ᾱ_t), min(SNR_t, γ) / SNR_t for ε, min(SNR_t, γ)
  for x_0 and min(SNR_t, γ) / (SNR_t + 1) for v, so that each equals min(SNR_t, γ) · ||x_0 -
  x̂_0||² (the x_0 error is the ε error over SNR_t and the v error over SNR_t + 1)."""
  _checks.choice(prediction, _checks.PREDICTIONS, "prediction")
  if not gamma > 0:
    raise ValueError(f"gamma must be > 0; got {gamma!r}")
  log_snr = (schedule.log_alphas_cumprod - schedule.log_one_minus_alphas_cumprod)[t]
  snr = jnp.exp(log_snr.astype(jnp.float32))
  clipped = jnp.minimum(snr, gamma)
  return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[prediction]
