"""The sharded train step, its state, and checkpoints."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from _tiny import tiny_config
from diffusion import models
from diffusion.data import DigitsSource, Loader
from diffusion.training import (
    Checkpoints, abstract_state, base_key, create_state, make_train_step, schedule_from_config,
    shard_batch, timestep_probs)


def mesh_of(n):
  return jax.make_mesh((n,), ("data",), devices=jax.devices()[:n])


_INITIAL = {}


def initial_state(config, mesh):
  """The tiny config's fresh state (created once: compiling init is slow), on `mesh`."""
  if "state" not in _INITIAL:
    model = models.from_config(config.model)
    _INITIAL["state"] = jax.device_get(
        create_state(model, config, mesh_of(1), {"x": jnp.zeros((1, 8, 8, 1))}))
  return jax.device_put(_INITIAL["state"], NamedSharding(mesh, P()))


def run_steps(config, mesh, batches):
  model = models.from_config(config.model)
  state = initial_state(config, mesh)
  step = make_train_step(model, schedule_from_config(config), config, mesh)
  metrics = []
  for batch in batches:
    state, m = step(state, shard_batch(batch, mesh), base_key(config.seed, "train"))
    metrics.append(m)
  return jax.device_get(state), jax.device_get(metrics)


def digit_batches(n, batch_size=16):
  stream = Loader(DigitsSource(), batch_size, seed=0, random_flip=False).batches()
  return [next(stream) for _ in range(n)]


def assert_trees_close(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, **tol)


@pytest.mark.parametrize("sampler", ["uniform", "importance"])
def test_eight_devices_give_the_parameters_of_one(sampler):
  assert jax.device_count() == 8
  config = tiny_config()
  config.diffusion.timestep_sampler = sampler
  batches = digit_batches(3)
  one, m1 = run_steps(config, mesh_of(1), batches)
  eight, m8 = run_steps(config, mesh_of(8), batches)
  assert int(eight.step) == 3 and int(eight.skipped) == 0
  np.testing.assert_allclose([m["loss"] for m in m8], [m["loss"] for m in m1], rtol=1e-5)
  assert_trees_close(eight.params, one.params, rtol=2e-4, atol=1e-6)
  assert_trees_close(eight.ema_params, one.ema_params, rtol=2e-4, atol=1e-6)
  np.testing.assert_array_equal(eight.loss_count, one.loss_count)
  assert int(eight.loss_count.sum()) == (48 if sampler == "importance" else 0)
  # Training moved the parameters, and the EMA trails them.
  init = _INITIAL["state"]
  moved = lambda a, b: max(float(np.abs(x - y).max()) for x, y in
                           zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert moved(one.params, init.params) > moved(one.ema_params, init.params) > 0


def test_importance_sampling_probabilities():
  state = initial_state(tiny_config(), mesh_of(1))
  np.testing.assert_allclose(timestep_probs(state), 1 / 20)  # not warm yet
  warm = state.replace(loss_count=jnp.full((20,), 10),
                       loss_history=jnp.broadcast_to(jnp.arange(1.0, 21.0)[:, None], (20, 10)))
  probs = np.asarray(timestep_probs(warm))
  want = np.arange(1, 21) / np.arange(1, 21).sum() * 0.999 + 0.001 / 20
  np.testing.assert_allclose(probs, want, rtol=1e-5)


class Poison(nn.Module):
  """ε_θ = w x, except NaN for the examples labelled 7."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, t, y=None, cond=None, train=False):
    w = self.param("w", nn.initializers.ones, ())
    return jnp.where((y == 7).reshape(-1, 1, 1, 1), jnp.nan, w * x)


def test_a_non_finite_gradient_skips_the_step_and_leaves_the_state():
  config = tiny_config(label_dropout=0.0)
  mesh = mesh_of(2)
  model = Poison()
  state = create_state(model, config, mesh, {"x": jnp.zeros((1, 8, 8, 1)),
                                              "y": jnp.zeros((1,), jnp.int32)})
  step = make_train_step(model, schedule_from_config(config), config, mesh)
  key = base_key(0, "train")
  clean = {"image": np.full((4, 8, 8, 1), 200, np.uint8), "label": np.array([1, 2, 3, 4])}
  poisoned = dict(clean, label=np.array([1, 7, 3, 4]))
  state, _ = step(state, shard_batch(clean, mesh), key)
  before = jax.device_get(state)
  state, metrics = step(state, shard_batch(poisoned, mesh), key)
  after = jax.device_get(state)
  assert int(metrics["skipped"]) == 1 and int(after.skipped) == 1 and int(after.step) == 2
  assert not np.isfinite(metrics["loss"])
  for name in ("params", "opt_state", "ema_params"):
    jax.tree.map(np.testing.assert_array_equal, getattr(after, name), getattr(before, name))
  state, metrics = step(state, shard_batch(clean, mesh), key)
  assert int(metrics["skipped"]) == 0
  assert float(jax.device_get(state).params["w"]) != float(after.params["w"])


def test_steps_per_dispatch_equals_single_steps():
  config = tiny_config()
  batches = digit_batches(4)
  single, _ = run_steps(config, mesh_of(1), batches)
  config = tiny_config(steps_per_dispatch=2)
  stacked = [{k: np.stack([a[k], b[k]]) for k in a} for a, b in zip(batches[::2], batches[1::2])]
  model = models.from_config(config.model)
  mesh = mesh_of(1)
  state = initial_state(config, mesh)
  step = make_train_step(model, schedule_from_config(config), config, mesh)
  for batch in stacked:
    state, metrics = step(state, shard_batch(batch, mesh, stacked=True), base_key(0, "train"))
  state = jax.device_get(state)
  assert int(state.step) == 4
  assert_trees_close(state.params, single.params, rtol=1e-5, atol=1e-6)


def test_checkpoints_restore_onto_another_number_of_devices(tmp_path):
  config = tiny_config()
  model = models.from_config(config.model)
  sample = {"x": jnp.zeros((1, 8, 8, 1))}
  state = initial_state(config, mesh_of(8))
  checkpoints = Checkpoints(str(tmp_path), every=1)
  checkpoints.save(1, state, 16, config, force=True)
  checkpoints.close()
  # A leftover of an interrupted save is not a checkpoint.
  os.makedirs(tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1234" / "state")
  again = Checkpoints(str(tmp_path), every=1)
  assert again.latest_step() == 1
  for n in (1, 2):
    restored, position = again.restore(1, abstract_state(model, config, mesh_of(n), sample))
    assert position == 16 and restored.params["conv_in"]["kernel"].sharding.mesh.size == n
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), state)
  assert again.restore_config(1).model.ch == 16
  jax.tree.map(np.testing.assert_array_equal, again.restore_params(1), state.ema_params)
  again.close()


def test_learned_variances_hybrid_loss_v_prediction_and_classes():
  """The improved-DDPM objective, class-conditional with label dropout, trains."""
  config = tiny_config(label_dropout=0.5)
  config.model.learned_variance = True
  config.model.num_classes = 10
  config.diffusion.update(dict(variance="learned_range", loss="hybrid", prediction="v",
                               timestep_sampler="importance"))
  model = models.from_config(config.model)
  mesh = mesh_of(2)
  state = create_state(model, config, mesh, {"x": jnp.zeros((1, 8, 8, 1)),
                                              "y": jnp.zeros((1,), jnp.int32)})
  step = make_train_step(model, schedule_from_config(config), config, mesh)
  for batch in digit_batches(2):
    state, metrics = step(state, shard_batch(batch, mesh), base_key(0, "train"))
  metrics = jax.device_get(metrics)
  assert {"loss", "mse", "vb"} <= set(metrics) and np.isfinite(metrics["loss"])
  assert metrics["loss"] > metrics["mse"] > 0 and int(metrics["skipped"]) == 0
  assert jax.device_get(state).params["class_embed"]["embedding"].shape == (11, 64)
