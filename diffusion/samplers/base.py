"""The `Sampler` protocol, the one loop that runs any sampler, and the registry of samplers.

A sampler is a reverse chain over a list of visited timesteps, written as
three pure functions that `run` calls inside one trace:

  carry = sampler.initialize(chain, x)              # x [N, ..., C] at steps[0]
  carry = sampler.update(chain, carry, visit)       # once per row of sampler.visits(...)
  x0 = sampler.finalize(chain, carry)               # [N, ..., C]

`run` scans `update` over the rows of `visits(diffusion, steps)` (host arrays
of one leading axis, built before the trace: timesteps, σ's, noise spreads)
with `lax.scan`, so a chain compiles to one loop whatever its length. `chain`
(`Chain`) holds what every step reads: the network as a function
`(x_t, t) -> output` (guidance folded in), the `Diffusion`, the visited
timesteps and the per-sample keys; the noise of visit i of sample n comes from
fold_in(keys[n], i), so samples do not depend on how they are batched.

A sampler's options (DDIM's η, EDM's S_churn) are the arguments of its
constructor, checked there; its class attributes say how many steps it takes
by default, how it spaces them and how many network evaluations a chain of
S steps costs. A new sampler is a subclass in a file of its own, registered
with `@register`: `make_sampler` and `ddpm sample --sampler NAME` (or
`--sampler package.module:Class`) then run it.
"""

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import ode, spacing
from diffusion.process import Diffusion

# The network as a chain calls it: (x_t [N, ..., C], t int [N]) -> its output [N, ..., C or 2C].
NetworkFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Chain:
  """What each step of a chain reads (inside the trace)."""
  network: NetworkFn       # t is always the original (unspaced) timestep
  diffusion: Diffusion
  steps: np.ndarray        # decreasing int timesteps (a continuous chain: float noise levels),
                           # host array; x starts at steps[0]
  keys: jax.Array | None   # [N], one key per sample
  method: Any = None       # a continuous chain's method: its ODE field and prior (`Method`)

  @property
  def schedule(self):
    return self.diffusion.schedule


class Sampler:
  """A reverse chain (see the module's docstring). Subclasses set `name`, and override
  `visits`, `update` and, where the chain has a first or last step of its own, `initialize`
  and `finalize`."""
  name: ClassVar[str] = ""
  default_steps: ClassVar[int | None] = None  # None: every timestep
  default_spacing: ClassVar[str] = "uniform"
  stochastic: ClassVar[bool] = True  # draws noise: needs one key per sample
  # A sampler of one kind of model only (e.g. a consistency model): `make_sampler` offers it
  # to the runs whose method names it as theirs, and refuses it for the others.
  own_only: ClassVar[bool] = False
  # A chain over continuous noise levels (float, decreasing to the data), for the methods that
  # train on them (flow matching, EDM): it integrates the method's probability-flow ODE,
  # `method.field(network)`, from `method.prior_scale` x_T. Its name is looked up among the
  # continuous samplers when the run's method is continuous (`get(name, continuous=True)`).
  continuous: ClassVar[bool] = False
  needs: ClassVar[str] = ""  # the kind of model an `own_only` sampler needs, in words

  # Network evaluations in one `update` (the rest of `evaluations`, if any, in `initialize`
  # and `finalize`): what tells a plan how XLA's count of a chain, which sees the scanned
  # `update` once, scales to the whole chain.
  trip_evaluations: ClassVar[int] = 1

  def evaluations(self, steps: int) -> int:
    """Network evaluations of a chain of `steps` visited timesteps (unguided)."""
    return steps

  def visits(self, diffusion: Diffusion, steps: np.ndarray) -> Any:
    """A pytree of host arrays of one leading axis: one row per `update`. A continuous
    sampler is given the run's `Method` in place of `diffusion` (its levels are the method's:
    `Method.path`)."""
    raise NotImplementedError

  def initialize(self, chain: Chain, x: jax.Array) -> Any:
    return x

  def update(self, chain: Chain, carry: Any, visit: Any) -> Any:
    raise NotImplementedError

  def finalize(self, chain: Chain, carry: Any) -> jax.Array:
    return carry

  def options(self) -> dict:
    """The constructor's arguments (what tells two samplers of a class apart)."""
    return dict(vars(self))

  def __eq__(self, other):
    return type(self) is type(other) and self.options() == other.options()

  def __hash__(self):
    return hash((type(self), tuple(sorted((k, repr(v)) for k, v in self.options().items()))))

  def __repr__(self):
    args = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
    return f"{type(self).__name__}({args})"


def run(sampler: Sampler, network: NetworkFn, diffusion: Diffusion, steps, x: jax.Array,
        keys: jax.Array | None = None, *, method=None) -> jax.Array:
  """The chain of `sampler` from x [N, ..., C] at steps[0] through each of `steps` (decreasing
  timesteps in [0, T); for a continuous sampler, decreasing noise levels of `method`, the run's
  continuous Method) to x_0 [N, ..., C], as one `lax.scan`. `keys` [N]: one key per sample
  (unused by deterministic samplers)."""
  if not isinstance(sampler, Sampler):
    raise TypeError(f"sampler must be a Sampler (samplers.make(name, ...)); got "
                    f"{type(sampler).__name__}")
  if not isinstance(diffusion, Diffusion):
    raise TypeError(f"diffusion must be a diffusion.process.Diffusion; got "
                    f"{type(diffusion).__name__}")
  if sampler.continuous:
    if method is None or not getattr(method, "continuous", False):
      raise ValueError(f"sampler {sampler.name!r} integrates a continuous method's ODE: give "
                       "`method` (a flow-matching or EDM run's)")
    steps = ode.check_grid(steps)
  else:
    steps = spacing.check_chain(diffusion.schedule, steps, x,
                                keys if sampler.stochastic else None)
  chain = Chain(network, diffusion, steps, keys, method)
  visits = sampler.visits(method if sampler.continuous else diffusion, steps)
  carry = sampler.initialize(chain, x)
  if len(jax.tree.leaves(visits)[0]):
    carry, _ = jax.lax.scan(lambda c, v: (sampler.update(chain, c, v), None), carry,
                            jax.tree.map(jnp.asarray, visits))
  return sampler.finalize(chain, carry)


def per_sample(step_fn, out, x, keys, i):
  """Runs a one-example step for each sample with its own key fold_in(keys[n], i)."""
  one = lambda o, xi, k: step_fn(o[None], xi[None], jax.random.fold_in(k, i))[0]
  return jax.vmap(one)(out, x, keys)


REGISTRY: dict[str, type[Sampler]] = {}  # the discrete chains, by name
CONTINUOUS: dict[str, type[Sampler]] = {}  # the continuous ones, by name


def _table(continuous: bool) -> dict[str, type[Sampler]]:
  return CONTINUOUS if continuous else REGISTRY


def register(cls: type[Sampler]) -> type[Sampler]:
  """Class decorator: makes the Sampler subclass `cls` known by `cls.name` (among the
  continuous samplers if `cls.continuous`)."""
  if not (isinstance(cls, type) and issubclass(cls, Sampler)) or not cls.name:
    raise TypeError(f"register takes a Sampler subclass with a name; got {cls!r}")
  _table(cls.continuous)[cls.name] = cls
  return cls


def names(continuous: bool = False) -> tuple[str, ...]:
  """The registered samplers' names (of the continuous ones, with `continuous`)."""
  return tuple(_table(continuous))


def get(name: str, continuous: bool = False) -> type[Sampler]:
  """The Sampler class registered as `name` (among the continuous samplers, with
  `continuous`), or named by an import path "package.module:Class" (imported, and registered
  under its own name)."""
  if isinstance(name, str) and ":" in name:
    module, _, attr = name.partition(":")
    try:
      cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
      raise ValueError(f"`sampler` {name!r} cannot be imported: {e}") from None
    cls = register(cls)
    if cls.continuous != continuous:
      raise ValueError(f"`sampler` {name!r} is a {'continuous' if cls.continuous else 'discrete'}"
                       f" chain; this run's method needs a "
                       f"{'continuous' if continuous else 'discrete'} one")
    return cls
  table = _table(continuous)
  if name not in table:
    kind = "continuous " if continuous else ""
    raise ValueError(f"`sampler` must be one of {', '.join(table)} (the {kind}chains of this "
                     f"run's method, or an import path package.module:Class); got {name!r}")
  return table[name]


def make(name: str | Sampler, continuous: bool = False, **options) -> Sampler:
  """A sampler from its name (among the continuous ones, with `continuous`) and options (those
  it does not take are refused: options that are None count as not given). A Sampler passes
  through (with no options)."""
  if isinstance(name, Sampler):
    if any(v is not None for v in options.values()):
      raise ValueError(f"options {sorted(options)} are for a sampler given by name")
    return name
  cls = get(name, continuous)
  given = {k: v for k, v in options.items() if v is not None}
  try:
    return cls(**given)
  except TypeError:
    import inspect
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(given) - accepted)
    if not unknown:
      raise
    raise ValueError(f"`{unknown[0]}` is no option of sampler {cls.name!r}"
                     + (f" (it takes {', '.join(sorted(accepted))})" if accepted else "")) from None
