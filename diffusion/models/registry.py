"""Networks by name: `config.model.name` picks a registered factory or an import path.

A factory takes the `model` section (a dict, without `name`) and the data
shape (one example, channels last) and returns a `Denoiser`, a Flax Linen
module or an NNX module (or a function `rngs -> NNX module`):

  @diffusion.models.register("my_net")
  def my_net(settings: dict, shape: tuple[int, ...]):
    return MyNet(width=settings.get("width", 64))

Research code registers its own networks this way without editing the
library. A process that runs later (`ddpm sample`, the applications) rebuilds
the network from the saved config, so a name registered only in a script is
not enough there: `config.model.name = "package.module:factory"` imports the
factory wherever the config is read.
"""

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from diffusion.models import config, dit, egnn
from diffusion.models.denoiser import Denoiser, as_denoiser

Factory = Callable[[dict, tuple[int, ...]], Any]
_FACTORIES: dict[str, Factory] = {"unet": config.unet, "dit": dit.dit, "egnn": egnn.egnn}


def register(name: str, factory: Factory | None = None):
  """Registers `factory` under `name` (as a decorator when `factory` is omitted)."""
  if not name or ":" in name:
    raise ValueError(f"a registered network's name must be non-empty and hold no ':'; got {name!r}")

  def add(fn: Factory) -> Factory:
    _FACTORIES[name] = fn
    return fn
  return add if factory is None else add(factory)


def registered() -> list[str]:
  return sorted(_FACTORIES)


def factory(name: str) -> Factory:
  """The factory of a registry name or of an import path "package.module:factory"."""
  if name in _FACTORIES:
    return _FACTORIES[name]
  if ":" in name:
    module_name, _, attribute = name.partition(":")
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:
      raise ValueError(f"config.model.name {name!r}: cannot import {module_name!r} ({e})") from None
    if not callable(getattr(module, attribute, None)):
      raise ValueError(f"config.model.name {name!r}: {module_name} has no callable {attribute!r}")
    return getattr(module, attribute)
  hint = ("; the run was trained with a network passed to train() in Python: load it with "
          "load_run(workdir, model=...), or train with config.model.name naming its factory"
          if name.startswith("(") else "")
  raise ValueError(f"config.model.name {name!r} is neither a registered network "
                   f"({', '.join(sorted(_FACTORIES))}) nor an import path "
                   f"'package.module:factory'{hint}")


def build(settings: Mapping[str, Any], shape: tuple[int, ...]) -> Denoiser:
  """The Denoiser of a config's `model` section for data of `shape`, its fit to the shape
  checked (a ValueError naming the config key if it does not fit)."""
  settings = dict(settings)
  name = settings.pop("name", "unet") or "unet"
  network = factory(name)(settings, tuple(shape))
  denoiser = as_denoiser(network, settings, name=name)
  denoiser.check(tuple(shape))
  return denoiser
