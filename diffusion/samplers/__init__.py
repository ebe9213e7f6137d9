"""Reverse chains over a chosen list of timesteps, behind one protocol (`base.Sampler`) and one
loop (`base.run`): ancestral DDPM, DDIM, DPM-Solver++(2M), EDM's Heun and stochastic samplers,
and the consistency models' multistep chain; and for the methods trained on continuous noise
levels (flow matching, EDM), Euler and Heun on their ODE (`continuous.py`). Each is registered
by name (`names()`, `get`, `make`; the continuous ones apart, `continuous=True`); a new sampler
is a `Sampler` subclass in a file of its own, decorated `@register`.

The chains also keep their functional forms, pure and traceable:

  x0 = ddim(network, schedule, steps, x, keys, eta=..., prediction=..., ...)

- `network(x_t [N, ..., C], t int [N])` is the network (any guidance already
  folded in); `t` is always the original (unspaced) timestep.
- `steps` is a decreasing NumPy array of timesteps to visit, from the step
  of `x` down; `spaced_steps` makes them (uniform, quadratic, log-SNR, EDM's σ).
- `keys` [N] holds one key per sample; the noise of visit i of sample n is
  drawn from fold_in(keys[n], i), so samples do not depend on batching.
"""

from diffusion.samplers.base import (
    CONTINUOUS, REGISTRY, Chain, NetworkFn, Sampler, get, make, names, per_sample, register, run)
from diffusion.samplers.guidance import autoguidance, classifier_free_guidance, interval
from diffusion.samplers.ddpm import Ancestral, ancestral
from diffusion.samplers.ddim import DDIM, ddim
from diffusion.samplers.dpm_solver import DPMSolverPP2M, dpm_solver_pp_2m
from diffusion.samplers.edm import EDMSDE, Heun, churned_steps, edm_sde, heun
from diffusion.samplers.consistency import Consistency
from diffusion.samplers import continuous  # Euler and Heun over continuous noise levels
from diffusion.spacing import SPACINGS, check_chain, check_steps, spaced_steps

__all__ = ["CONTINUOUS", "REGISTRY", "SPACINGS", "Ancestral", "Chain", "Consistency", "DDIM",
           "DPMSolverPP2M", "EDMSDE", "Heun", "NetworkFn", "Sampler", "ancestral", "autoguidance",
           "check_chain",
           "check_steps", "churned_steps", "classifier_free_guidance", "continuous", "ddim",
           "dpm_solver_pp_2m", "edm_sde", "get", "heun", "interval", "make", "names", "per_sample",
           "register",
           "run", "spaced_steps"]
