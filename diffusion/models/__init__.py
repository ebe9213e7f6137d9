"""Networks for ε_θ and how the engine calls them.

`build(config.model, shape)` returns a `Denoiser` (the protocol every part of
the engine calls a network through) from the registry: "unet" (the DDPM
U-Net, 1-D to 3-D), "dit" (a Diffusion Transformer), "egnn" (an
E(n)-equivariant network for point sets), a name a user registered, or an
import path "package.module:factory".
"""

from diffusion.models.config import from_config, model_kwargs
from diffusion.models.denoiser import Denoiser, as_denoiser, function, linen, nnx, variables_of
from diffusion.models.io import load, save
from diffusion.models.registry import build, register, registered
from diffusion.models.unet import UNet, timestep_embedding

__all__ = ["Denoiser", "UNet", "as_denoiser", "build", "from_config", "function", "linen",
           "load", "model_kwargs", "nnx", "register", "registered", "save",
           "timestep_embedding", "variables_of"]
