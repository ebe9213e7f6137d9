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

from diffusion import platforms
from diffusion.config import data_spec
from diffusion.distributed import BATCH
from diffusion.losses import training_losses
from diffusion.models import as_denoiser
from diffusion.schedules import Schedule
from diffusion.training import objectives
from diffusion.training.state import HISTORY, TrainState, ema_decay, learning_rate, make_optimizer

UNIFORM_MIX = 0.001  # improved DDPM keeps this much of the uniform distribution


def timestep_probs(state: TrainState) -> jax.Array:
  """Importance sampling of t (improved DDPM, Sec. 3.3): p_t ∝ sqrt(E[L_t²]).

  Uniform until every t has HISTORY losses. Returns float32 [T].
  """
  num_steps = state.loss_count.shape[0]
  second_moment = jnp.sqrt(jnp.mean(state.loss_history ** 2, axis=1))
  probs = second_moment / jnp.sum(second_moment)
  probs = probs * (1 - UNIFORM_MIX) + UNIFORM_MIX / num_steps
  warm = jnp.all(state.loss_count >= HISTORY) & jnp.all(jnp.isfinite(probs))
  return jnp.where(warm, probs, 1.0 / num_steps)


def _record_losses(state: TrainState, t: jax.Array, losses: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pushes each (t_i, loss_i) into the ring buffer of its timestep, in batch order.

  t: int [B], losses: float32 [B]. One scatter with the result of pushing the
  pairs one by one: the i-th occurrence of a timestep in the batch goes to
  slot (count + i) mod HISTORY, and of a timestep drawn more than HISTORY
  times only the last HISTORY occurrences are written (the earlier ones would
  be overwritten), so no two writes share a slot, whose order XLA leaves undefined.
  """
  num_steps = state.loss_count.shape[0]
  order = jnp.argsort(t, stable=True)
  sorted_t = t[order]
  first = jnp.searchsorted(sorted_t, sorted_t, side="left")
  rank = jnp.zeros_like(t).at[order].set(jnp.arange(t.shape[0]) - first)  # occurrence number
  drawn = jnp.bincount(t, length=num_steps)
  kept = rank >= drawn[t] - HISTORY
  slot = (state.loss_count[t] + rank) % HISTORY
  row = jnp.where(kept, t, num_steps)  # out of bounds: dropped
  history = state.loss_history.at[row, slot].set(losses, mode="drop")
  return history, state.loss_count + drawn.astype(state.loss_count.dtype)


def make_train_step(model, schedule: Schedule, config, mesh: Mesh, state_sharding=None
                    ) -> Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, dict]]:
  """The jitted, sharded step for a config's `diffusion`, `optim` and `train` sections.

  `model` is a `diffusion.models.Denoiser` (or a module `as_denoiser` adapts).
  The returned function takes the state, placed as `state_sharding` says (a
  tree of shardings, e.g. `state_shardings`' split over the "fsdp" axis;
  default: replicated), a batch {"x": [B, *shape] data (uint8 or float, see
  `DataSpec`), "label": int [B], optionally "cond"} split over every device
  (`distributed.BATCH`), and the base key; it donates the state and returns it
  placed as it came. With config.train.steps_per_dispatch = k > 1 the batch holds k
  stacked batches ([k, B, ...]) and k steps run in one `lax.scan`. For point
  sets, data, noise and the network's prediction are centred (`DataSpec.project`).
  With config.distill.method set, the step minimises that objective
  (`objectives.py`: progressive or consistency distillation, consistency
  training) with the teacher and target parameters of `state.extra`.
  """
  d, train = config.diffusion, config.train
  model = as_denoiser(model, config.model)
  tx = make_optimizer(config.optim)
  lr = learning_rate(config.optim)
  importance = d.get("timestep_sampler", "uniform") == "importance"
  conditional = model.num_classes > 0
  spec = data_spec(config)
  label_dropout = train.get("label_dropout", 0.0)
  objective = objectives.make(config, schedule, spec.project) if objectives.method(config) else None

  def example_draws(key, label, probs, shape):
    """One example's t, ε and label, all of its randomness from `key`."""
    # Four keys, the third once dropout's (now drawn per global batch): the draws stay as they were.
    key_t, key_loss, _, key_label = jax.random.split(key, 4)
    t = jax.random.choice(key_t, schedule.num_steps, (1,), p=probs) if importance else \
        jax.random.randint(key_t, (1,), 0, schedule.num_steps)
    noise = spec.project(jax.random.normal(jax.random.split(key_loss)[1], (1, *shape))[0])
    if conditional:  # classifier-free guidance: drop the label to the null class
      label = jnp.where(jax.random.bernoulli(key_label, label_dropout), model.num_classes, label)
    return t[0], noise, label

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
    if objective is not None:
      state = objective.prepare(state, tx)
    data = batch["x"]
    size = data.shape[0]
    step_key = jax.random.fold_in(key, state.step)
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(size))
    probs = timestep_probs(state)
    t, noise, labels = jax.vmap(lambda k, y: example_draws(k, y, probs, data.shape[1:]))(
        keys, batch["label"])
    if objective is not None:
      labels = batch["label"]  # a distillation keeps every label (no guidance dropout)
    x0 = spec.project(spec.to_model(data))
    cond = spec.to_model(batch["cond"]) if "cond" in batch else None
    dropout_key = jax.random.fold_in(step_key, np.uint32(2**32 - 1))  # no example's index

    def loss_fn(params):
      if gather:  # fsdp: each parameter gathered whole where the network needs it, once a step
        params = jax.lax.with_sharding_constraint(params, replicated)
      updates = {}

      def denoise(x_t, t_):
        out, new = model.train_apply({"params": params, **state.model_state}, x_t, t_,
                                     labels if conditional else None, cond, dropout_key)
        updates.update(new)
        return spec.project_output(out, x_t.shape[-1])

      if objective is not None:
        nets = objectives.Nets(denoise, frozen(state, labels, cond),
                               frozen(state, labels, cond, dropout_key))
        losses = objective.losses(nets, x0, keys, state.step)
        return jnp.sum(losses["loss"]) / size, (losses, updates)
      losses = training_losses(denoise, schedule, x0, step_key, loss=d.loss,
                               prediction=d.prediction, variance=d.variance, t=t, noise=noise,
                               vlb_weight=d.get("vlb_weight", 0.001))
      weights = 1.0 / (schedule.num_steps * probs[losses["t"]]) if importance else 1.0
      return jnp.sum(weights * losses["loss"]) / size, (losses, updates)

    (loss, (losses, collections)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if gather:  # and its gradient reduced onto its shards
      grads = jax.lax.with_sharding_constraint(grads, state_sharding.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    # The schedules follow the updates applied, as Optax's own count does: a skipped step
    # advances neither the learning rate's warm-up nor the EMA's.
    applied = state.step - state.skipped
    if objective is not None:  # a progressive round restarts the schedules
      applied = objective.local_step(state.step, applied)

    def update(_):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      decay = ema_decay(train, applied)
      ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
      history, count = state.loss_history, state.loss_count
      if importance:
        history, count = _record_losses(state, losses["t"], losses["loss"])
      extra = state.extra
      if objective is not None:
        extra = objective.update_extra(state.extra, params, state.step)
      return params, opt_state, ema, history, count, {**state.model_state, **collections}, extra

    def skip(_):
      return (state.params, state.opt_state, state.ema_params, state.loss_history,
              state.loss_count, state.model_state, state.extra)

    # A branch, not a select per leaf: a skipped step costs nothing and a normal step does
    # not read every tree twice.
    params, opt_state, ema, history, count, model_state, extra = jax.lax.cond(
        finite, update, skip, None)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
        skipped=state.skipped + (~finite).astype(jnp.int32),
        loss_history=history, loss_count=count, model_state=model_state, extra=extra)
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


def abstract_batch(config, model, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The shapes, dtypes and shardings of the global batches `ddpm train` gives the step of
  `make_train_step` ([k, B, ...] with k = config.train.steps_per_dispatch > 1), for lowering
  it without data."""
  spec, k = data_spec(config), config.train.get("steps_per_dispatch", 1)
  lead = (config.train.batch_size,) if k == 1 else (k, config.train.batch_size)
  sharding = NamedSharding(mesh, BATCH if k == 1 else P(None, *BATCH))
  dtype = jnp.uint8 if spec.dtype == "uint8" else jnp.float32
  shaped = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
  batch = {"x": shaped((*lead, *spec.shape), dtype), "label": shaped(lead, jnp.int32)}
  channels = as_denoiser(model, config.model).cond_channels
  if channels:
    batch["cond"] = shaped((*lead, *spec.shape[:-1], channels), dtype)
  return batch


def shard_batch(batch: dict[str, Any], mesh: Mesh, stacked: bool = False) -> dict[str, jax.Array]:
  """This process's rows of a global batch -> global arrays split over every device.

  With `stacked`, arrays are [k, B_local, ...] (k steps per dispatch).
  """
  sharding = jax.sharding.NamedSharding(mesh, P(None, *BATCH) if stacked else BATCH)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
