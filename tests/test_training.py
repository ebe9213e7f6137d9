"""The sharded train step, its state, and checkpoints."""

import json
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
from diffusion.distributed import bytes_per_device, make_mesh, mesh_from_config
from diffusion.runs import build
from diffusion.training import (
    Checkpoints, abstract_state, base_key, create_state, make_train_step, shard_batch,
    state_shardings, timestep_probs)


def mesh_of(n):
  return make_mesh(jax.devices()[:n])


_INITIAL = {}


def initial_state(config, mesh):
  """The tiny config's fresh state (created once: compiling init is slow), on `mesh`."""
  if "state" not in _INITIAL:
    model = models.from_config(config.model)
    _INITIAL["state"] = jax.device_get(
        create_state(build(config, model), mesh_of(1), {"x": jnp.zeros((1, 8, 8, 1))}))
  return jax.device_put(_INITIAL["state"], NamedSharding(mesh, P()))


def run_steps(config, mesh, batches):
  model = models.from_config(config.model)
  state = initial_state(config, mesh)
  step = make_train_step(build(config, model), mesh)
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


_EIGHT = {}


def eight_device_run(sampler="uniform"):
  """(state, metrics) of the tiny config's 3 steps on 8 devices (computed once per sampler)."""
  if sampler not in _EIGHT:
    config = tiny_config()
    config.diffusion.timestep_sampler = sampler
    _EIGHT[sampler] = run_steps(config, mesh_of(8), digit_batches(3))
  return _EIGHT[sampler]


@pytest.mark.parametrize("sampler", ["uniform", "importance"])
def test_eight_devices_give_the_parameters_of_one(sampler):
  assert jax.device_count() == 8
  config = tiny_config()
  config.diffusion.timestep_sampler = sampler
  batches = digit_batches(3)
  one, m1 = run_steps(config, mesh_of(1), batches)
  eight, m8 = eight_device_run(sampler)
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


def test_recording_losses_equals_pushing_them_one_by_one():
  """The vectorised ring buffer against a serial loop: duplicates of a timestep in batch order,
  more of one timestep than the buffer holds, and buffers that wrap around."""
  from types import SimpleNamespace
  from diffusion.methods import HISTORY, record_losses
  rng = np.random.default_rng(0)
  record = jax.jit(lambda h, c, t, l: record_losses(
      SimpleNamespace(loss_history=h, loss_count=c), t, l))
  for batch, num_steps, spread in ((64, 20, 20), (300, 20, 3), (17, 6, 6)):
    history = rng.normal(size=(num_steps, HISTORY)).astype(np.float32)
    count = rng.integers(0, 35, num_steps).astype(np.int32)
    t = rng.integers(0, spread, batch).astype(np.int32)
    losses = rng.normal(size=batch).astype(np.float32)
    want_history, want_count = history.copy(), count.copy()
    for ti, li in zip(t, losses):
      want_history[ti, want_count[ti] % HISTORY] = li
      want_count[ti] += 1
    got_history, got_count = jax.device_get(record(history, count, t, losses))
    np.testing.assert_array_equal(got_count, want_count)
    np.testing.assert_array_equal(got_history, want_history)


class HalfSolved(nn.Module):
  """ε_θ(x_t, t): 0 for t < T/2 (loss E|ε|² = 1), the exact ε of x0 = 0 above (loss ≈ 0)."""
  sqrt_one_minus_alphas_cumprod: tuple
  num_classes: int = 0

  @nn.compact
  def __call__(self, x, t, train=False):
    w = self.param("w", nn.initializers.ones, ())
    table = jnp.asarray(self.sqrt_one_minus_alphas_cumprod)
    num_steps = table.shape[0]
    scale = jnp.where(t < num_steps // 2, 0.0, 1.0 / table[t]).reshape(-1, 1, 1, 1)
    return w * scale * x


def test_importance_sampled_loss_is_unbiased_and_the_history_wraps():
  """On a warm state whose history makes p_t ∝ t + 3, the weighted loss Σ w_i L_i / B with
  w = 1 / (T p_t) estimates the uniform mean over t, (10 · 1 + 10 · 0) / 20 = 0.5 (standard
  error 0.02 for 2048 examples); unweighted it would be Σ_{t<10} p_t ≈ 0.3. Every timestep
  is drawn more than HISTORY times, so each buffer wraps and holds only the new losses."""
  from diffusion.config import schedule_from_config
  from diffusion.methods import HISTORY
  config = tiny_config(batch_size=2048)
  config.diffusion.timestep_sampler = "importance"
  schedule = schedule_from_config(config)
  model = HalfSolved(tuple(np.asarray(schedule.sqrt_one_minus_alphas_cumprod).tolist()))
  mesh = mesh_of(2)
  state = create_state(build(config, model), mesh, {"x": jnp.zeros((1, 8, 8, 1))})
  old = jnp.broadcast_to(jnp.arange(3.0, 23.0)[:, None], (20, HISTORY))
  state = state.replace(loss_history=old, loss_count=jnp.full((20,), HISTORY, jnp.int32))
  probs = np.asarray(timestep_probs(jax.device_get(state)))
  biased = probs[:10].sum()
  step = make_train_step(build(config, model), mesh)
  batch = {"x": np.full((2048, 8, 8, 1), 127, np.uint8), "label": np.zeros(2048, np.int32)}
  state, metrics = step(state, shard_batch(batch, mesh), base_key(0, "train"))
  state, metrics = jax.device_get((state, metrics))
  assert biased < 0.31
  assert abs(float(metrics["loss"]) - 0.5) < 0.08, (float(metrics["loss"]), biased)
  assert int(state.loss_count.sum()) == 20 * HISTORY + 2048
  assert np.all(state.loss_count - HISTORY > HISTORY)  # every buffer wrapped
  history = state.loss_history
  assert np.all(np.abs(history[:10] - 1) < 0.8) and np.all(history[10:] < 0.01)


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
  state = create_state(build(config, model), mesh, {"x": jnp.zeros((1, 8, 8, 1)),
                                              "y": jnp.zeros((1,), jnp.int32)})
  step = make_train_step(build(config, model), mesh)
  key = base_key(0, "train")
  clean = {"x": np.full((4, 8, 8, 1), 200, np.uint8), "label": np.array([1, 2, 3, 4])}
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

  # The skipped step shifted neither schedule: this third step is the second update, so its
  # learning rate is the warm-up's at one update done (Optax's own counts say 2 after it),
  # and its EMA decay the warm-up's min(0.9, (1 + 1) / (10 + 1)).
  config = tiny_config()
  assert float(metrics["lr"]) == pytest.approx(config.optim.lr / config.optim.warmup_steps,
                                                rel=1e-4)
  assert {int(c) for c in jax.tree.leaves(jax.device_get(state.opt_state))
          if np.ndim(c) == 0 and np.issubdtype(np.asarray(c).dtype, np.integer)} == {2}
  last = jax.device_get(state)
  w, ema, ema_before = (float(last.params["w"]), float(last.ema_params["w"]),
                        float(after.ema_params["w"]))
  assert (ema - w) / (ema_before - w) == pytest.approx(2 / 11, rel=0.02)  # float32 rounding


def test_steps_per_dispatch_equals_single_steps():
  config = tiny_config()
  batches = digit_batches(4)
  single, _ = run_steps(config, mesh_of(1), batches)
  config = tiny_config(steps_per_dispatch=2)
  stacked = [{k: np.stack([a[k], b[k]]) for k in a} for a, b in zip(batches[::2], batches[1::2])]
  model = models.from_config(config.model)
  mesh = mesh_of(1)
  state = initial_state(config, mesh)
  step = make_train_step(build(config, model), mesh)
  for batch in stacked:
    state, metrics = step(state, shard_batch(batch, mesh, stacked=True), base_key(0, "train"))
  state = jax.device_get(state)
  assert int(state.step) == 4
  assert_trees_close(state.params, single.params, rtol=1e-5, atol=1e-6)


def test_a_data_by_fsdp_mesh_splits_the_state_and_steps_as_data_parallelism(tmp_path):
  """4 x 2 (data x fsdp) on 8 devices: each device holds about half of the state, a step gives
  the 8 x 1 step's state, and its checkpoint restores onto 8 x 1 and 1 x 1."""
  config = tiny_config()
  config.mesh.update(fsdp=2, min_shard_size=256)
  model = models.from_config(config.model)
  sample = {"x": jnp.zeros((1, 8, 8, 1))}
  mesh42 = mesh_from_config(config)
  assert dict(mesh42.shape) == {"data": 4, "fsdp": 2}
  host = initial_state(config, mesh_of(1))
  sharding = state_shardings(host, mesh42, config)
  state = jax.device_put(jax.device_get(host), sharding)
  # About half of the parameters, Adam moments and EMA on each device; small leaves whole.
  total = sum(x.nbytes for x in jax.tree.leaves(state))
  held = bytes_per_device(state)
  assert len(held) == 8 and 0.5 <= max(held.values()) / total < 0.56, max(held.values()) / total
  kernel = state.params["conv_in"]["kernel"]  # [3, 3, 1, 16]: 144 elements, kept whole
  assert kernel.sharding.is_fully_replicated
  assert not state.opt_state[1][0].mu["down_0_res_0"]["conv1"]["kernel"].sharding \
      .is_fully_replicated
  step = make_train_step(build(config, model), mesh42, sharding)
  for batch in digit_batches(3):
    state, _ = step(state, shard_batch(batch, mesh42), base_key(config.seed, "train"))
  assert jax.tree.map(lambda a: a.sharding, state) == sharding
  data_parallel, _ = eight_device_run()
  assert_trees_close(jax.device_get(state.params), data_parallel.params, rtol=1e-4, atol=1e-6)
  assert_trees_close(jax.device_get(state.ema_params), data_parallel.ema_params, rtol=1e-4,
                     atol=1e-6)
  checkpoints = Checkpoints(str(tmp_path), every=1)
  checkpoints.save(3, state, 48, config, force=True)
  checkpoints.close()
  again = Checkpoints(str(tmp_path), every=1)
  saved = jax.device_get(state)
  for n in (8, 1):
    restored, position = again.restore(
        3, abstract_state(build(tiny_config(), model), mesh_of(n), sample))
    assert position == 48 and restored.params["down_0_res_0"]["conv1"]["kernel"] \
        .sharding.is_fully_replicated
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), saved)
  again.close()


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
    restored, position = again.restore(1, abstract_state(build(config, model), mesh_of(n), sample))
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
  state = create_state(build(config, model), mesh, {"x": jnp.zeros((1, 8, 8, 1)),
                                              "y": jnp.zeros((1,), jnp.int32)})
  step = make_train_step(build(config, model), mesh)
  for batch in digit_batches(2):
    state, metrics = step(state, shard_batch(batch, mesh), base_key(0, "train"))
  metrics = jax.device_get(metrics)
  assert {"loss", "mse", "vb"} <= set(metrics) and np.isfinite(metrics["loss"])
  assert metrics["loss"] > metrics["mse"] > 0 and int(metrics["skipped"]) == 0
  assert jax.device_get(state).params["class_embed"]["embedding"].shape == (11, 64)


def test_cosine_decay_of_the_learning_rate_and_its_checks():
  """optim.decay_steps = D: linear warm-up to lr over W steps, then lr (1 + cos(pi (s - W) /
  (D - W))) / 2 down to 0 at D, computed here with math.cos; 0 keeps the constant lr. A decay
  that ends before the warm-up is a config error, and a run saved before the key existed
  resumes under decay_steps = 0 only."""
  import math
  import ml_collections
  from diffusion.config import load_config, resume_differences, validate
  from diffusion.training.state import learning_rate
  optim = ml_collections.ConfigDict({"lr": 2e-3, "warmup_steps": 100, "decay_steps": 1100})
  lr = learning_rate(optim)
  for s in (0, 50, 100, 350, 600, 1099, 1100, 2000):
    expected = (2e-3 * s / 100 if s < 100 else
                2e-3 * (1 + math.cos(math.pi * min(s - 100, 1000) / 1000)) / 2)
    assert float(lr(s)) == pytest.approx(expected, rel=1e-5, abs=1e-9), s
  optim.decay_steps = 0
  assert float(learning_rate(optim)(5000)) == pytest.approx(2e-3)
  config = load_config("experiments/configs/digits.py")
  config.optim.update(warmup_steps=200, decay_steps=100)
  with pytest.raises(ValueError, match=r"config.optim.decay_steps \(100\) must exceed "
                                       r"config.optim.warmup_steps \(200\)"):
    validate(config)
  saved = json.loads(config.to_json())
  del saved["optim"]["decay_steps"]
  config.optim.decay_steps = 0
  assert resume_differences(saved, config) == []
  config.optim.decay_steps = 3000
  assert resume_differences(saved, config) == ["optim.decay_steps: '(absent)' -> 3000"]


def test_one_cpu_device_per_core_unless_told_otherwise():
  """`use_cpu_cores` gives the CPU as many JAX devices as cores (capped, and dividing the batch);
  an explicit XLA_FLAGS count wins. Each case in a fresh process: the count is fixed once JAX's
  backends start."""
  import subprocess
  import sys
  code = ("from diffusion import distributed; import jax; "
          "n = distributed.use_cpu_cores({}); print(n, jax.device_count())")
  cores = min(len(os.sched_getaffinity(0)), 8)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

  def run(batch, **extra):
    out = subprocess.run([sys.executable, "-c", code.format(batch)], env={**env, **extra},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    return tuple(int(v) for v in out.stdout.split())

  expected = max(d for d in range(1, cores + 1) if 64 % d == 0)
  assert run(64) == ((expected, expected) if expected > 1 else (0, 1))
  assert run(7 * 11 * 13) == (0, 1) or cores >= 7  # no count above 1 divides 1001 below 7
  assert run(64, XLA_FLAGS="--xla_force_host_platform_device_count=3") == (0, 3)
