"""Networks for ε_θ, built from the `model` section of an experiment config."""

from diffusion.models.config import from_config, model_kwargs
from diffusion.models.io import load, save
from diffusion.models.unet import UNet, timestep_embedding

__all__ = ["UNet", "from_config", "load", "model_kwargs", "save", "timestep_embedding"]
