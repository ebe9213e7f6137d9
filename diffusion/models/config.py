"""The UNet from the `model` section of a config, and back; registered as "unet"."""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp

from diffusion.models.denoiser import Denoiser, linen
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
  positive = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1
  for key in ("ch_mult", "attn_resolutions"):
    if key in config:
      value = config[key]
      if (isinstance(value, (str, bytes)) or not hasattr(value, "__iter__")
          or not all(positive(v) for v in value) or (key == "ch_mult" and not len(value))):
        raise ValueError(f"config.model.{key} must be a {'non-empty ' * (key == 'ch_mult')}"
                         f"sequence of positive ints, e.g. (1, 2, 2); got {value!r}")
      config[key] = tuple(value)
  for key in ("ch", "num_groups", "num_res_blocks", "num_heads"):
    if key in config and not positive(config[key]):
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


def unet_check(model: UNet) -> Callable[[tuple[int, ...]], None]:
  """The data shapes `model` takes: 1 to 3 spatial axes and a channel axis, each spatial axis
  divisible by 2 per downsampling."""
  def check(shape: tuple[int, ...]) -> None:
    if not 2 <= len(shape) <= 4:
      raise ValueError(f"config.data.shape {tuple(shape)}: the U-Net takes [*spatial, channels] "
                       "with 1 to 3 spatial axes")
    factor = 2 ** (len(model.ch_mult) - 1)
    if any(size % factor for size in shape[:-1]):
      raise ValueError(f"config.data.shape {tuple(shape)}: each spatial axis must be divisible "
                       f"by {factor} for the {len(model.ch_mult) - 1} halvings of "
                       f"config.model.ch_mult {tuple(model.ch_mult)}")
    sizes = [shape[0] // 2 ** level for level in range(len(model.ch_mult))]
    unused = sorted(set(model.attn_resolutions) - set(sizes))
    if unused:
      raise ValueError(f"config.model.attn_resolutions {tuple(model.attn_resolutions)}: no level "
                       f"of this U-Net has size {unused[0]} (its levels' sizes along the first "
                       f"spatial axis: {sizes})")
  return check


def unet(settings: dict, shape: tuple[int, ...]) -> Denoiser:
  """The DDPM U-Net (`unet.py`) for 1-D, 2-D or 3-D data, from the config's `model` section."""
  model = from_config(settings)
  if model.out_channels not in (None, shape[-1]):
    raise ValueError(f"config.model.out_channels {model.out_channels} must be the data's "
                     f"{shape[-1]} channels (config.data.shape {tuple(shape)}) to predict ε")
  return dataclasses.replace(linen(model, check=unet_check(model), name="unet"),
                             output_fits=True)
