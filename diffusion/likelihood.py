"""The variational bound of DDPM in bits per dimension (Ho et al. 2020, eq. 5).

L = L_T + Σ_{t>1} L_{t-1} + L_0 with
  L_T     = KL(q(x_T | x_0) || N(0, I))                       `prior_bpd`
  L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_θ(x_{t-1} | x_t))   `vlb_term`, t > 0
  L_0     = -log p_θ(x_0 | x_1), discretized Gaussian (eq. 13) `vlb_term`, t = 0
Values are per example, averaged over the data dimensions and divided by
log 2, and float32 whatever the input dtype (they are reductions).
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from diffusion import _checks
from diffusion.forward import q_mean_variance, q_posterior, q_sample
from diffusion.reverse import p_mean_variance
from diffusion.schedules import Schedule

_LOG2 = math.log(2.0)


def normal_kl(mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array,
              logvar2: jax.Array) -> jax.Array:
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats, elementwise (broadcasting)."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _log_normal_mass(a: jax.Array, b: jax.Array) -> jax.Array:
  """log(Φ(b) - Φ(a)) for a < b, accurate in both tails."""
  # Reflect intervals right of 0 to the left, where log Φ has its precision.
  flip = a + b > 0
  lo, hi = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
  log_hi = log_ndtr(hi)
  return log_hi + jnp.log(-jnp.expm1(log_ndtr(lo) - log_hi))


def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array,
                                        log_scale: jax.Array) -> jax.Array:
  """log p(x) of 8-bit data under a Gaussian discretized to its bins, eq. (13).

  x in [-1, 1] on the grid of 256 levels; each level owns the interval of
  width 2/255 around it, and the two end levels own everything beyond. The
  bin masses are computed exactly with log Φ (the authors' code uses a tanh
  approximation of Φ).

  Args:
    x, mean, log_scale: broadcastable arrays; log_scale is log σ.
  Returns:
    log-likelihood in nats, elementwise.
  """
  inv_std = jnp.exp(-log_scale)
  upper = inv_std * (x - mean + 1.0 / 255.0)
  lower = inv_std * (x - mean - 1.0 / 255.0)
  return jnp.where(
      x < -0.999, log_ndtr(upper),
      jnp.where(x > 0.999, log_ndtr(-lower), _log_normal_mass(lower, upper)))


def _mean_bits(x: jax.Array) -> jax.Array:
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1) / _LOG2


def vlb_term(schedule: Schedule, model_output: jax.Array, x0: jax.Array,
             x_t: jax.Array, t: jax.Array, *, prediction: str = "eps",
             variance: str = "fixed_small", clip_x0: bool = True) -> jax.Array:
  """L_{t-1} of eq. (5) for t > 0 and L_0 for t = 0, in bits/dim.

  Args:
    schedule: the forward process.
    model_output: the network's output at (x_t, t), as in `p_mean_variance`.
    x0: [B, ..., C] data on the 8-bit grid in [-1, 1].
    x_t: [B, ..., C], a draw of q(x_t | x_0).
    t: int [B].
    prediction, variance, clip_x0: as in `p_mean_variance`.
  Returns:
    float32 [B].
  """
  x0 = _checks.floating(x0, "x0")
  x_t = _checks.floating(x_t, "x_t")
  _checks.same_shape(x_t, x0, "x_t", "x0")
  t = _checks.timesteps(t, x_t.shape[0], like="x_t")
  dtype = jnp.promote_types(x_t.dtype, jnp.float32)
  x0, x_t = x0.astype(dtype), x_t.astype(dtype)
  true_mean, _, true_log_var = q_posterior(schedule, x0, x_t, t)
  mean, _, log_var, _ = p_mean_variance(
      schedule, model_output, x_t, t, prediction=prediction,
      variance=variance, clip_x0=clip_x0)
  kl = _mean_bits(normal_kl(true_mean, true_log_var, mean, log_var))
  nll = -_mean_bits(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var))
  return jnp.where(t == 0, nll, kl).astype(jnp.float32)


def prior_bpd(schedule: Schedule, x0: jax.Array) -> jax.Array:
  """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, float32 [B]; x0 [B, ..., C]."""
  x0 = _checks.floating(x0, "x0")
  x0 = x0.astype(jnp.promote_types(x0.dtype, jnp.float32))
  t = jnp.full((x0.shape[0],), schedule.num_steps - 1, jnp.int32)
  mean, _, log_var = q_mean_variance(schedule, x0, t)
  return _mean_bits(normal_kl(mean, log_var, 0.0, 0.0)).astype(jnp.float32)


class BitsPerDim(NamedTuple):
  """The terms of the bound for a batch, float32, in bits/dim."""
  total: jax.Array  # [B]: prior + terms.sum(1), the negative ELBO
  prior: jax.Array  # [B]: L_T
  terms: jax.Array  # [B, T]: terms[:, t] is L_0 for t = 0, else L_t


def bits_per_dim(denoise_fn: Callable[[jax.Array, jax.Array], jax.Array],
                 schedule: Schedule, x0: jax.Array, key: jax.Array, *,
                 prediction: str = "eps", variance: str = "fixed_small",
                 clip_x0: bool = True, chunk_size: int = 1) -> BitsPerDim:
  """The full variational bound of eq. (5): all T terms plus the prior.

  Each term draws x_t ~ q(x_t | x_0) with the key `fold_in(key, t)`, so the
  result does not depend on `chunk_size`. The T terms are computed in a
  `lax.map` over chunks of `chunk_size` timesteps, each chunk one call of
  `denoise_fn` on chunk_size·B examples: memory grows with chunk_size, never
  with T. Call it under `jax.jit`, with the network's parameters as
  arguments of the jitted function, to compile it once.

  Args:
    denoise_fn: (x_t [N, ..., C], t int [N]) -> model output, as the
      `model_output` of `p_mean_variance`.
    schedule: the forward process.
    x0: [B, ..., C] data on the 8-bit grid in [-1, 1].
    key: PRNG key for the noise.
    prediction, variance, clip_x0: as in `p_mean_variance`.
    chunk_size: timesteps per model call.
  Returns:
    `BitsPerDim` with total and prior [B] and terms [B, T].
  """
  x0 = _checks.floating(x0, "x0")
  if (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
      or chunk_size < 1):
    raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
  num_steps, batch = schedule.num_steps, x0.shape[0]
  chunk_size = min(chunk_size, num_steps)
  num_chunks = -(-num_steps // chunk_size)
  steps = jnp.arange(num_chunks * chunk_size).reshape(num_chunks, chunk_size)

  def chunk_terms(ts):  # ts: int [K]; steps past the end repeat the last one
    ts = jnp.minimum(ts, num_steps - 1)
    noise = jax.vmap(
        lambda s: jax.random.normal(jax.random.fold_in(key, s), x0.shape))(ts)
    flat = lambda a: a.reshape((-1,) + a.shape[2:])
    x0_k = flat(jnp.broadcast_to(x0, noise.shape).astype(noise.dtype))
    t_k = jnp.repeat(ts, batch)
    x_t = q_sample(schedule, x0_k, t_k, flat(noise))
    out = denoise_fn(x_t, t_k)
    terms = vlb_term(schedule, out, x0_k, x_t, t_k, prediction=prediction,
                     variance=variance, clip_x0=clip_x0)
    return terms.reshape(chunk_size, batch)

  terms = jax.lax.map(chunk_terms, steps).reshape(-1, batch)[:num_steps].T
  prior = prior_bpd(schedule, x0)
  return BitsPerDim(total=prior + terms.sum(axis=1), prior=prior, terms=terms)
