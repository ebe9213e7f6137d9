"""How the engine calls ε_θ: the `Denoiser` protocol and adapters for Linen, NNX and functions.

Everything outside `diffusion.models` calls a network only through a
`Denoiser`: the train step, every sampler, the applications, bits/dim and
`ddpm bench`. A denoiser is a pair of pure functions over a variables dict
{"params": ..., other collections (e.g. "batch_stats")}:

  variables = denoiser.init(key, x, t, y=None, cond=None)
  out = denoiser(variables, x, t, y=None, cond=None)                  # inference
  out, updates = denoiser.train_apply(variables, x, t, y, cond, rng)  # training

x [B, *shape] in the model's units, t int [B] (0-based timesteps), y int [B]
class labels in [0, num_classes] (num_classes = the null class of classifier-
free guidance) when num_classes > 0, cond [B, *shape[:-1], cond_channels]
when cond_channels > 0. `out` is what the diffusion settings predict (ε, x0 or
v), [B, *shape[:-1], C × (2 if learned_variance)]; `updates` holds the new
values of the collections other than "params" (empty for most networks). The
engine trains "params" with the optimizer and carries the rest in its state.

Adapters: `linen(module)`, `nnx(factory)` and `function(apply_fn, init_fn)`;
`as_denoiser` picks the right one for whatever a registry factory returns.
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

Variables = dict[str, Any]


def _no_check(shape: tuple[int, ...]) -> None:
  del shape


@dataclasses.dataclass(frozen=True, eq=False)
class Denoiser:
  """ε_θ as the engine sees it. Build one with `linen`, `nnx` or `function`.

  Attributes:
    init_fn: (key, x, t, y, cond) -> variables.
    apply_fn: (variables, x, t, y, cond, train, rng) -> (out, updates).
    num_classes: > 0 for a class-conditional network (y in [0, num_classes]).
    cond_channels: > 0 for a network that takes a conditioning input `cond`.
    learned_variance: the output has 2C channels (improved DDPM's variances).
    check: raises ValueError (naming config.data.shape) for a data shape the
      network cannot take; runs before anything compiles.
    name: what rebuilds it in another process: a registry name or an import
      path "package.module:factory" ("" if nothing can).
    kinds: the data kinds it takes ("image", "volume", "sequence", "points"),
      or None for any.
    output_fits: the factory guarantees the output shape the diffusion settings
      need (the built-in networks), so the engine need not trace it to check.
    dtype: the computation dtype's name, for reports.
    module: the wrapped object (a Linen module, an NNX graph definition, a function).
  """
  init_fn: Callable[..., Variables]
  apply_fn: Callable[..., tuple[jax.Array, dict]]
  num_classes: int = 0
  cond_channels: int = 0
  learned_variance: bool = False
  check: Callable[[tuple[int, ...]], None] = _no_check
  name: str = ""
  kinds: tuple[str, ...] | None = None
  output_fits: bool = False
  dtype: str = "float32"
  module: Any = None

  def init(self, key: jax.Array, x: jax.Array, t: jax.Array, y: jax.Array | None = None,
           cond: jax.Array | None = None) -> Variables:
    """The network's variables for inputs shaped like x [b, *shape], t [b] (b may be 1)."""
    variables = dict(self.init_fn(key, x, t, self._y(y), self._cond(cond)))
    if "params" not in variables:
      raise ValueError(f"the network {self.name or self.module!r}: init returned no 'params' "
                       f"collection (got {sorted(variables)})")
    return variables

  def __call__(self, variables: Variables, x: jax.Array, t: jax.Array,
               y: jax.Array | None = None, cond: jax.Array | None = None) -> jax.Array:
    """The network's output in inference mode (no dropout, running statistics)."""
    return self.apply_fn(variables, x, t, self._y(y), self._cond(cond), False, None)[0]

  def train_apply(self, variables: Variables, x: jax.Array, t: jax.Array, y: jax.Array | None,
                  cond: jax.Array | None, rng: jax.Array) -> tuple[jax.Array, dict]:
    """(output, updated non-"params" collections) in training mode; `rng` seeds dropout."""
    return self.apply_fn(variables, x, t, self._y(y), self._cond(cond), True, rng)

  def _y(self, y):
    if not self.num_classes:
      return None
    if y is None:
      raise ValueError(f"y (int [B] class labels) is required: the network has "
                       f"num_classes={self.num_classes}")
    return y

  def _cond(self, cond):
    return cond if self.cond_channels else None

  def output_channels(self, channels: int) -> int:
    """The channels the diffusion settings expect from data of `channels` channels."""
    return channels * (2 if self.learned_variance else 1)


def _accepts(fn: Callable, name: str) -> bool:
  try:
    parameters = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False
  return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _required_positional(fn: Callable) -> int:
  """How many positional arguments `fn` requires (0 if its signature cannot be read)."""
  try:
    parameters = inspect.signature(fn).parameters.values()
  except (TypeError, ValueError):
    return 0
  return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
             for p in parameters)


def _conditioning(y, cond) -> dict[str, jax.Array]:
  kwargs = {}
  if y is not None:
    kwargs["y"] = y
  if cond is not None:
    kwargs["cond"] = cond
  return kwargs


def _attribute(module, given, name, default):
  return given if given is not None else getattr(module, name, default)


def linen(module, *, num_classes: int | None = None, cond_channels: int | None = None,
          learned_variance: bool | None = None, check: Callable | None = None, name: str = "",
          kinds: tuple[str, ...] | None = None, rng_streams: tuple[str, ...] = ("dropout",)) -> Denoiser:
  """A Flax Linen module called as `module.apply(variables, x, t[, y=][, cond=][, train=])`.

  num_classes, cond_channels and learned_variance default to the module's
  attributes of those names (0/False if it has none). `train=` is passed
  if `__call__` takes it; in training the streams `rng_streams` are seeded
  from the step's key and every collection other than "params" is mutable.
  """
  try:  # equal modules share their functions, so that their compiled programs are shared too
    init_fn, apply_fn = _linen_functions(module, tuple(rng_streams))
  except TypeError:  # an unhashable module
    init_fn, apply_fn = _linen_functions.__wrapped__(module, tuple(rng_streams))
  return Denoiser(
      init_fn, apply_fn,
      num_classes=_attribute(module, num_classes, "num_classes", 0),
      cond_channels=_attribute(module, cond_channels, "cond_channels", 0),
      learned_variance=bool(_attribute(module, learned_variance, "learned_variance", False)),
      check=check or _no_check, name=name, kinds=kinds,
      dtype=jnp.dtype(getattr(module, "dtype", None) or jnp.float32).name, module=module)


@functools.lru_cache(maxsize=64)
def _linen_functions(module, rng_streams: tuple[str, ...]):
  """(init_fn, apply_fn) of `linen`: the same function objects for equal modules."""
  takes_train = _accepts(module.__call__, "train")

  def init_fn(key, x, t, y, cond):
    rngs = {"params": key, **{s: jax.random.fold_in(key, i + 1) for i, s in enumerate(rng_streams)}}
    return dict(module.init(rngs, x, t, **_conditioning(y, cond)))

  def apply_fn(variables, x, t, y, cond, train, rng):
    kwargs = _conditioning(y, cond)
    if takes_train:
      kwargs["train"] = train
    if not train:
      return module.apply(variables, x, t, **kwargs), {}
    rngs = {s: jax.random.fold_in(rng, i) if i else rng for i, s in enumerate(rng_streams)}
    mutable = [c for c in variables if c != "params"]
    if not mutable:
      return module.apply(variables, x, t, rngs=rngs, **kwargs), {}
    out, updates = module.apply(variables, x, t, rngs=rngs, mutable=mutable, **kwargs)
    return out, dict(updates)

  return init_fn, apply_fn


def nnx(make: Callable, *, num_classes: int = 0, cond_channels: int = 0,
        learned_variance: bool = False, check: Callable | None = None, name: str = "") -> Denoiser:
  """A Flax NNX module, from `make(rngs: nnx.Rngs) -> module` (or a built module).

  The module is called as `module(x, t[, y=][, cond=])`, after `.train()` or
  `.eval()`. Its nnx.Param variables are "params"; its other state (e.g.
  BatchNorm statistics) is the collection "state"; its RNG streams are
  reseeded from the step's key in training ("dropout" and "default"). With a
  built module, `init` returns the module's own values and ignores its key.
  """
  from flax import nnx as flax_nnx

  built = make if isinstance(make, flax_nnx.Module) else None
  abstract = flax_nnx.eval_shape(lambda: make(flax_nnx.Rngs(0))) if built is None else built
  graphdef, params_template, rng_template, rest_template = flax_nnx.split(
      abstract, flax_nnx.Param, flax_nnx.RngState, ...)

  def split(module):
    _, params, _, rest = flax_nnx.split(module, flax_nnx.Param, flax_nnx.RngState, ...)
    return {"params": flax_nnx.to_pure_dict(params), "state": flax_nnx.to_pure_dict(rest)}

  def init_fn(key, x, t, y, cond):
    return split(built if built is not None else make(flax_nnx.Rngs(key)))

  def fill(template, values):
    state = jax.tree.map(lambda leaf: leaf, template)  # a fresh State, then filled in
    flax_nnx.replace_by_pure_dict(state, values)
    return state

  def apply_fn(variables, x, t, y, cond, train, rng):
    rngs = jax.tree.map(lambda a: jax.random.key(0) if jax.dtypes.issubdtype(
        a.dtype, jax.dtypes.prng_key) else jnp.zeros(a.shape, a.dtype), rng_template)
    module = flax_nnx.merge(graphdef, fill(params_template, variables["params"]), rngs,
                            fill(rest_template, variables.get("state", {})))
    if train:
      module.train()
      flax_nnx.reseed(module, dropout=rng, default=rng)
    else:
      module.eval()
    out = module(x, t, **_conditioning(y, cond))
    return out, ({"state": split(module)["state"]} if train and variables.get("state") else {})

  return Denoiser(init_fn, apply_fn, num_classes=num_classes, cond_channels=cond_channels,
                  learned_variance=learned_variance, check=check or _no_check, name=name,
                  module=graphdef)


def function(apply_fn: Callable, init_fn: Callable | None = None, *, params: Any = None,
             num_classes: int = 0, cond_channels: int = 0, learned_variance: bool = False,
             check: Callable | None = None, name: str = "") -> Denoiser:
  """A plain function `apply_fn(params, x_t, t[, y=][, cond=][, train=][, rng=]) -> out`.

  The parameters come from `init_fn(key, x, t) -> params`, or are `params`
  as given. y and cond are passed when the network takes them; train and rng
  when `apply_fn`'s signature names them.
  """
  if (init_fn is None) == (params is None):
    raise ValueError("function(): give exactly one of init_fn and params")
  takes_train, takes_rng = _accepts(apply_fn, "train"), _accepts(apply_fn, "rng")

  def init(key, x, t, y, cond):
    return {"params": params if init_fn is None else init_fn(key, x, t)}

  def apply(variables, x, t, y, cond, train, rng):
    kwargs = _conditioning(y, cond)
    if takes_train:
      kwargs["train"] = train
    if takes_rng:
      kwargs["rng"] = rng
    return apply_fn(variables["params"], x, t, **kwargs), {}

  return Denoiser(init, apply, num_classes=num_classes, cond_channels=cond_channels,
                  learned_variance=learned_variance, check=check or _no_check, name=name,
                  module=apply_fn)


def as_denoiser(network: Any, settings: Mapping[str, Any] | None = None, *,
                name: str = "") -> Denoiser:
  """A Denoiser from a Denoiser, a Linen module, an NNX module or a factory
  `rngs -> NNX module`. `settings` (a config's `model` section) supplies
  num_classes, cond_channels and learned_variance where the network has none."""
  settings = dict(settings or {})
  if isinstance(network, Denoiser):
    return dataclasses.replace(network, name=network.name or name)
  import flax.linen
  # The network's own attributes win; the config fills in what it does not say.
  given = {k: settings[k] for k in ("num_classes", "cond_channels", "learned_variance")
           if k in settings and not hasattr(network, k)}
  if isinstance(network, flax.linen.Module):
    return linen(network, name=name, **given)
  from flax import nnx as flax_nnx
  if isinstance(network, flax_nnx.Module):
    return nnx(network, name=name, **given)
  if callable(network):
    if _required_positional(network) > 1:
      raise TypeError(f"the network {name or getattr(network, '__name__', network)!r} is a "
                      "function of several arguments: wrap an apply function "
                      "f(params, x, t) with models.function(f, init_fn) (a bare callable is "
                      "read as an NNX factory rngs -> module)")
    return nnx(network, name=name, **given)
  raise TypeError(f"the network {name or network!r} is {type(network).__name__}: give a "
                  "Denoiser, a flax.linen.Module or a flax.nnx.Module")


def variables_of(params: Any, state: Mapping[str, Any] | None = None) -> Variables:
  """{"params": params, **state}: what a Denoiser takes, from the trained parameters (or their
  EMA) and the other collections kept beside them."""
  return {"params": params, **dict(state or {})}
