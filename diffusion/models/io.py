"""A trained or converted network on disk: its config as JSON, its parameters with Orbax.

Layout of a model folder: `model.json` (the UNet's attributes) and `params/`
(an Orbax checkpoint of the parameter pytree, float32).
"""

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from diffusion import paths
from diffusion.models.config import from_config, model_kwargs
from diffusion.models.denoiser import Denoiser
from diffusion.models.unet import UNet


def save(path: str | os.PathLike, model, params: Any) -> None:
  """Writes `model` (the DDPM UNet, or the Denoiser `load_run` gives for one) and `params` to
  the folder `path` (a local path or an object-store URI; created; must not hold a model).
  Everything is checked before anything is written."""
  unet = model.module if isinstance(model, Denoiser) else model
  if not isinstance(unet, UNet):
    raise TypeError(f"models.save keeps the DDPM UNet (model.json holds its attributes); got "
                    f"{type(unet).__name__}: keep another network's parameters in its run's "
                    "checkpoints (load_run(workdir, model=...))")
  description = json.dumps(model_kwargs(unet), indent=2).encode()
  folder = paths.resolve(path, "model folder")
  if (folder / "model.json").exists():
    raise FileExistsError(f"{os.fspath(folder)} already holds a model (model.json); choose "
                          "another folder")
  if (folder / "params").exists():
    raise FileExistsError(f"{os.fspath(folder)} holds params/ without model.json (a save that "
                          "did not finish?); remove it or choose another folder")
  folder.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(folder / "params", params)
  # model.json last: its presence marks a complete folder.
  paths.write_bytes(folder / "model.json", description)


def load(path: str | os.PathLike):
  """Reads a folder written by `save`: returns (model, params)."""
  folder = paths.resolve(path, "model folder")
  if not (folder / "model.json").exists():
    raise FileNotFoundError(f"{os.fspath(folder)} is not a model folder: it has no model.json")
  model = from_config(json.loads((folder / "model.json").read_text()))
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(folder / "params")
  return model, jax.tree.map(jax.numpy.asarray, params)
