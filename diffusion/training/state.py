"""The training state and the optimizer (Ho et al. 2020, App. B: Adam, lr 2e-4 with
5,000 warm-up steps, gradient clipping at 1.0, EMA 0.9999)."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffusion import distributed
from diffusion.config import power_ema_key, power_ema_sigmas
from diffusion.methods import HISTORY
from diffusion.runs import base_key



@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
  """Everything that changes during training; a pytree placed on the mesh by
  `state_shardings` (replicated, or split over the "fsdp" axis leaf by leaf).

  The random stream needs no state of its own: the keys of step s are
  fold_in(key(seed), s), so (config.seed, step) is the RNG state.
  """
  step: jax.Array        # int32 []: steps taken, skipped ones included
  params: Any
  opt_state: Any
  ema_params: Any
  skipped: jax.Array     # int32 []: steps skipped for a non-finite loss or gradient
  loss_history: jax.Array  # float32 [T, HISTORY]: per-timestep losses, importance sampling
  loss_count: jax.Array    # int32 [T]: losses seen per timestep
  model_state: Any = dataclasses.field(default_factory=dict)  # the network's other collections
  # Parameter trees beside the trained ones (`Method.extra`): a distillation's frozen
  # "teacher", a consistency model's "target" network. Empty for a DDPM run.
  extra: Any = dataclasses.field(default_factory=dict)
  # Power-function EMAs of the parameters (Karras et al. 2024), one tree per σ_rel of
  # config.train.power_ema, by `config.power_ema_key`; empty when the run keeps none.
  power_emas: Any = dataclasses.field(default_factory=dict)

  def replace(self, **changes) -> "TrainState":
    return dataclasses.replace(self, **changes)


def learning_rate(config) -> optax.Schedule:
  """lr · min(1, step / warmup_steps), as in the authors' code; with decay_steps = D > 0 the lr
  then follows a half cosine from lr at step warmup_steps to 0 at step D (and stays 0):
  lr · (1 + cos(π (step − W) / (D − W))) / 2."""
  decay = config.get("decay_steps", 0)
  if decay:  # config.validate checks decay > warmup_steps
    return optax.warmup_cosine_decay_schedule(0.0, config.lr, config.warmup_steps, decay, 0.0)
  if config.warmup_steps <= 0:
    return optax.constant_schedule(config.lr)
  return optax.warmup_constant_schedule(0.0, config.lr, config.warmup_steps)


def make_optimizer(config) -> optax.GradientTransformation:
  """Gradient clipping by global norm, then Adam, from a config's `optim` section."""
  parts = []
  if config.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip))
  parts.append(optax.adam(learning_rate(config), b1=config.b1, b2=config.b2, eps=config.eps))
  return optax.chain(*parts)


def ema_decay(config, step: jax.Array) -> jax.Array:
  """config.ema_decay, warmed up as min(decay, (1 + step) / (10 + step)) when ema_warmup;
  `step` counts the updates applied before this one."""
  decay = jnp.float32(config.ema_decay)
  if config.get("ema_warmup", False):
    decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return decay


def create_state(run, mesh: Mesh, sample: dict[str, jax.Array],
                 variables: dict | None = None) -> TrainState:
  """A fresh state of a `runs.Run`'s network, created already placed on `mesh` as
  `state_shardings` says (no host copy of the parameters).

  `sample` holds one example batch: "x" [b, ..., C] and, for conditional
  models, "y" [b] and/or "cond". `variables` ({"params": ..., other
  collections}, e.g. a teacher's) replace the network's initial ones. The
  trees of the method's `extra` start as copies of the parameters.
  """
  init, key = _initializer(run, sample)
  if variables is not None:  # e.g. restored on one device: first onto the mesh, whole
    variables = jax.device_put(variables, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
  shardings = state_shardings(jax.eval_shape(init, key, variables), mesh, run.config)
  lowered = jax.jit(init, out_shardings=shardings).lower(key, variables)
  # A program that runs once, made of one inlined threefry per parameter: XLA:CPU took 8.3 s
  # to optimise the digits U-Net's and 4.0 s to compile it unoptimised (4% of the values
  # differ, by at most 2 float32 ulps; docs/benchmarks.md). Other backends as usual.
  cpu = mesh.devices.flat[0].platform == "cpu"
  options = {"xla_backend_optimization_level": 0} if cpu else None
  return lowered.compile(compiler_options=options)(key, variables)


def _initializer(run, sample):
  """(init(key, variables | None) -> TrainState, the key it is given)."""
  model, config = run.model, run.config
  tx = make_optimizer(config.optim)
  num_steps = run.diffusion.num_steps

  def init(key, given):
    if given is None:
      given = model.init(key, sample["x"], jnp.zeros(sample["x"].shape[:1], jnp.int32),
                         sample.get("y"), sample.get("cond"))
    variables = dict(given)
    params = variables.pop("params")
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
        ema_params=params, skipped=jnp.zeros((), jnp.int32),
        loss_history=jnp.zeros((num_steps, HISTORY), jnp.float32),
        loss_count=jnp.zeros((num_steps,), jnp.int32), model_state=variables,
        extra={name: params for name in run.method.extra},
        power_emas={power_ema_key(s): params for s in power_ema_sigmas(config)})

  return init, base_key(config.seed, "init")


def init_inputs(model, shape: tuple[int, ...]) -> dict[str, jax.Array]:
  """The inputs a network is initialised with for examples of `shape`: {"x": zeros [1, *shape],
  "y" (int [1], a class-conditional network), "cond" (a conditioned one)}."""
  sample = {"x": jnp.zeros((1, *shape))}
  if model.num_classes:
    sample["y"] = jnp.zeros((1,), jnp.int32)
  if model.cond_channels:
    sample["cond"] = jnp.zeros((1, *shape[:-1], model.cond_channels))
  return sample


def abstract_state(run, mesh: Mesh, sample) -> TrainState:
  """Shapes, dtypes and shardings of `create_state`'s result, for restoring a checkpoint."""
  init, key = _initializer(run, sample)
  shapes = jax.eval_shape(init, key, None)
  return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                               sharding=sharding),
                      shapes, state_shardings(shapes, mesh, run.config))


def state_shardings(shapes, mesh: Mesh, config):
  """The NamedSharding of each leaf of a state (or its shapes) on `mesh`: split over the
  "fsdp" axis by `distributed.fsdp_spec`, leaves smaller than config.mesh.min_shard_size
  elements replicated."""
  mesh_config = config.get("mesh") or {}
  return distributed.state_shardings(
      shapes, mesh, mesh_config.get("min_shard_size", distributed.MIN_SHARD_SIZE))
