"""Training methods behind one protocol (`base.Method`): DDPM's (L_simple, L_vlb, L_hybrid,
min-SNR-γ), progressive distillation, consistency distillation and consistency training, and on
continuous noise levels flow matching and EDM's training. Each is registered
by name; `config.method` (or, in the few-step configs, `config.distill.method`) picks one, and
`from_config` builds it once. A new method is a `Method` subclass in a file of its own,
decorated `@register`."""

from diffusion.methods.base import (
    REGISTRY, Method, Nets, Step, get, name_of, register)
from diffusion.methods.ddpm import DDPM, HISTORY, record_losses, timestep_probs
from diffusion.methods.progressive import Progressive
from diffusion.methods.consistency import ConsistencyDistillation, ConsistencyTraining
from diffusion.methods.flow import FlowMatching
from diffusion.methods.edm import EDM


def from_config(config, diffusion) -> Method:
  """The Method a config names (`name_of`), built from its settings and the run's Diffusion."""
  return get(name_of(config)).from_config(config, diffusion)


__all__ = ["DDPM", "EDM", "FlowMatching", "HISTORY", "REGISTRY", "ConsistencyDistillation",
           "ConsistencyTraining", "Method", "Nets", "Progressive", "Step", "from_config", "get",
           "name_of", "record_losses", "register", "timestep_probs"]
