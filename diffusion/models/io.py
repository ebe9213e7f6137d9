"""A trained or converted network on disk: its config as JSON, its parameters with Orbax.

Layout of a model folder: `model.json` (the UNet's attributes) and `params/`
(an Orbax checkpoint of the parameter pytree, float32).
"""

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from diffusion.models.config import from_config, model_kwargs


def save(path: str, model, params: Any) -> None:
  """Writes `model` and `params` to the folder `path` (created; must not hold a model)."""
  path = os.path.abspath(path)
  if os.path.exists(os.path.join(path, "model.json")):
    raise FileExistsError(f"{path} already holds a model (model.json); choose another folder")
  os.makedirs(path, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(path, "params"), params)
  # model.json last: its presence marks a complete folder.
  with open(os.path.join(path, "model.json.tmp"), "w") as f:
    json.dump(model_kwargs(model), f, indent=2)
  os.replace(os.path.join(path, "model.json.tmp"), os.path.join(path, "model.json"))


def load(path: str):
  """Reads a folder written by `save`: returns (model, params)."""
  path = os.path.abspath(path)
  config_file = os.path.join(path, "model.json")
  if not os.path.isfile(config_file):
    raise FileNotFoundError(f"{path} is not a model folder: it has no model.json")
  with open(config_file) as f:
    model = from_config(json.load(f))
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(os.path.join(path, "params"))
  return model, jax.tree.map(jax.numpy.asarray, params)
