"""Experiment configs: Python files whose `get_config()` returns an ml_collections.ConfigDict."""

import importlib.util
import os

import ml_collections


def load_config(path: str) -> ml_collections.ConfigDict:
  """Runs the config file at `path` and returns its `get_config()`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  name = "ddpm_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path} defines no get_config()")
  return module.get_config()
