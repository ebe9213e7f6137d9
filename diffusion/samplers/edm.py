"""EDM's samplers (Karras et al. 2022, Algorithms 1 and 2) over a trained discrete-time DDPM.

The chain runs in EDM's units, x = x_t / sqrt(ᾱ_t) = x_0 + σ_t n, through the
model's own σ_t (`diffusion.edm`: a discrete-time model knows only those), and
ends at σ = 0 (the data) with one Euler step.
"""

import jax.numpy as jnp
import numpy as np

from diffusion import edm, spacing
from diffusion.edm import CHURN, S_NOISE, S_TMAX, S_TMIN
from diffusion.process import Diffusion
from diffusion.samplers.base import Sampler, register, run
from diffusion.schedules import Schedule


def _denoiser(chain):
  d = chain.diffusion
  return edm.denoiser(chain.network, chain.schedule, prediction=d.prediction, clip_x0=d.clip_x0)


@register
class Heun(Sampler):
  """EDM's deterministic sampler: Heun's 2nd-order method on the probability-flow ODE
  dx/dσ = (x - D(x; σ)) / σ through σ_{steps[0]} > ... > σ_{steps[-1]} and then one Euler step
  to σ = 0. N steps cost 2N - 1 network evaluations (one step is a single Euler step:
  x_0 = D(x; σ_max)). 18 steps: EDM's 35 evaluations for CIFAR-10."""
  name = "heun"
  default_steps = 18
  default_spacing = "karras"
  stochastic = False

  trip_evaluations = 2

  def evaluations(self, steps):
    return 2 * steps - 1

  def visits(self, diffusion, steps):
    table = edm.sigmas(diffusion.schedule)
    return steps[:-1], steps[1:], table[steps[:-1]], table[steps[1:]]

  def initialize(self, chain, x):
    return edm.to_edm(chain.schedule, x, chain.steps[0])

  def update(self, chain, x, visit):
    t, t_next, sigma, sigma_next = visit
    full = lambda v: jnp.full((x.shape[0],), v)
    return edm.heun_step(_denoiser(chain), x, full(t), full(t_next), sigma.astype(x.dtype),
                         sigma_next.astype(x.dtype)).astype(x.dtype)

  def finalize(self, chain, x):  # the last step: Euler to σ = 0
    return _denoiser(chain)(x, jnp.full((x.shape[0],), chain.steps[-1])).astype(x.dtype)


def churned_steps(schedule: Schedule, steps: np.ndarray, churn: float = CHURN,
                  s_tmin: float = S_TMIN, s_tmax: float = S_TMAX) -> np.ndarray:
  """The timestep t̂_i of σ̂_i = σ_i (1 + γ_i) for each visited step, γ_i = min(S_churn / N,
  sqrt(2) - 1) where S_tmin <= σ_i <= S_tmax, else 0 (EDM's Algorithm 2), rounded to the
  nearest of the model's σ_t at or above σ_i: int [len(steps)], t̂_i >= steps[i]."""
  steps, table = spacing.check_chain(schedule, steps), edm.sigmas(schedule)
  gamma = min(churn / len(steps), np.sqrt(2.0) - 1.0)
  out = steps.copy()
  for i, t in enumerate(steps):
    sigma = table[t]
    if churn > 0 and s_tmin <= sigma <= s_tmax:
      out[i] = edm.nearest_steps(schedule, sigma * (1 + gamma), low=t)
  return out


class Churned(Sampler):
  """What EDM's stochastic samplers share (on a DDPM's σ_t and on continuous levels): the
  options S_churn, S_tmin, S_tmax, S_noise (defaults: EDM's for VP models, its Table 5) and
  Heun's 2N − 1 evaluations, two in each scanned step."""
  name = ""
  default_steps = 40
  trip_evaluations = 2

  def __init__(self, churn: float = CHURN, s_tmin: float = S_TMIN, s_tmax: float = S_TMAX,
               s_noise: float = S_NOISE):
    if isinstance(churn, bool) or not isinstance(churn, (int, float, np.floating)) \
        or not churn >= 0:
      raise ValueError(f"`churn` is S_churn >= 0 of the edm-sde sampler; got {churn!r}")
    self.churn, self.s_tmin, self.s_tmax, self.s_noise = churn, s_tmin, s_tmax, s_noise

  def evaluations(self, steps):
    return 2 * steps - 1


@register
class EDMSDE(Churned):
  """EDM's stochastic sampler: before each Heun step from σ_i, raise the noise to σ̂_i =
  σ_{t̂_i} (`churned_steps`) by adding N(0, (σ̂² - σ²) S_noise² I), then step from σ̂_i to
  σ_{i+1}; the last step is Euler to σ = 0 (2N - 1 evaluations). Defaults: EDM's settings for
  VP models (Table 5)."""
  name = "edm-sde"
  default_spacing = "karras"

  def _tables(self, schedule, steps):
    """(t̂ [S], the spread of each visit's added noise [S]) on the host in float64: exactly 0
    where σ̂ = σ (γ = 0). In float32 under jit, σ̂² - σ² keeps a rounding residue that the
    square root turns into noise of ~1e-4 σ at every step Algorithm 2 adds none."""
    table = edm.sigmas(schedule)
    hats = churned_steps(schedule, steps, self.churn, self.s_tmin, self.s_tmax)
    spreads = np.sqrt(np.maximum(table[hats] ** 2 - table[steps] ** 2, 0.0)) * self.s_noise
    return hats, spreads

  def visits(self, diffusion, steps):
    table = edm.sigmas(diffusion.schedule)
    hats, spreads = self._tables(diffusion.schedule, steps)
    return (np.arange(len(steps) - 1), hats[:-1], steps[1:], spreads[:-1], table[hats[:-1]],
            table[steps[1:]])

  def initialize(self, chain, x):
    return edm.to_edm(chain.schedule, x, chain.steps[0])

  def _churn(self, chain, x, i, spread):
    return x + spread.astype(x.dtype) * edm.visit_noise(chain.keys, i, x.shape[1:]).astype(x.dtype)

  def update(self, chain, x, visit):
    i, t_hat, t_next, spread, sigma_hat, sigma_next = visit
    full = lambda v: jnp.full((x.shape[0],), v)
    x = self._churn(chain, x, i, spread)
    return edm.heun_step(_denoiser(chain), x, full(t_hat), full(t_next),
                         sigma_hat.astype(x.dtype), sigma_next.astype(x.dtype)).astype(x.dtype)

  def finalize(self, chain, x):
    hats, spreads = self._tables(chain.schedule, chain.steps)
    last = len(chain.steps) - 1
    x = self._churn(chain, x, last, jnp.asarray(spreads[last]))
    return _denoiser(chain)(x, jnp.full((x.shape[0],), hats[-1])).astype(x.dtype)


def heun(network, schedule: Schedule, steps: np.ndarray, x, keys=None, *,
         prediction: str = "eps", clip_x0: bool = False):
  """EDM's Heun sampler (`Heun`) from x_t at steps[0] to x_0; `keys` is unused."""
  del keys
  return run(Heun(), network, Diffusion.from_schedule(schedule, prediction=prediction,
                                                      clip_x0=clip_x0), steps, x)


def edm_sde(network, schedule: Schedule, steps: np.ndarray, x, keys, *, prediction: str = "eps",
            clip_x0: bool = False, churn: float = CHURN, s_tmin: float = S_TMIN,
            s_tmax: float = S_TMAX, s_noise: float = S_NOISE):
  """EDM's stochastic sampler (`EDMSDE`) from x_t at steps[0] to x_0."""
  return run(EDMSDE(churn, s_tmin, s_tmax, s_noise), network,
             Diffusion.from_schedule(schedule, prediction=prediction, clip_x0=clip_x0),
             steps, x, keys)
