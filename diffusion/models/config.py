"""The UNet from the `model` section of a config, and back."""

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from diffusion.models.unet import UNet

_FIELDS = {"ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "num_heads",
           "head_dim", "num_classes", "cond_channels", "learned_variance", "out_channels",
           "num_groups", "resample_with_conv", "dtype", "remat"}


def from_config(config: Mapping[str, Any]) -> UNet:
  """The network of a config's `model` section (an ml_collections.ConfigDict or dict).

  Keys are the UNet's attributes in the paper's names (ch, ch_mult,
  num_res_blocks, attn_resolutions, dropout, ...); `dtype` may be a string
  such as "bfloat16"; an optional `name` must be "unet".
  """
  config = dict(config)
  name = config.pop("name", "unet")
  if name != "unet":
    raise ValueError(f"config.model.name must be 'unet'; got {name!r}")
  unknown = sorted(set(config) - _FIELDS)
  if unknown:
    raise ValueError(f"config.model has unknown keys {unknown}; the UNet takes "
                     f"{sorted(_FIELDS)}")
  if isinstance(config.get("dtype"), str):
    try:
      config["dtype"] = jnp.dtype(config["dtype"])
    except TypeError:
      raise ValueError(f"config.model.dtype {config['dtype']!r} is not a dtype") from None
  for key in ("ch_mult", "attn_resolutions"):
    if key in config:
      config[key] = tuple(config[key])
  for key in ("ch", "num_groups"):
    if key in config and (not isinstance(config[key], int) or config[key] < 1):
      raise ValueError(f"config.model.{key} must be a positive int; got {config[key]!r}")
  model = UNet(**config)
  if model.ch % model.num_groups or any(model.ch * m % model.num_groups for m in model.ch_mult):
    raise ValueError(f"config.model: every level's channels (ch * ch_mult = "
                     f"{[model.ch * m for m in model.ch_mult]}) must be divisible by "
                     f"num_groups={model.num_groups} for GroupNorm")
  return model


def model_kwargs(model: UNet) -> dict[str, Any]:
  """The UNet's attributes as JSON-friendly values: `from_config` inverts it."""
  kwargs = {field: getattr(model, field) for field in sorted(_FIELDS)}
  kwargs["dtype"] = jnp.dtype(model.dtype).name
  for key in ("ch_mult", "attn_resolutions"):
    kwargs[key] = list(kwargs[key])
  return kwargs
