"""DDIM (Song, Meng & Ermon 2020, eq. 12) over the visited steps."""

import jax.numpy as jnp
import numpy as np

from diffusion.process import Diffusion
from diffusion.reverse import ddim_step
from diffusion.samplers.base import Sampler, per_sample, register, run
from diffusion.schedules import Schedule


@register
class DDIM(Sampler):
  """From steps[0] through each visited step to x_0. η = 0 is deterministic; η = 1 over every
  step is ancestral DDPM with β̃."""
  name = "ddim"
  default_steps = 50

  def __init__(self, eta: float = 0.0):
    if isinstance(eta, bool) or not isinstance(eta, (int, float, np.floating)) \
        or not 0.0 <= eta <= 1.0:
      raise ValueError(f"`eta` must be a number in [0, 1]; got {eta!r}")
    self.eta = eta

  def visits(self, diffusion, steps):
    return np.arange(len(steps)), steps, np.append(steps[1:], -1)

  def update(self, chain, x, visit):
    i, t, t_prev = visit
    d = chain.diffusion
    out = chain.network(x, jnp.full((x.shape[0],), t))
    step = lambda o, xi, k: ddim_step(chain.schedule, o, xi, jnp.full((1,), t),
                                      jnp.full((1,), t_prev), k, eta=self.eta,
                                      prediction=d.prediction, variance=d.variance,
                                      clip_x0=d.clip_x0)[0]
    return per_sample(step, out, x, chain.keys, i)


def ddim(network, schedule: Schedule, steps: np.ndarray, x, keys, *, eta: float = 0.0,
         prediction: str = "eps", variance: str = "fixed_small", clip_x0: bool = True):
  """DDIM from steps[0] (x's step) through each of `steps` to x_0 (`DDIM`)."""
  return run(DDIM(eta), network, Diffusion.from_schedule(
      schedule, prediction=prediction, variance=variance, clip_x0=clip_x0), steps, x, keys)
