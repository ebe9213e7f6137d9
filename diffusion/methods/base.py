"""The `Method` protocol: what a run trains its network to do, the state it needs beside the
parameters, and how the trained model samples; and the registry of methods.

The train step (`training/step.py`) calls every method the same way, with no
branch of its own:

  state = method.prepare(state, tx)                 # at the start of a step
  labels = method.labels(keys, labels, num_classes) # e.g. classifier-free guidance's dropout
  out = method.losses(Step(x0, keys, key, state, nets))  # {"loss": [B], metrics [B] ...}
  history, count = method.record(state, out)        # after an update (importance sampling)
  extra = method.update_extra(extra, params, step)  # a teacher's or target network's update
  applied = method.local_step(step, applied)        # the step the lr and EMA schedules follow

and sampling asks it for its own chain (`default_sampler`, `sampler_options`)
and the timesteps that chain visits (`sampling_steps`). A method is built once
from the config and the run's `Diffusion` (`Method.from_config`), checks its
own settings there, and is then a value: equal settings, equal methods.
A new method is a subclass in a file of its own, decorated `@register`, and
named by `config.method` (a registered name or "package.module:Class").
"""

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import spacing
from diffusion.process import Diffusion

NetworkFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Nets:
  """The networks a method's loss calls, each (x_t [B, ..., C], t int [B]) -> output: the
  student (training mode, its parameters differentiated) and the trees of `Method.extra` by
  name, in inference mode (`frozen`) or in training mode with the student's dropout mask
  (`shadow`)."""
  student: NetworkFn
  frozen: Callable[[str], NetworkFn]
  shadow: Callable[[str], NetworkFn]


@dataclasses.dataclass(frozen=True)
class Step:
  """What a method's loss reads at one train step (inside the trace)."""
  x0: jax.Array      # [B, *shape]: the data in the model's units (point sets centred)
  keys: jax.Array    # [B]: example i's key, from which all of its draws come
  key: jax.Array     # the step's key
  state: Any         # the TrainState before this step's update
  nets: Nets


class Method:
  """A training method (see the module's docstring). Subclasses set `name` and implement
  `losses`; the other hooks default to a method without extra state."""
  name: ClassVar[str] = ""
  # Parameter trees the train state carries beside the trained ones (TrainState.extra), each
  # starting as a copy of the parameters: a distillation's frozen "teacher", a target network.
  extra: ClassVar[tuple[str, ...]] = ()
  needs_teacher: ClassVar[bool] = False  # starts from a trained run (`distill`), not from scratch
  every_timestep: ClassVar[bool] = True  # a model of every timestep (the applications need one)
  # Trained on continuous noise levels (flow matching's t, EDM's σ) instead of the discrete
  # process's timesteps: it samples with the continuous chains, through `field`, and the
  # applications and bits/dim, written for a discrete DDPM, refuse it.
  continuous: ClassVar[bool] = False
  default_sampler: ClassVar[str] = "ddpm"
  label_dropout: float = 0.0  # the rate at which training dropped labels to the null class
  keys: ClassVar[tuple[str, ...]] = ()  # the keys of config.distill it reads (few-step methods)
  example: ClassVar[str] = ""  # a config of experiments/configs/ that sets them

  def __init__(self, diffusion: Diffusion):
    self.diffusion = diffusion

  @classmethod
  def from_config(cls, config, diffusion: Diffusion) -> "Method":
    """The method of a config's settings (each error names its config key)."""
    return cls(diffusion)

  @classmethod
  def student_config(cls, config) -> None:
    """A distilling method's own settings of its student's config (`distill`), set in place
    on the teacher's config with the distillation's sections."""

  def check(self, config) -> None:
    """How the method fits the rest of the config (e.g. its number of training steps)."""

  def labels(self, keys: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """The class labels the network sees, [B] (default: as given)."""
    return labels

  def losses(self, step: Step) -> dict:
    """{"loss": [B] per example (the step minimises their mean), other metrics [B] ...}."""
    raise NotImplementedError

  def prepare(self, state, tx):
    return state

  def record(self, state, losses: dict):
    """(loss_history, loss_count) of the state after an update."""
    return state.loss_history, state.loss_count

  def update_extra(self, extra: dict, params, step: jax.Array) -> dict:
    return extra

  def local_step(self, step: jax.Array, applied: jax.Array) -> jax.Array:
    return applied

  def checkpoint_for(self, kept: list[int], at: int, given: bool, steps: int | None
                     ) -> tuple[int, "Method"]:
    """(the checkpoint to read, the method of the model it holds) for sampling with `steps`
    steps, where `at` is the checkpoint asked for (`given`) or the newest readable one of those
    `kept`. A method whose checkpoints hold different models (a progressive run keeps each
    round's student) picks the one that samples in `steps`; the others keep `at`."""
    return at, self

  def conditioning(self, level: jax.Array) -> jax.Array:
    """What the network is given for noise level `level` [B] (a continuous method's)."""
    raise NotImplementedError

  def noise_sigma(self, conditioning: jax.Array) -> jax.Array:
    """EDM's σ (the noise-to-signal ratio σ_t / α_t) of what the network is given, [N]
    (traceable): a discrete DDPM's timestep t, sqrt(1 / ᾱ_t − 1); a continuous method's own."""
    return jnp.asarray(self.diffusion.schedule.sqrt_recipm1_alphas_cumprod)[conditioning]

  def field(self, network: NetworkFn):
    """The probability-flow ODE's field f(x, τ) in this method's levels τ, from the network
    (x, conditioning) -> output (a continuous method's)."""
    raise NotImplementedError

  def ode_span(self) -> tuple[float, float]:
    """(the data's level, the prior's) of the probability-flow ODE whose likelihood
    `ddpm evaluate --ode-nll` integrates (`field` in between; the prior N(0, prior_scale²))."""
    raise ValueError(f"method {self.name!r} has no probability-flow ODE of its own: the ODE "
                     "likelihood needs a DDPM, flow-matching or EDM run")

  def prior_scale(self, level: float) -> float:
    """The standard deviation of x at the highest level, `level` (a continuous method's)."""
    raise NotImplementedError

  def denoiser(self, network: NetworkFn):
    """The data prediction x̂_0(x, τ) (τ float [N]) from the network (x, conditioning) ->
    output (a continuous method's)."""
    raise NotImplementedError

  def path(self, level: float) -> tuple[float, float]:
    """(α, σ) of the Gaussian path at `level`, x_τ = α x_0 + σ ε, on the host (a continuous
    method's): what lets the solvers written in λ = log(α/σ) (DDIM, DPM-Solver++) and EDM's
    noise injection run on any continuous method."""
    raise NotImplementedError

  def level_of(self, ratio: float) -> float:
    """The level τ at which σ/α = `ratio` (EDM's σ of the path), the inverse of `path`."""
    raise NotImplementedError

  def sampler_options(self) -> dict:
    """Options of this method's own sampler (an `own_only` one), e.g. a consistency model's σ_d."""
    return {}

  def sampling_steps(self, sampler, steps: int | None, spacing_name: str | None,
                     start: int | None, sigmas=None) -> np.ndarray:
    """The decreasing timesteps `sampler` visits: `steps` of them (default: the sampler's
    `default_steps`) in [0, start] (default T - 1) spaced by `spacing_name` (default: the
    sampler's). A method whose model knows only some timesteps gives its own."""
    diffusion = self.diffusion
    if sigmas is not None:
      raise ValueError("`sigmas` sets the noise levels of a consistency model's chain, and this "
                       "run is not one: use `steps` and `spacing`")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                              or not 1 <= steps <= diffusion.num_steps):
      raise ValueError(f"`steps` must be an int in [1, {diffusion.num_steps}] (the model's T); "
                       f"got {steps!r}")
    count = sampler.default_steps if steps is None else steps
    if count is not None:
      count = min(count, diffusion.num_steps if start is None else start + 1)
    return spacing.spaced_steps(diffusion.schedule, count,
                                spacing_name or sampler.default_spacing, start)

  def options(self) -> dict:
    return {k: v for k, v in vars(self).items() if k != "diffusion"}

  def __eq__(self, other):
    return (type(self) is type(other) and self.diffusion == other.diffusion
            and self.options() == other.options())

  def __hash__(self):
    return hash((type(self), self.diffusion,
                 tuple(sorted((k, repr(v)) for k, v in self.options().items()))))

  def __repr__(self):
    args = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
    return f"{type(self).__name__}({args})"


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
  """Class decorator: makes the Method subclass `cls` known by `cls.name`."""
  if not (isinstance(cls, type) and issubclass(cls, Method)) or not cls.name:
    raise TypeError(f"register takes a Method subclass with a name; got {cls!r}")
  REGISTRY[cls.name] = cls
  return cls


def get(name: str) -> type[Method]:
  """The Method class registered as `name`, or named by an import path "package.module:Class"."""
  if isinstance(name, str) and ":" in name:
    module, _, attr = name.partition(":")
    try:
      return register(getattr(importlib.import_module(module), attr))
    except (ImportError, AttributeError) as e:
      raise ValueError(f"config.method {name!r} cannot be imported: {e}") from None
  if name not in REGISTRY:
    raise ValueError(f"config.method must be one of {', '.join(REGISTRY)} (or an import path "
                     f"package.module:Class); got {name!r}")
  return REGISTRY[name]


def name_of(config) -> str:
  """The method a config names: config.method if set, else config.distill.method (the few-step
  methods' configs), else "ddpm"."""
  return (config.get("method") or (config.get("distill") or {}).get("method", "")
          or "ddpm")
