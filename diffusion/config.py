"""Experiment configs: Python files whose `get_config()` returns an ml_collections.ConfigDict."""

import importlib.util
import inspect
import os

import ml_collections
import numpy as np

from diffusion.schedules import BETA_SCHEDULES, Schedule


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


def betas_from_config(config: ml_collections.ConfigDict) -> np.ndarray:
  """float64 betas [T] of a config's `diffusion` section."""
  d = config.diffusion
  if d.schedule not in BETA_SCHEDULES:
    raise ValueError(f"config.diffusion.schedule must be one of {sorted(BETA_SCHEDULES)}; "
                     f"got {d.schedule!r}")
  fn = BETA_SCHEDULES[d.schedule]
  # The config's settings that this schedule takes (beta_start/beta_end are the linear family's,
  # s/max_beta the cosine's); the others stay in the config for the other schedules.
  accepted = inspect.signature(fn).parameters
  kwargs = {k: d[k] for k in ("beta_start", "beta_end", "s", "max_beta") if k in d and k in accepted}
  return fn(d.num_steps, **kwargs)


def schedule_from_config(config: ml_collections.ConfigDict) -> Schedule:
  """The `Schedule` of a config's `diffusion` section."""
  return Schedule.from_betas(betas_from_config(config))
