"""Chains over continuous noise levels (flow matching's t, EDM's σ): Euler and Heun on the
run's probability-flow ODE dx/dτ = f(x, τ), `method.field(network)`, not rounded to any
discrete model's levels. x_T is N(0, I) scaled by `method.prior_scale(τ_max)`; the levels
(`Method.sampling_steps`) decrease to the data, 0."""

import jax.numpy as jnp
import numpy as np

from diffusion.samplers.base import Sampler, register


def _levels(x, tau):
  return jnp.full((x.shape[0],), tau, jnp.float32)


class _ODE(Sampler):
  continuous = True
  stochastic = False
  default_spacing = ""  # the method's own grid

  def initialize(self, chain, x):
    return (x * chain.method.prior_scale(float(chain.steps[0]))).astype(x.dtype)

  def _euler(self, chain, x, tau, tau_next):
    f = chain.method.field(chain.network)
    return (x + (tau_next - tau) * f(x, _levels(x, tau))).astype(x.dtype)


@register
class Euler(_ODE):
  """x_{i+1} = x_i + (τ_{i+1} − τ_i) f(x_i, τ_i): one evaluation a step."""
  name = "euler"
  default_steps = 50

  def visits(self, diffusion, steps):
    return np.asarray(steps[:-1], np.float32), np.asarray(steps[1:], np.float32)

  def update(self, chain, x, visit):
    return self._euler(chain, x, *visit)


@register
class Heun(_ODE):
  """Heun's second-order method, the last step (into the data) a plain Euler step, as EDM's
  Algorithm 1: N steps cost 2N − 1 evaluations (18 steps: EDM's 35)."""
  name = "heun"
  default_steps = 18

  def evaluations(self, steps):
    return 2 * steps - 1

  def visits(self, diffusion, steps):
    return np.asarray(steps[:-2], np.float32), np.asarray(steps[1:-1], np.float32)

  def update(self, chain, x, visit):
    tau, tau_next = visit
    f = chain.method.field(chain.network)
    slope = f(x, _levels(x, tau))
    euler = x + (tau_next - tau) * slope
    return (x + (tau_next - tau) * 0.5 * (slope + f(euler, _levels(x, tau_next)))).astype(x.dtype)

  def finalize(self, chain, x):
    return self._euler(chain, x, float(chain.steps[-2]), float(chain.steps[-1]))
