"""The sharded train step (Algorithm 1): `(state, batch, key) -> (state, metrics)`.

Written for the global batch and compiled with `jax.jit` over the mesh: the
state is replicated or split over the "fsdp" axis (`state_shardings`), the
batch is split over every device, and XLA's SPMD partitioner inserts the
collectives: the gradient's all-reduce; with fsdp also an all-gather of each
parameter where the network uses it (the step asks for the parameters whole
there, and for the gradient on their shards). The network is called once per
batch. Every random draw of example i of the global batch at step s (its t,
its ε, whether its label is dropped) uses the key fold_in(fold_in(key, s), i),
and dropout draws one mask for the global batch with JAX's partitionable
threefry, so the result does not depend on how many devices or processes
share the batch (up to the order of floating-point sums). Networks that keep
batch statistics, or draw randomness of their own in another way, are outside
that guarantee.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffusion import platforms, power_ema
from diffusion.config import power_ema_key, power_ema_sigmas
from diffusion.distributed import BATCH
from diffusion.methods import Nets, Step
from diffusion.training.state import TrainState, ema_decay, learning_rate, make_optimizer

def make_train_step(run, mesh: Mesh, state_sharding=None
                    ) -> Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, dict]]:
  """The jitted, sharded step of a `runs.Run`: its method's loss (`run.method`: DDPM's, a
  distillation's, consistency training's) on its network, with the `optim` and `train`
  sections of its config.

  The returned function takes the state, placed as `state_sharding` says (a
  tree of shardings, e.g. `state_shardings`' split over the "fsdp" axis;
  default: replicated), a batch {"x": [B, *shape] data (uint8 or float, see
  `DataSpec`), "label": int [B], optionally "cond"} split over every device
  (`distributed.BATCH`), and the base key; it donates the state and returns it
  placed as it came. With config.train.steps_per_dispatch = k > 1 the batch holds k
  stacked batches ([k, B, ...]) and k steps run in one `lax.scan`. For point
  sets, data, noise and the network's prediction are centred (`DataSpec.project`).
  The method's extra parameter trees (a teacher, a target network) travel in `state.extra`;
  the power-function EMAs of config.train.power_ema in `state.power_emas`.
  """
  train, method, model = run.config.train, run.method, run.model
  tx = make_optimizer(run.config.optim)
  lr = learning_rate(run.config.optim)
  conditional = model.num_classes > 0
  spec = run.diffusion.spec
  gammas = {power_ema_key(s): power_ema.gamma_of(s) for s in power_ema_sigmas(run.config)}

  def frozen(state, labels, cond, dropout_key=None):
    """The tree `name` of state.extra as a network: in inference mode, or with `dropout_key`
    in training mode with the student's dropout draws (its collection updates dropped)."""
    def network(name):
      def apply(x_t, t_):
        variables = {"params": state.extra[name], **state.model_state}
        y = labels if conditional else None
        if dropout_key is None:
          out = model(variables, x_t, t_, y, cond)
        else:
          out, _ = model.train_apply(variables, x_t, t_, y, cond, dropout_key)
        return jax.lax.stop_gradient(spec.project_output(out, x_t.shape[-1]))
      return apply
    return network

  def one_step(state: TrainState, batch, key):
    state = method.prepare(state, tx)
    data = batch["x"]
    size = data.shape[0]
    step_key = jax.random.fold_in(key, state.step)
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(size))
    labels = method.labels(keys, batch["label"], model.num_classes)
    x0 = spec.project(spec.to_model(data))
    cond = spec.to_model(batch["cond"]) if "cond" in batch else None
    dropout_key = jax.random.fold_in(step_key, np.uint32(2**32 - 1))  # no example's index

    def loss_fn(params):
      if gather:  # fsdp: each parameter gathered whole where the network needs it, once a step
        params = jax.lax.with_sharding_constraint(params, replicated)
      updates = {}

      def student(x_t, t_):
        out, new = model.train_apply({"params": params, **state.model_state}, x_t, t_,
                                     labels if conditional else None, cond, dropout_key)
        updates.update(new)
        return spec.project_output(out, x_t.shape[-1])

      nets = Nets(student, frozen(state, labels, cond), frozen(state, labels, cond, dropout_key))
      losses = method.losses(Step(x0, keys, step_key, state, nets))
      return jnp.sum(losses["loss"]) / size, (losses, updates)

    (loss, (losses, collections)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if gather:  # and its gradient reduced onto its shards
      grads = jax.lax.with_sharding_constraint(grads, state_sharding.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    # The schedules follow the updates applied, as Optax's own count does: a skipped step
    # advances neither the learning rate's warm-up nor the EMA's (and a progressive round
    # restarts them: `Method.local_step`).
    applied = method.local_step(state.step, state.step - state.skipped)

    def update(_):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      decay = ema_decay(train, applied)
      ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
      history, count = method.record(state, losses)
      extra = method.update_extra(state.extra, params, state.step)
      # Update t = 1, 2, ... of the applied ones: β_t = (1 − 1/t)^{γ+1} (`power_ema.beta`).
      t = (state.step - state.skipped + 1).astype(jnp.float32)
      powers = {name: jax.tree.map(
          lambda e, p, b=power_ema.beta(t, gammas[name]): b * e + (1 - b) * p, tree, params)
          for name, tree in state.power_emas.items()}
      return (params, opt_state, ema, history, count, {**state.model_state, **collections},
              extra, powers)

    def skip(_):
      return (state.params, state.opt_state, state.ema_params, state.loss_history,
              state.loss_count, state.model_state, state.extra, state.power_emas)

    # A branch, not a select per leaf: a skipped step costs nothing and a normal step does
    # not read every tree twice.
    params, opt_state, ema, history, count, model_state, extra, powers = jax.lax.cond(
        finite, update, skip, None)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
        skipped=state.skipped + (~finite).astype(jnp.int32),
        loss_history=history, loss_count=count, model_state=model_state, extra=extra,
        power_emas=powers)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr(applied),
               "skipped": (~finite).astype(jnp.int32)}
    for name in ("mse", "vb", "round", "points"):
      if name in losses:
        metrics[name] = jnp.mean(losses[name])
    return new_state, metrics

  def multi_step(state, batch, key):
    if train.get("steps_per_dispatch", 1) == 1:
      return one_step(state, batch, key)
    # XLA:CPU runs a while loop's body about 20x slower than the same ops unrolled (digits,
    # 2 steps a dispatch: 24 against 447 images/s; docs/benchmarks.md): unroll there.
    unroll = True if platforms.current() == "cpu" else 1
    state, metrics = jax.lax.scan(lambda s, b: one_step(s, b, key), state, batch, unroll=unroll)
    skipped = jnp.sum(metrics.pop("skipped"))
    return state, {**jax.tree.map(jnp.mean, metrics), "skipped": skipped}

  replicated = NamedSharding(mesh, P())
  state_sharding = replicated if state_sharding is None else state_sharding
  # Left to XLA's propagation, parameters split over "fsdp" made it reshard the activations
  # instead: CelebA-HQ 256 planned on a v5p-16 at fsdp 8, 999 collective-permutes and 66
  # all-to-alls a step, twice the temporaries, and 585 estimated images/s against 1,268 with
  # the parameters asked whole (docs/benchmarks.md, "Planned on TPU topologies").
  gather = mesh.shape.get("fsdp", 1) > 1 and not isinstance(state_sharding, NamedSharding)
  data = NamedSharding(mesh, BATCH if train.get("steps_per_dispatch", 1) == 1
                       else P(None, *BATCH))
  return jax.jit(platforms.traced_for(mesh, multi_step),
                 in_shardings=(state_sharding, data, replicated),
                 out_shardings=(state_sharding, replicated), donate_argnums=0)


def abstract_batch(run, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The shapes, dtypes and shardings of the global batches `ddpm train` gives the step of
  `make_train_step` ([k, B, ...] with k = config.train.steps_per_dispatch > 1), for lowering
  it without data."""
  spec, k = run.diffusion.spec, run.config.train.get("steps_per_dispatch", 1)
  lead = (run.config.train.batch_size,) if k == 1 else (k, run.config.train.batch_size)
  sharding = NamedSharding(mesh, BATCH if k == 1 else P(None, *BATCH))
  dtype = jnp.uint8 if spec.dtype == "uint8" else jnp.float32
  shaped = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
  batch = {"x": shaped((*lead, *spec.shape), dtype), "label": shaped(lead, jnp.int32)}
  channels = run.model.cond_channels
  if channels:
    batch["cond"] = shaped((*lead, *spec.shape[:-1], channels), dtype)
  return batch


def shard_batch(batch: dict[str, Any], mesh: Mesh, stacked: bool = False) -> dict[str, jax.Array]:
  """This process's rows of a global batch -> global arrays split over every device.

  With `stacked`, arrays are [k, B_local, ...] (k steps per dispatch).
  """
  sharding = jax.sharding.NamedSharding(mesh, P(None, *BATCH) if stacked else BATCH)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
