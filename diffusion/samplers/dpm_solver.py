"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2)."""

import jax.numpy as jnp
import numpy as np

from diffusion.parameterization import x0_from_prediction
from diffusion.process import Diffusion
from diffusion.samplers.base import Sampler, register, run
from diffusion.schedules import Schedule, extract


@register
class DPMSolverPP2M(Sampler):
  """A deterministic second-order multistep solver of the diffusion ODE in the data prediction
  x̂_0, in λ = log(α/σ):

    x_{t_i} = (σ_{t_i} / σ_{t_{i-1}}) x_{t_{i-1}} - α_{t_i} (e^{-h_i} - 1) D_i,
    D_i = (1 + 1/(2 r_i)) x̂_0(t_{i-1}) - 1/(2 r_i) x̂_0(t_{i-2}),  r_i = h_{i-1} / h_i,

  first order (D = x̂_0) at the first step; the last step goes to σ = 0, where the update is
  x̂_0 itself. The carry is (x, the last x̂_0, the last h)."""
  name = "dpm++"
  default_steps = 20
  default_spacing = "logsnr"
  stochastic = False

  def visits(self, diffusion, steps):
    return np.arange(len(steps)), steps, np.append(steps[1:], -1)

  def initialize(self, chain, x):
    return x, jnp.zeros_like(x), jnp.ones((x.shape[0],) + (1,) * (x.ndim - 1), jnp.float32)

  def update(self, chain, carry, visit):
    x, prev_x0, prev_h = carry
    i, t, t_next = visit
    schedule, d = chain.schedule, chain.diffusion
    lam = lambda t: 0.5 * (extract(schedule.log_alphas_cumprod, t, x)
                           - extract(schedule.log_one_minus_alphas_cumprod, t, x))
    n = x.shape[0]
    ts = jnp.full((n,), t)
    out = chain.network(x, ts)[..., :x.shape[-1]]
    x0 = x0_from_prediction(schedule, d.prediction, x, ts, out.astype(x.dtype))
    x0 = jnp.clip(x0, -1, 1) if d.clip_x0 else x0
    tn = jnp.full((n,), jnp.maximum(t_next, 0))
    h = lam(tn) - lam(ts)
    r = prev_h / h
    dx = jnp.where(i == 0, x0, (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev_x0)
    sigma_ratio = jnp.exp(0.5 * (extract(schedule.log_one_minus_alphas_cumprod, tn, x)
                                 - extract(schedule.log_one_minus_alphas_cumprod, ts, x)))
    x_next = (sigma_ratio * x - extract(schedule.sqrt_alphas_cumprod, tn, x)
              * jnp.expm1(-h) * dx)
    x_next = jnp.where(t_next < 0, x0, x_next).astype(x.dtype)
    return x_next, x0.astype(x.dtype), h.astype(jnp.float32)

  def finalize(self, chain, carry):
    return carry[0]


def dpm_solver_pp_2m(network, schedule: Schedule, steps: np.ndarray, x, keys=None, *,
                     prediction: str = "eps", variance: str = "fixed_small",
                     clip_x0: bool = True):
  """DPM-Solver++(2M) from steps[0] through each of `steps` to x_0 (`DPMSolverPP2M`); `keys`
  is unused (the solver adds no noise)."""
  del keys
  return run(DPMSolverPP2M(), network, Diffusion.from_schedule(
      schedule, prediction=prediction, variance=variance, clip_x0=clip_x0), steps, x)
