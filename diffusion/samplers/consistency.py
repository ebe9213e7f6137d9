"""Multistep consistency sampling (Song et al. 2023, Algorithm 1), for consistency models."""

import jax.numpy as jnp
import numpy as np

from diffusion import consistency, edm
from diffusion.process import Diffusion
from diffusion.samplers.base import Sampler, register, run
from diffusion.schedules import Schedule


@register
class Consistency(Sampler):
  """x̂ = f(x_T, t_1st), then for each later step t: x = x̂ + sqrt(σ_t² - σ_min²) z, x̂ = f(x, t).
  One network evaluation per step. f is `consistency.consistency_fn` of the network with the
  data's std `sigma_data` (the model's own: its method gives it)."""
  name = "consistency"
  default_steps = 1
  default_spacing = "karras"
  own_only = True
  needs = "a consistency model (config.distill.method consistency or consistency_training)"

  def __init__(self, sigma_data: float = 0.5):
    if not (isinstance(sigma_data, (int, float, np.floating)) and sigma_data > 0):
      raise ValueError(f"`sigma_data` must be > 0; got {sigma_data!r}")
    self.sigma_data = sigma_data

  def _f(self, chain):
    return consistency.consistency_fn(chain.network, chain.schedule, self.sigma_data)

  def _clip(self, chain, v):
    return jnp.clip(v, -1, 1) if chain.diffusion.clip_x0 else v

  def visits(self, diffusion, steps):
    table = edm.sigmas(diffusion.schedule)
    return np.arange(1, len(steps)), steps[1:], np.sqrt(table[steps[1:]] ** 2 - table[0] ** 2)

  def initialize(self, chain, x):
    x0 = self._f(chain)(edm.to_edm(chain.schedule, x, int(chain.steps[0])),
                        jnp.full((x.shape[0],), chain.steps[0]))
    return self._clip(chain, x0)

  def update(self, chain, x0, visit):
    i, t, spread = visit
    noise = edm.visit_noise(chain.keys, i, x0.shape[1:])
    return self._clip(chain, self._f(chain)(x0 + spread.astype(x0.dtype) * noise.astype(x0.dtype),
                                            jnp.full((x0.shape[0],), t)))


class _OfFunction(Consistency):
  """The chain of a given consistency function f(x, t) (EDM's units) instead of a network's."""

  def _f(self, chain):
    return chain.network


def sample(f, schedule: Schedule, steps: np.ndarray, x, keys, *, clip_x0: bool = True):
  """Multistep consistency sampling (`Consistency`) with the consistency function
  f(x [N, ..., C] in EDM's units, t int [N]) (`consistency.consistency_fn`), from x_t at
  steps[0] (decreasing timesteps, > 0 after the first) in the DDPM's units. The noise of visit
  i of sample n comes from fold_in(keys[n], i)."""
  return run(_OfFunction(), f, Diffusion.from_schedule(schedule, clip_x0=clip_x0), steps, x, keys)
