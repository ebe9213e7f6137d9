"""Ancestral sampling (DDPM's Algorithm 2), respaced as in improved DDPM (Sec. 4)."""

import jax.numpy as jnp
import numpy as np

from diffusion.process import Diffusion
from diffusion.reverse import p_sample
from diffusion.samplers.base import Sampler, per_sample, register, run
from diffusion.schedules import Schedule, respace_betas


@register
class Ancestral(Sampler):
  """x_{t'} ~ p(x_{t'} | x_t) over the visited steps. With S < T visited steps the chain runs
  on the respaced schedule whose ᾱ are those of the visited steps (`respace_betas`); a
  learned variance then interpolates between that schedule's β and β̃, as in improved DDPM.
  Every step but the last adds noise."""
  name = "ddpm"
  default_steps = None

  def visits(self, diffusion, steps):
    kept = np.sort(steps)
    return np.arange(len(kept)), kept[::-1], np.arange(len(kept))[::-1]

  def update(self, chain, x, visit):
    i, t, j = visit  # visit i, at timestep t: the respaced chain's step j
    respaced = Schedule.from_betas(respace_betas(chain.diffusion.betas, np.sort(chain.steps)))
    d = chain.diffusion
    out = chain.network(x, jnp.full((x.shape[0],), t))
    step = lambda o, xi, k: p_sample(respaced, o, xi, jnp.full((1,), j), k,
                                     prediction=d.prediction, variance=d.variance,
                                     clip_x0=d.clip_x0)[0]
    return per_sample(step, out, x, chain.keys, i)


def ancestral(network, betas: np.ndarray, steps: np.ndarray, x, keys, *, prediction: str = "eps",
              variance: str = "fixed_small", clip_x0: bool = True):
  """Ancestral sampling over `steps` (decreasing; x is at steps[0]) of the schedule of float64
  `betas` [T] (`Ancestral`). Returns x_0 [N, ...]."""
  if isinstance(betas, Schedule):
    raise TypeError("ancestral takes the schedule's float64 betas [T] (it respaces them), not "
                    "a Schedule: samplers.ancestral(network, betas, steps, x, keys)")
  return run(Ancestral(), network, Diffusion(betas, prediction, variance, clip_x0), steps, x, keys)
