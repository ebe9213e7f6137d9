"""Chains over continuous noise levels (flow matching's t, EDM's σ), not rounded to any
discrete model's levels: Euler and Heun on the run's probability-flow ODE dx/dτ = f(x, τ)
(`method.field(network)`); DDIM and DPM-Solver++(2M), written in λ = log(α/σ) on the data
prediction (`method.denoiser`), and EDM's stochastic sampler, all through the method's
Gaussian path x_τ = α_τ x_0 + σ_τ ε (`method.path`). x_T is N(0, I) scaled by
`method.prior_scale(τ_max)`; the levels (`Method.sampling_steps`) decrease to the data, 0.

Every Gaussian path is one process up to scale (x_τ / α_τ = x_0 + (σ_τ/α_τ) ε), so the solvers
of a VP model apply unchanged where they are written in (α, σ): on flow matching's straight
path (α = 1 − t, σ = t) and EDM's (α = 1, σ). On both, DDIM's step is exactly the Euler step
of the ODE (a test checks it); DPM-Solver++(2M) is a second-order multistep method at one
evaluation a step. DDPM's ancestral sampler is not among them: its noise follows the discrete
chain's β_t.
"""

import jax.numpy as jnp
import numpy as np

from diffusion.edm import visit_noise
from diffusion.samplers.base import Sampler, register
from diffusion.samplers.edm import Churned


def _levels(x, tau):
  return jnp.full((x.shape[0],), tau, jnp.float32)


def _prior(chain, x):
  """x_T: the N(0, I) draw x scaled to the method's prior at the chain's first level."""
  return (x * chain.method.prior_scale(float(chain.steps[0]))).astype(x.dtype)


def _euler(chain, x, tau, tau_next):
  """x + (τ' − τ) f(x, τ): one evaluation of the method's field."""
  f = chain.method.field(chain.network)
  return (x + (tau_next - tau) * f(x, _levels(x, tau))).astype(x.dtype)


def _heun(chain, x, tau, tau_next):
  """Heun's step from τ to τ': two evaluations of the method's field."""
  f = chain.method.field(chain.network)
  slope = f(x, _levels(x, tau))
  euler = x + (tau_next - tau) * slope
  return (x + (tau_next - tau) * 0.5 * (slope + f(euler, _levels(x, tau_next)))).astype(x.dtype)


class _ODE(Sampler):
  continuous = True
  stochastic = False
  default_spacing = ""  # the method's own grid

  def initialize(self, chain, x):
    return _prior(chain, x)


@register
class Euler(_ODE):
  """x_{i+1} = x_i + (τ_{i+1} − τ_i) f(x_i, τ_i): one evaluation a step."""
  name = "euler"
  default_steps = 50

  def visits(self, method, steps):
    return np.asarray(steps[:-1], np.float32), np.asarray(steps[1:], np.float32)

  def update(self, chain, x, visit):
    return _euler(chain, x, *visit)


@register
class Heun(_ODE):
  """Heun's second-order method, the last step (into the data) a plain Euler step, as EDM's
  Algorithm 1: N steps cost 2N − 1 evaluations (18 steps: EDM's 35)."""
  name = "heun"
  default_steps = 18

  trip_evaluations = 2

  def evaluations(self, steps):
    return 2 * steps - 1

  def visits(self, method, steps):
    return np.asarray(steps[:-2], np.float32), np.asarray(steps[1:-1], np.float32)

  def update(self, chain, x, visit):
    return _heun(chain, x, *visit)

  def finalize(self, chain, x):
    return _euler(chain, x, float(chain.steps[-2]), float(chain.steps[-1]))


def _path(method, steps):
  """(α, σ, λ = log(α/σ)) of each level, float64 on the host (λ = ±inf where α or σ is 0)."""
  alpha, sigma = np.asarray([method.path(t) for t in steps], np.float64).T
  with np.errstate(divide="ignore"):
    return alpha, sigma, np.log(alpha) - np.log(sigma)


def solver_coefficients(method, steps, second_order: bool) -> tuple[np.ndarray, ...]:
  """The data-prediction solver in λ (Lu et al. 2022) over `steps` (τ_0 > ... > τ_N = 0) as
  host tables, float32 [N] each: step i is x_{i+1} = a_i x_i + b_i D_i with

    a_i = σ_{i+1} / σ_i,  b_i = α_{i+1} (1 − e^{−h_i}),  h_i = λ_{i+1} − λ_i,
    D_i = (1 + w_i) x̂_0(x_i, τ_i) − w_i x̂_0(x_{i−1}, τ_{i−1}),  w_i = h_i / (2 h_{i−1}),

  w_i = 0 (first order: DDIM) at the first step, into σ = 0 (where x_{i+1} = α x̂_0), after a
  step of infinite h (from flow matching's t = 1, α = 0), and without `second_order`."""
  alpha, sigma, lam = _path(method, steps)
  h = lam[1:] - lam[:-1]
  with np.errstate(divide="ignore", invalid="ignore"):
    a = np.where(sigma[1:] > 0, sigma[1:] / np.where(sigma[:-1] > 0, sigma[:-1], 1.0), 0.0)
    w = np.zeros_like(h)
    if second_order:
      w[1:] = np.where(np.isfinite(h[:-1]) & np.isfinite(h[1:]), h[1:] / (2 * h[:-1]), 0.0)
  b = alpha[1:] * -np.expm1(-h)
  return a.astype(np.float32), b.astype(np.float32), w.astype(np.float32)


class _Lambda(Sampler):
  continuous = True
  stochastic = False
  default_spacing = ""
  second_order = False

  def initialize(self, chain, x):
    x = _prior(chain, x)
    return x, jnp.zeros_like(x)

  def visits(self, method, steps):
    return (np.asarray(steps[:-1], np.float32),
            *solver_coefficients(method, steps, self.second_order))

  def update(self, chain, carry, visit):
    x, prev = carry
    tau, a, b, w = visit
    x0 = chain.method.denoiser(chain.network)(x, _levels(x, tau)).astype(x.dtype)
    x_next = a * x + b * ((1 + w) * x0 - w * prev)
    return x_next.astype(x.dtype), x0

  def finalize(self, chain, carry):
    return carry[0]


@register
class DDIM(_Lambda):
  """DDIM (Song et al. 2021; DPM-Solver-1): x_{i+1} = (σ_{i+1}/σ_i) x_i + α_{i+1} (1 − e^{−h})
  x̂_0(x_i, τ_i), one evaluation a step; on flow matching's and EDM's paths, the Euler step."""
  name = "ddim"
  default_steps = 50


@register
class DPMSolverPP2M(_Lambda):
  """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) on the method's path: one evaluation a
  step, second order from the second step on (`solver_coefficients`); on an EDM run over a
  grid uniform in log σ by default (its authors' choice), on flow matching's own grid."""
  name = "dpm++"
  default_steps = 20
  default_spacing = "logsnr"
  second_order = True


@register
class EDMSDE(Churned):
  """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) on the method's path, in EDM's
  σ = σ_τ/α_τ: before the step from τ_i, raise σ_i to σ̂_i = σ_i (1 + γ), γ = min(S_churn / N,
  sqrt(2) − 1) where S_tmin ≤ σ_i ≤ S_tmax (else 0), by x̂ = (α̂/α) x + α̂ sqrt(σ̂² − σ_i²)
  S_noise n, then a Heun step from τ̂_i (`method.level_of(σ̂_i)`) to τ_{i+1}, the last one Euler
  (2N − 1 evaluations). S_churn = 0 is `heun`. Defaults: EDM's settings of its Table 5."""
  name = "edm-sde"
  continuous = True
  default_spacing = ""

  def churn_table(self, method, steps) -> tuple[np.ndarray, ...]:
    """(τ̂ [N], the scale α̂/α [N], the spread α̂ sqrt(σ̂² − σ²) S_noise [N]) of each step from
    τ_i, float64 on the host: exactly τ_i, 1 and 0 where γ = 0."""
    alpha, sigma, _ = _path(method, steps[:-1])
    gamma = min(self.churn / (len(steps) - 1), np.sqrt(2.0) - 1.0)
    hats = np.array(steps[:-1], np.float64)
    scales, spreads = np.ones(len(hats)), np.zeros(len(hats))
    for i in range(len(hats)):
      ratio = sigma[i] / alpha[i] if alpha[i] > 0 else np.inf
      if self.churn > 0 and np.isfinite(ratio) and self.s_tmin <= ratio <= self.s_tmax:
        ratio_hat = ratio * (1 + gamma)
        hats[i] = method.level_of(ratio_hat)
        alpha_hat = method.path(hats[i])[0]
        scales[i] = alpha_hat / alpha[i]
        spreads[i] = alpha_hat * np.sqrt(ratio_hat ** 2 - ratio ** 2) * self.s_noise
    return hats, scales, spreads

  def visits(self, method, steps):
    hats, scales, spreads = self.churn_table(method, steps)
    return (np.arange(len(steps) - 2), hats[:-1].astype(np.float32),
            np.asarray(steps[1:-1], np.float32), scales[:-1].astype(np.float32),
            spreads[:-1].astype(np.float32))

  def initialize(self, chain, x):
    return _prior(chain, x)

  def _churn(self, chain, x, i, scale, spread):
    noise = chain.diffusion.spec.project(visit_noise(chain.keys, i, x.shape[1:]))
    return (scale * x + spread * noise).astype(x.dtype)

  def update(self, chain, x, visit):
    i, tau_hat, tau_next, scale, spread = visit
    return _heun(chain, self._churn(chain, x, i, scale, spread), tau_hat, tau_next)

  def finalize(self, chain, x):
    hats, scales, spreads = self.churn_table(chain.method, chain.steps)
    last = len(chain.steps) - 2
    x = self._churn(chain, x, last, float(scales[last]), float(spreads[last]))
    return _euler(chain, x, float(hats[last]), float(chain.steps[-1]))
