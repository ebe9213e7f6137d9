"""Experiment configs: Python files whose `get_config()` returns an ml_collections.ConfigDict."""

import importlib.util
import inspect
import json
import math
import os
from collections.abc import Callable

import ml_collections
import numpy as np

from diffusion import _checks
from diffusion.dataspec import DataSpec, from_data_config
from diffusion.power_ema import MAX_SIGMA_REL
from diffusion.process import Diffusion
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


def _int(low: int) -> tuple[Callable[[object], bool], str]:
  return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low,
          "a positive int" if low == 1 else f"an int >= {low}")


def _real(low: float, high: float, *, open_low: bool = False, open_high: bool = False
          ) -> tuple[Callable[[object], bool], str]:
  def ok(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      return False
    return (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
  if high == math.inf:
    return ok, f"a number {'>' if open_low else '>='} {low:g}"
  interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
  return ok, f"a number in {interval}"


# The range of every numeric key a config may hold (a missing key is not checked here).
RANGES = {
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool)
             and 0 <= v < _checks.SEED_LIMIT, "an int in [0, 2**63 - 1]"),
    "data.image_size": _int(1),
    "data.channels": _int(1),
    "model.ch": _int(1),
    "model.num_res_blocks": _int(1),
    "model.num_groups": _int(1),
    "model.num_classes": _int(0),
    "model.cond_channels": _int(0),
    "model.dropout": _real(0, 1, open_high=True),
    "diffusion.num_steps": _int(1),
    "diffusion.beta_start": _real(0, 1, open_low=True, open_high=True),
    "diffusion.beta_end": _real(0, 1, open_low=True, open_high=True),
    "diffusion.s": _real(0, math.inf),
    "diffusion.max_beta": _real(0, 1, open_low=True, open_high=True),
    "diffusion.vlb_weight": _real(0, math.inf),
    "diffusion.snr_gamma": _real(0, math.inf),
    "optim.lr": _real(0, math.inf, open_low=True),
    "optim.warmup_steps": _int(0),
    "optim.decay_steps": _int(0),
    "optim.grad_clip": _real(0, math.inf),
    "optim.b1": _real(0, 1, open_high=True),
    "optim.b2": _real(0, 1, open_high=True),
    "optim.eps": _real(0, math.inf, open_low=True),
    "data.num_workers": _int(0),
    "train.num_steps": _int(1),
    "train.batch_size": _int(1),
    "train.steps_per_dispatch": _int(1),
    "train.log_every": _int(1),
    "train.checkpoint_every": _int(1),
    "train.sample_every": _int(1),
    "train.keep_checkpoints": _int(1),
    "train.num_samples": _int(0),
    "train.sample_steps": _int(0),
    "train.ema_decay": _real(0, 1),
    "train.ema_snapshot_every": _int(0),
    "train.label_dropout": _real(0, 1),
}


def _lookup(config, key: str):
  node = config
  for part in key.split("."):
    if part not in node:
      return None
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the range of every numeric key and the schedule's parameters, naming the key.

  Runs before anything compiles; the method's settings are its own to check
  (`Method.from_config`, `Method.check`), and the checks that need the network or
  the data are the training loop's.
  """
  for key, (ok, what) in RANGES.items():
    value = _lookup(config, key)
    if value is not None and not ok(value):
      raise ValueError(f"config.{key} must be {what}; got {value!r}")
  d, train = config.diffusion, config.train
  _checks.choice(d.schedule, BETA_SCHEDULES, "config.diffusion.schedule")
  _checks.choice(d.prediction, _checks.PREDICTIONS, "config.diffusion.prediction")
  _checks.choice(d.variance, _checks.VARIANCES, "config.diffusion.variance")
  if d.get("clip_x0") not in (None, True, False):
    raise ValueError(f"config.diffusion.clip_x0 must be True, False or None (clip for uint8 "
                     f"data only); got {d.clip_x0!r}")
  _checks.choice(config.data.get("on_error", "raise"), ("raise", "skip"), "config.data.on_error")
  decay, warmup = config.optim.get("decay_steps", 0), config.optim.get("warmup_steps", 0)
  if decay and decay <= warmup:
    raise ValueError(f"config.optim.decay_steps ({decay}) must exceed config.optim.warmup_steps "
                     f"({warmup}), or be 0 for no decay")
  k = train.get("steps_per_dispatch", 1)
  if train.num_steps % k:
    raise ValueError(f"config.train.steps_per_dispatch ({k}) must divide config.train.num_steps "
                     f"({train.num_steps})")
  if (train.get("sample_steps") or 0) > d.num_steps:
    raise ValueError(f"config.train.sample_steps ({train.sample_steps}) must not exceed "
                     f"config.diffusion.num_steps ({d.num_steps}); 0: the sampler's default")
  if "beta_start" in d and "beta_end" in d and d.beta_start > d.beta_end:
    raise ValueError(f"config.diffusion.beta_start ({d.beta_start!r}) must not exceed "
                     f"config.diffusion.beta_end ({d.beta_end!r})")
  power_ema_sigmas(config)
  if train.get("ema_snapshot_every", 0) and not train.get("power_ema"):
    raise ValueError("config.train.ema_snapshot_every keeps snapshots of the power-function "
                     "EMAs of config.train.power_ema, which is empty: set both, or 0")
  betas_from_config(config)
  data_spec(config)


def power_ema_sigmas(config: ml_collections.ConfigDict) -> tuple[float, ...]:
  """The σ_rel of each power-function EMA the run keeps (`config.train.power_ema`, e.g. (0.05,
  0.10); () for none), checked: distinct, each in (0, 1/sqrt(12))."""
  sigmas = config.train.get("power_ema") or ()
  if isinstance(sigmas, (int, float)):
    sigmas = (sigmas,)
  sigmas = tuple(sigmas)
  for s in sigmas:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < MAX_SIGMA_REL:
      raise ValueError(f"config.train.power_ema must hold σ_rel values in (0, "
                       f"{MAX_SIGMA_REL:.4f}); got {config.train.power_ema!r}")
  if len(set(sigmas)) != len(sigmas):
    raise ValueError(f"config.train.power_ema must not repeat a value; got {sigmas!r}")
  return tuple(float(s) for s in sigmas)


def power_ema_key(sigma_rel: float) -> str:
  """The name of the σ_rel profile in the train state and its snapshots: "sigma_rel_0_05"."""
  return f"sigma_rel_{sigma_rel:g}".replace(".", "_")


# What may change when a run resumes: how it executes, not what it computes.
RESUMABLE_KEYS = ("train.num_steps", "train.log_every", "train.sample_every",
                  "train.checkpoint_every", "train.keep_checkpoints", "train.num_samples",
                  "train.sample_sampler", "train.sample_steps",
                  "train.steps_per_dispatch", "train.power_ema", "train.ema_snapshot_every",
                  "model.dtype", "model.remat", "data.data_dir",
                  "data.num_workers", "data.on_error", "mesh.data", "mesh.fsdp",
                  "mesh.min_shard_size")


def _flatten(tree, prefix: str = "") -> dict:
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flatten(value, f"{prefix}{key}." if isinstance(value, dict) else prefix + key))
  return flat


def resume_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """The keys where `config` differs from a run's saved config (`saved`, as its JSON), other
  than RESUMABLE_KEYS, each as "key: saved -> new"."""
  old, new = _flatten(saved), _flatten(json.loads(config.to_json()))
  missing = object()
  value = lambda tree, key: tree.get(key, ABSENT_MEANS.get(key, missing))
  differences = [f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}"
                 for key in sorted(set(old) | set(new))
                 if key not in RESUMABLE_KEYS + _SPEC_KEYS and value(old, key) != value(new, key)]
  # The data's shape and units compare as what they mean: a run saved before config.data.shape
  # existed (image_size and channels only) resumes under a config that spells the same shape.
  before, after = from_data_config(saved.get("data", {})), data_spec(config)
  if before != after:
    differences.insert(0, f"data: {before} -> {after}")
  return differences


# Keys added after runs were saved without them, and the value their absence means.
ABSENT_MEANS = {"optim.decay_steps": 0, "diffusion.clip_x0": None, "diffusion.snr_gamma": 0.0,
                "method": ""}

_SPEC_KEYS = ("data.shape", "data.kind", "data.dtype", "data.scale", "data.image_size",
              "data.channels")


def data_spec(config: ml_collections.ConfigDict) -> DataSpec:
  """Shape, kind, dtype and units of one example of a config's data (`dataspec.py`)."""
  return from_data_config(config.data)


def clip_x0(config: ml_collections.ConfigDict) -> bool:
  """Whether the samplers clip their prediction of x0 to [-1, 1] (DDPM's sampling):
  config.diffusion.clip_x0 if set, else for uint8 data only, whose model units are [-1, 1].
  Float data in model units (data / config.data.scale) is not bounded unless its scale
  makes it so: set clip_x0 = True then."""
  value = config.diffusion.get("clip_x0")
  return data_spec(config).dtype == "uint8" if value is None else bool(value)


def data_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The shape of one example of a config's data: config.data.shape, or (image_size,
  image_size, channels) for configs that give no shape."""
  return data_spec(config).shape


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


def diffusion_of(config: ml_collections.ConfigDict) -> Diffusion:
  """The `Diffusion` of a config: its `diffusion` section's schedule, prediction, variance and
  clipping, and its data (`data_spec`)."""
  d = config.diffusion
  return Diffusion(betas_from_config(config), prediction=d.prediction, variance=d.variance,
                   clip_x0=clip_x0(config), spec=data_spec(config))
