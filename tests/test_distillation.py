"""Few-step models: progressive distillation, consistency distillation and training.

The equations against independent computations (two DDIM steps, the exact
consistency function of Gaussian data), then the engine: a student trained by
the train step matches its teacher's chain, 8 devices compute what 1 does, and a
resumed distillation is bit-exact, across a round's teacher swap.
"""

import math
import os
import re
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import diffusion
from _tiny import tiny_config
from diffusion import consistency, edm, methods, models, progressive, samplers
from diffusion.config import diffusion_of
from diffusion.samplers import consistency as consistency_sampler
from diffusion.distributed import make_mesh
from diffusion.reverse import ddim_step
from diffusion.training import base_key, create_state, make_train_step, shard_batch, train
from diffusion.runs import Checkpoints, load_run
from diffusion.training.distill import student_config
from diffusion.runs import build

SCHEDULE = diffusion.make_schedule("linear", 1000)


def test_progressive_target_makes_one_student_step_land_on_two_teacher_steps():
  """x̃ (Algorithm 2) put into one DDIM step from z_t gives the teacher's z'' exactly."""
  key = jax.random.key(0)
  z = jax.random.normal(key, (6, 4, 4, 2))
  teacher = lambda x, t: jnp.tanh(x * 0.7 + t[:, None, None, None] / 500.0)  # any x̂_0
  t = jnp.array([999, 600, 300, 100, 40, 10])
  t_mid = jnp.array([800, 450, 200, 60, 20, 4])
  t_next = jnp.array([600, 300, 100, -1, 10, -1])
  x_tilde = progressive.target(SCHEDULE, teacher, z, t, t_mid, t_next)
  # The teacher's two steps, written out: DDIM eq. (12) with η = 0, x̂_0 given.
  def ddim(x0, z, t, s):
    a = lambda u: jnp.where(u < 0, 1.0, SCHEDULE.alphas_cumprod[jnp.maximum(u, 0)])
    shape = (-1, 1, 1, 1)
    eps = (z - jnp.sqrt(a(t)).reshape(shape) * x0) / jnp.sqrt(1 - a(t)).reshape(shape)
    return jnp.sqrt(a(s)).reshape(shape) * x0 + jnp.sqrt(1 - a(s)).reshape(shape) * eps
  z_mid = ddim(teacher(z, t), z, t, t_mid)
  z_next = ddim(teacher(z_mid, t_mid), z_mid, t_mid, t_next)
  np.testing.assert_allclose(ddim(x_tilde, z, t, t_next), z_next, atol=2e-5)
  student = ddim_step(SCHEDULE, x_tilde, z, t, t_next, None, prediction="x0", clip_x0=False)[0]
  np.testing.assert_allclose(student, z_next, atol=2e-5)


def test_progressive_grids_halve_down_to_the_student():
  assert progressive.rounds(64, 1) == 6 and progressive.rounds(8, 4) == 1
  for bad, name in (((64, 3), "`steps` 3 cannot be reached"), ((64, 64), "`steps` 64"),
                    ((64, 0), "`steps` must be a positive int")):
    with pytest.raises(ValueError, match=name):
      progressive.rounds(*bad)
  with pytest.raises(ValueError, match=r"`teacher_steps` must lie in \[1, 1000\]"):
    progressive.base_grid(1000, 1024)
  grid = progressive.base_grid(1000, 64)
  assert grid[-1] == 999 and np.all(np.diff(grid) > 0) and len(set(grid)) == 64
  for k in (32, 8, 1):
    coarse = progressive.student_steps(1000, 64, k)
    assert len(coarse) == k and coarse[0] == 999 and set(coarse) <= set(grid)
  # Round r's student step i spans two steps of its teacher (2K steps) on the same grid.
  for r in range(6):
    stride, k = 2 ** r, 64 // 2 ** (r + 1)
    teacher = list(progressive.student_steps(1000, 64, 2 * k)) + [-1]
    i = jnp.arange(1, k + 1)
    t, t_mid, t_next = progressive.round_timesteps(jnp.asarray(grid), stride, i)
    for j in range(k):
      at = teacher.index(int(t[j]))
      assert (int(t_mid[j]), int(t_next[j])) == (teacher[at + 1], teacher[at + 2])


def gaussian_consistency(x, t, mean=0.3, var=0.04):
  """The exact consistency function of data N(mean, var): the ODE's map from σ_t to σ_min."""
  table = jnp.asarray(edm.sigmas(SCHEDULE), jnp.float32)
  sigma = table[t].reshape(-1, *(1,) * (x.ndim - 1))
  return mean + jnp.sqrt((var + table[0] ** 2) / (var + sigma ** 2)) * (x - mean)


def test_the_consistency_function_is_the_identity_at_sigma_min_exactly():
  net = lambda x_t, t: 1e3 * jnp.sin(x_t) + t[:, None, None, None]  # anything finite
  f = consistency.consistency_fn(net, SCHEDULE, sigma_data=0.5)
  x = jax.random.normal(jax.random.key(1), (5, 3, 3, 2)) * 4
  np.testing.assert_array_equal(f(x, jnp.zeros(5, jnp.int32)), x)  # bit for bit
  assert float(jnp.abs(f(x, jnp.full(5, 1)) - x).max()) > 1e-3
  c_skip, c_out = consistency.coefficients(jnp.asarray(edm.sigmas(SCHEDULE)), edm.sigmas(
      SCHEDULE)[0], 0.5)
  assert float(c_skip[-1]) < 1e-4 and abs(float(c_out[-1]) - 0.5) < 1e-3  # x̂_0 = F at high σ


def test_consistency_losses_vanish_for_the_exact_consistency_function():
  """With the exact f of Gaussian data and the exact teacher, the distillation loss is the
  Heun step's error, small; one that drifts along the trajectory is not. Training's pairs
  share one sample's noise, not an ODE trajectory: its loss is larger."""
  mean, var = 0.3, 0.04
  x0 = mean + np.sqrt(var) * jax.random.normal(jax.random.key(0), (4096, 1))
  noise = jax.random.normal(jax.random.key(1), (4096, 1))
  grid = consistency.grid(SCHEDULE, 18)
  j = jax.random.randint(jax.random.key(2), (4096,), 0, 17)
  t_lo, t_hi = jnp.asarray(grid)[j], jnp.asarray(grid)[j + 1]

  def teacher_d(x, t):
    sigma = jnp.asarray(edm.sigmas(SCHEDULE), jnp.float32)[t][:, None]
    return mean + var / (var + sigma ** 2) * (x - mean)

  biased = lambda x, t: gaussian_consistency(x, t) + 0.3 * t[:, None] / 1000  # drifts along σ
  exact_cd = consistency.loss(gaussian_consistency, gaussian_consistency, SCHEDULE, x0, noise,
                              t_lo, t_hi, teacher_d=teacher_d)
  biased_cd = consistency.loss(biased, biased, SCHEDULE, x0, noise, t_lo, t_hi,
                               teacher_d=teacher_d)
  assert float(exact_cd.mean()) < 1e-5 and float(biased_cd.mean()) > 30 * float(exact_cd.mean())
  ct = consistency.loss(gaussian_consistency, gaussian_consistency, SCHEDULE, x0, noise, t_lo,
                        t_hi)
  assert float(ct.mean()) > 10 * float(exact_cd.mean())  # one sample's noise, not the ODE's
  n = consistency.num_points(jnp.array([0, 50, 100]), 100, 2, 150)
  np.testing.assert_array_equal(n, [2, 107, 151])  # s0 .. s1 + 1 (Song et al. App. C)
  np.testing.assert_allclose(consistency.target_decay(n[1], 2, 0.9), 0.9 ** (2 / 107), rtol=1e-6)


def test_improved_consistency_trainings_curriculum_noise_levels_and_weights():
  """Song & Dhariwal 2023: N doubles from s0 in equal stages up to s1 + 1 (eq. 8; their CIFAR-10
  run: 11 points at the start, 1,281 at the end of 400,000 steps, 8 stages of 50,000); pairs
  drawn with the lognormal's mass between their σ's (eq. 9); each loss weighted by 1 / Δσ."""
  def doubling(k, total, s0, s1):  # eq. 8, in integers
    stages = math.floor(math.log2(s1 // s0)) + 1
    return min(s0 * 2 ** (k // (total // stages)), s1) + 1
  steps = [0, 49_999, 50_000, 100_000, 350_000, 399_999]
  n = consistency.num_points_doubling(jnp.array(steps), 400_000, 10, 1280)
  np.testing.assert_array_equal(n, [11, 11, 21, 41, 1281, 1281])
  steps = np.arange(0, 700, 7)
  np.testing.assert_array_equal(consistency.num_points_doubling(jnp.array(steps), 700, 10, 320),
                                [doubling(k, 700, 10, 320) for k in steps])
  assert float(consistency.target_decay(jnp.int32(21), 10, 0.0)) == 0.0

  sigmas = np.array([0.01, 0.1, 0.5, 1.0, 5.0, 80.0, 80.0])  # a grid of 6, padded
  logits = consistency.lognormal_logits(jnp.asarray(sigmas), jnp.int32(6), -1.1, 2.0)
  cdf = [math.erf((math.log(s) + 1.1) / (math.sqrt(2) * 2.0)) for s in sigmas]
  mass = np.diff(cdf)[:5]
  np.testing.assert_allclose(jax.nn.softmax(logits)[:5], mass / mass.sum(), rtol=1e-5)
  assert np.isneginf(np.asarray(logits[5:])).all()
  assert np.argmax(np.asarray(logits)) == 1  # σ in [0.1, 0.5]: around exp(P_mean) = 0.33

  config = affine_config("consistency_training", weighting="inverse_gap", noise="lognormal")
  schedule = diffusion.make_schedule("linear", T)
  method = methods.from_config(config, diffusion_of(config))
  frozen = lambda name: (lambda x, t: jnp.zeros_like(x))
  nets = methods.Nets(student=lambda x, t: jnp.ones_like(x), frozen=frozen, shadow=frozen)
  x0 = jnp.asarray(gaussian_batches(1, 64)[0]["x"])
  state = types.SimpleNamespace(step=jnp.int32(3))
  out = method.losses(methods.Step(x0, jax.random.split(jax.random.key(0), 64),
                                   jax.random.key(1), state, nets))
  grid_sigmas = edm.sigmas(schedule)[consistency.grid(schedule, int(out["points"][0]))]
  gaps = 1 / np.diff(grid_sigmas)
  ratios = np.asarray(out["loss"] / out["distance"])
  assert all(np.isclose(gaps, r, rtol=1e-4).any() for r in ratios), (ratios, gaps)
  assert len(set(np.round(ratios, 3))) > 1  # several pairs drawn
  for key, value in (("curriculum", "cubic"), ("noise", "gaussian"), ("weighting", "snr"),
                     ("p_std", 0.0), ("mu0", 1.0)):
    bad = affine_config("consistency_training", **{key: value})
    with pytest.raises(ValueError, match=f"config.distill.{key} must"):
      methods.from_config(bad, diffusion_of(bad))


def test_consistency_sampling_with_the_exact_function_draws_the_data():
  x_T = jax.random.normal(jax.random.key(3), (20_000, 1))
  keys = jax.random.split(jax.random.key(4), 20_000)
  for count in (1, 2, 4):
    steps = consistency.sampling_steps(SCHEDULE, count)
    assert len(steps) == count and np.all(np.diff(steps) < 0) and steps[-1] > 0
    x = np.asarray(consistency_sampler.sample(gaussian_consistency, SCHEDULE, steps, x_T, keys,
                                                  clip_x0=False))
    assert abs(x.mean() - 0.3) < 0.01 and abs(x.std() / 0.2 - 1) < 0.03, (count, x.std())


# The engine, with a network that can represent the answer exactly: per-timestep affine maps
# out = a[t] x + b[t] of each coordinate. For data N(MEAN, VAR) per coordinate the optimal
# ε-teacher is affine, and so is a v-student matching two teacher steps.
T, SHAPE, MEAN, VAR = 20, (4, 1), 0.3, 0.04


def affine(params, x, t):
  return jnp.asarray(params["a"])[t] * x + jnp.asarray(params["b"])[t]


def exact_teacher() -> dict:
  schedule = diffusion.make_schedule("linear", T)
  a, s = np.sqrt(schedule.alphas_cumprod), np.sqrt(1 - np.asarray(schedule.alphas_cumprod))
  c1, c0 = s / (a * a * VAR + s * s), -a * MEAN * s / (a * a * VAR + s * s)
  tile = lambda c: jnp.asarray(np.broadcast_to(c[:, None, None], (T, *SHAPE)), jnp.float32)
  return {"params": {"a": tile(c1), "b": tile(c0)}}


def affine_teacher_config():
  teacher = tiny_config()
  with teacher.unlocked():
    teacher.data.shape = SHAPE
    teacher.data.dtype = "float32"
    teacher.model.name = "tests:affine"
    teacher.diffusion.num_steps = T
    teacher.diffusion.clip_x0 = False
  return teacher


def affine_config(method="progressive", **distill):
  teacher = affine_teacher_config()
  settings = distill_settings(**distill)
  if method == "consistency_training":
    config = student_config(teacher, settings, "consistency")
    with config.unlocked():
      config.distill.method = method
    return config
  return student_config(teacher, settings, method)


def distill_settings(**distill):
  settings = ml_collections.ConfigDict({
      "distill": dict(teacher_steps=2, steps=1, round_steps=2, num_points=6, target_decay=0.9,
                      sigma_data=0.5, metric="l2", s0=2, s1=6, mu0=0.9),
      "optim": dict(lr=0.05, warmup_steps=0, decay_steps=0, grad_clip=0.0, b1=0.9, b2=0.999,
                    eps=1e-8),
      "train": dict(num_steps=4, batch_size=16, label_dropout=0.0, ema_decay=0.0,
                    ema_warmup=False, steps_per_dispatch=1, log_every=1, checkpoint_every=1,
                    keep_checkpoints=10, sample_every=1000, num_samples=0, sample_sampler="",
                    sample_steps=0)})
  settings.distill.update(distill)
  return settings


def gaussian_batches(n, batch=16, seed=0):
  rng = np.random.default_rng(seed)
  return [{"x": (MEAN + np.sqrt(VAR) * rng.normal(size=(batch, *SHAPE))).astype(np.float32),
           "label": np.zeros(batch, np.int32)} for _ in range(n)]


def affine_model():
  return models.function(affine, params=exact_teacher()["params"], name="tests:affine")


class GaussianSource:
  """A user's own data source: N(MEAN, VAR) examples of SHAPE."""
  def __len__(self):
    return 64

  def __getitem__(self, i):
    rng = np.random.default_rng(i)
    return {"x": (MEAN + np.sqrt(VAR) * rng.normal(size=SHAPE)).astype(np.float32)}


def test_a_network_and_data_given_in_python_distil_through_the_python_api(tmp_path):
  """A teacher trained with train(config, workdir, model=..., source=...) (a network and data
  the config cannot name) is distilled by distill(..., model=..., source=...); without them
  the teacher's network cannot be rebuilt, and the error says what to pass."""
  from diffusion.training.distill import distill
  teacher = affine_teacher_config()
  with teacher.unlocked():
    teacher.model.name = "unet"  # what a user's config says; the network comes from Python
    teacher.train.update(num_steps=2, checkpoint_every=2, log_every=1)
  model = lambda: models.function(affine, params=exact_teacher()["params"])
  assert train(teacher, str(tmp_path / "teacher"), model=model(), source=GaussianSource()) == 2
  with pytest.raises(ValueError, match=r"load_run\(workdir, model=\.\.\.\)"):
    distill(str(tmp_path / "teacher"), str(tmp_path / "student"), distill_settings(),
            method="progressive")
  assert distill(str(tmp_path / "teacher"), str(tmp_path / "student"), distill_settings(),
                 method="progressive", model=model(), source=GaussianSource()) == 2
  config, _, variables, step = load_run(str(tmp_path / "student"), model=model())
  assert step == 2 and config.distill.method == "progressive"  # 1 round of round_steps 2


def run_affine(config, mesh, batches):
  model = affine_model()
  state = create_state(build(config, model), mesh, {"x": jnp.zeros((1, *SHAPE))}, exact_teacher())
  step = make_train_step(build(config, model), mesh)
  metrics = []
  for batch in batches:
    state, m = step(state, shard_batch(batch, mesh), base_key(config.seed, "train"))
    metrics.append(m)
  return jax.device_get(state), jax.device_get(metrics)


def test_a_progressive_student_matches_its_teachers_two_ddim_steps_on_fixed_noise():
  config = affine_config(teacher_steps=2, steps=1, round_steps=300)
  with config.unlocked():
    config.train.batch_size = 256
  state, metrics = run_affine(config, make_mesh(jax.devices()[:1]), gaussian_batches(300, 256))
  schedule = diffusion.Schedule.from_betas(diffusion.linear_betas(T))
  x_T = jax.random.normal(jax.random.key(7), (512, *SHAPE))
  keys = jax.random.split(jax.random.key(8), 512)
  teacher_params = exact_teacher()["params"]
  teacher = lambda x, t: affine(teacher_params, x, t)
  two = samplers.ddim(teacher, schedule, progressive.student_steps(T, 2, 2), x_T, keys,
                      clip_x0=False)
  student = lambda params: (lambda x, t: affine(params, x, t))
  one = lambda params: samplers.ddim(student(params), schedule,
                                     progressive.student_steps(T, 2, 1), x_T, keys,
                                     prediction="v", clip_x0=False)
  before = float(jnp.abs(one(teacher_params) - two).max())  # ε read as v
  after = float(jnp.abs(one(state.params) - two).max())
  assert after < 0.01 < 0.3 < before, (after, before)
  assert metrics[-1]["loss"] < 1e-3 * metrics[0]["loss"]


def test_the_consistency_distance_is_l2_or_pseudo_huber_and_refuses_other_metrics():
  a, b = jnp.zeros((2, 4, 4, 1)), jnp.ones((2, 4, 4, 1))
  np.testing.assert_allclose(consistency.distance(a, b, "l2"), [1.0, 1.0])
  c = 0.00054 * 4
  np.testing.assert_allclose(consistency.distance(a, b, "pseudo_huber"),
                             [np.sqrt(16 + c**2) - c] * 2, rtol=1e-6)
  with pytest.raises(ValueError, match="metric must be one of l2, pseudo_huber; got 'l1'"):
    consistency.distance(a, b, "l1")


IMPROVED = dict(mu0=0.0, curriculum="doubling", noise="lognormal", weighting="inverse_gap",
                metric="pseudo_huber")


@pytest.mark.parametrize("method", ["progressive", "consistency", "consistency_training",
                                    "improved_consistency_training"])
def test_eight_devices_give_the_distillation_of_one(method):
  improved = method.startswith("improved")
  method = method.removeprefix("improved_")
  config = affine_config(method, **(IMPROVED if improved else {}))
  batches = gaussian_batches(3)
  one, m1 = run_affine(config, make_mesh(jax.devices()[:1]), batches)
  eight, m8 = run_affine(config, make_mesh(jax.devices()[:8]), batches)
  np.testing.assert_allclose([m["loss"] for m in m8], [m["loss"] for m in m1], rtol=1e-5)
  for a, b in zip(jax.tree.leaves((eight.params, eight.extra)),
                  jax.tree.leaves((one.params, one.extra))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert sorted(one.extra) == {"progressive": ["teacher"], "consistency": ["target", "teacher"],
                               "consistency_training": ["target"]}[method]
  moved = lambda a, b: max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a),
                                                                       jax.tree.leaves(b)))
  assert moved(one.params, exact_teacher()["params"]) > 0
  if improved:  # μ0 = 0: the target is the student
    assert moved(one.extra["target"], one.params) == 0
  elif method != "progressive":  # the target trails the student
    assert 0 < moved(one.extra["target"], exact_teacher()["params"]) < moved(
        one.params, exact_teacher()["params"])


def test_the_consistency_target_sees_the_students_dropout_mask():
  """The target network runs in training mode with the student's dropout draws (the reference
  implementation restores one random state for both calls): a network that drops half its
  output equals, in a training step, its twin with that step's mask fixed in eval mode too."""
  config = affine_config("consistency_training", **IMPROVED)
  key = base_key(config.seed, "train")
  mask_key = jax.random.fold_in(jax.random.fold_in(key, 0), np.uint32(2**32 - 1))
  shape = (16, *SHAPE)
  fixed = jax.random.bernoulli(mask_key, 0.5, shape) / 0.5

  def dropping(params, x, t, train=False, rng=None):
    return affine(params, x, t) * (jax.random.bernoulli(rng, 0.5, x.shape) / 0.5 if train else 1)

  def twin(params, x, t):
    return affine(params, x, t) * fixed

  mesh = make_mesh(jax.devices()[:1])
  losses = []
  for fn in (dropping, twin):
    model = models.function(fn, params=exact_teacher()["params"], name="tests:affine")
    state = create_state(build(config, model), mesh, {"x": jnp.zeros((1, *SHAPE))}, exact_teacher())
    step = make_train_step(build(config, model), mesh)
    _, metrics = step(state, shard_batch(gaussian_batches(1)[0], mesh), key)
    losses.append(float(metrics["loss"]))
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)


def test_a_resumed_progressive_distillation_is_bit_exact_across_a_round(tmp_path):
  """Teacher 4 -> student 1 in two rounds of 2 steps: 3 steps and a resume to 4 (the round's
  teacher swap at step 2 is in the first part; the resume is not given the teacher) equal 4
  steps straight."""
  config = affine_config(teacher_steps=4, steps=1, round_steps=2)
  source = [{"x": b["x"][0]} for b in gaussian_batches(64, 1, seed=3)]
  straight = str(tmp_path / "straight")
  train(config, straight, model=affine_model(), source=source, variables=exact_teacher())
  parted = str(tmp_path / "parted")
  with config.unlocked():
    config.train.num_steps = 3
  train(config, parted, model=affine_model(), source=source, variables=exact_teacher())
  with config.unlocked():
    config.train.num_steps = 4
  with pytest.raises(ValueError, match="distils a trained run"):  # a new run needs its teacher
    train(config, str(tmp_path / "new"), model=affine_model(), source=source)
  # The resume is given no teacher: the checkpoint holds it.
  train(config, parted, model=affine_model(), source=source)
  states = []
  for workdir in (straight, parted):
    checkpoints = Checkpoints(workdir, read_only=True)
    states.append({part: checkpoints.restore_part(part, 4) for part in
                   ("params", "ema_params", "extra", "opt_state")})
    checkpoints.manager.close()
  for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
    np.testing.assert_array_equal(a, b)
  # Round 2's teacher is round 1's student: the teacher moved off the ε-teacher at step 2.
  checkpoints = Checkpoints(straight, read_only=True)
  at2 = checkpoints.restore_part("ema_params", 2)
  checkpoints.manager.close()
  for a, b in zip(jax.tree.leaves(states[0]["extra"]["teacher"]), jax.tree.leaves(at2)):
    np.testing.assert_array_equal(a, b)
  config_, _, _, _ = load_run(straight, model=affine_model())
  assert config_.distill.method == "progressive" and config_.diffusion.prediction == "v"


def test_ddpm_distill_and_sample_a_student_end_to_end(tmp_path, capsys):
  """The CLI on the tiny digits run: bad input stops before anything compiles; a progressive
  student of 4 -> 1 steps in two rounds; sampling each round's student; what students refuse."""
  from _tiny import CONFIGS, tiny_overrides
  from diffusion import cli
  teacher, student = tmp_path / "teacher", tmp_path / "student"
  assert cli.main(["train", "--config", os.path.join(CONFIGS, "digits.py"), "--workdir",
                   str(teacher), *tiny_overrides(num_samples=0)]) == 0  # no grid: quicker
  distill = lambda *args: cli.main(["distill", "--config", os.path.join(
      CONFIGS, "distill_digits.py"), "--workdir", str(teacher), "--out", str(student),
      "--config.train.batch_size=16", "--config.train.log_every=1",
      "--config.train.num_samples=0", *args])
  capsys.readouterr()
  for args, message in (
      (["--method", "progressive", "--workdir", str(tmp_path / "none")],
       "holds no checkpoints/: not a training run"),
      (["--method", "progressive", "--teacher-steps", "8", "--steps", "3"],
       "--steps 3 cannot be reached by halving --teacher-steps 8: choose one of \\[1, 2, 4\\]"),
      (["--method", "progressive", "--teacher-steps", "64"],
       r"--teacher-steps must lie in \[1, 20\]"),
      (["--method", "distillation"], "--method must be one of progressive, consistency"),
      (["--method", "consistency"], "--method consistency: the distillation config's distill "
       "section has no num_points, target_decay, sigma_data, metric \\(a config for it: "
       "experiments/configs/consistency_digits.py\\)")):
    assert distill(*args) == 2, args
    assert re.search(message, capsys.readouterr().err), (args, message)
  assert cli.main(["distill", "--config", os.path.join(CONFIGS, "consistency_digits.py"),
                   "--workdir", str(teacher), "--out", str(student), "--method", "consistency",
                   "--config.distill.num_points=50"]) == 2
  assert re.search(r"config.distill.num_points must lie in \[2, 20\]", capsys.readouterr().err)
  assert cli.main(["distill", "--config", os.path.join(CONFIGS, "consistency_digits.py"),
                   "--workdir", str(teacher), "--out", str(student), "--method", "progressive",
                   "--steps", "1"]) == 2
  assert "--method progressive: the distillation config's distill section has no " \
         "teacher_steps, round_steps" in capsys.readouterr().err
  assert not student.exists()  # nothing written

  assert distill("--method", "progressive", "--teacher-steps", "4", "--steps", "1",
                 "--config.distill.round_steps=2") == 0
  assert "step 4" in capsys.readouterr().out
  sample = lambda *args: cli.main(["sample", "--workdir", str(student), "--num", "8", "--out",
                                   str(tmp_path / "s.npz"), *args])
  for steps in ("1", "2"):  # each round's student, from the checkpoint at its round's end
    assert sample("--steps", steps) == 0
  assert np.load(tmp_path / "s.npz")["arr_0"].shape == (8, 8, 8, 1)
  two_step = np.load(tmp_path / "s.npz")["arr_0"]
  # A round's checkpoint named by --step samples with that round's student (2 steps at
  # step 2), not with the final student's chain.
  assert sample("--step", "2") == 0
  np.testing.assert_array_equal(np.load(tmp_path / "s.npz")["arr_0"], two_step)
  assert sample("--step", "2", "--steps", "1") == 2
  assert "--step 2 holds the 2-step student, not the 1-step one" in capsys.readouterr().err
  # Resuming the student with other settings names its folder, --out.
  assert distill("--method", "progressive", "--teacher-steps", "4", "--steps", "1",
                 "--config.distill.round_steps=3") == 2
  assert re.search(r"--out '.*student' holds a run with another config \(distill.round_steps: "
                   r"2 -> 3", capsys.readouterr().err)
  for args, message in ((["--steps", "4"], r"made students of \[2, 1\] steps"),
                        (["--sigmas", "80,x"], "--sigmas must be comma-separated numbers"),
                        (["--sigmas", "80,1"], "a consistency model's chain, and this run is not"),
                        (["--sampler", "ddpm"], "samples with ddim over its own 1 steps"),
                        (["--spacing", "uniform"], "visits its own timesteps")):
    assert sample(*args) == 2
    assert re.search(message, capsys.readouterr().err), args
  from PIL import Image
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
  assert cli.main(["denoise", "--workdir", str(student), "--image", str(tmp_path / "x.png"),
                   "--sigma", "0.1",
                   "--out", str(tmp_path / "d.png")]) == 2
  assert "needs a model of every timestep" in capsys.readouterr().err
  assert cli.main(["evaluate", "--workdir", str(student), "--bpd"]) == 2
  assert "is a few-step model" in capsys.readouterr().err
  assert cli.main(["distill", "--config", os.path.join(CONFIGS, "consistency_digits.py"),
                   "--workdir", str(student), "--out", str(tmp_path / "again"), "--method",
                   "consistency", "--config.distill.num_points=50"]) == 2
  assert "is itself a few-step model" in capsys.readouterr().err
  # Without the teacher's folder, the student resumes from its own checkpoints.
  teacher.rename(tmp_path / "moved")
  assert distill("--method", "progressive", "--teacher-steps", "4", "--steps", "1",
                 "--config.distill.round_steps=2") == 0
  assert "step 4" in capsys.readouterr().out
  assert cli.main(["distill", "--config", os.path.join(CONFIGS, "distill_digits.py"),
                   "--workdir", str(student), "--out", str(tmp_path / "moved"), "--method",
                   "progressive"]) == 2
  assert "holds a training run, not a few-step student" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["consistency", "consistency_training"])
def test_a_consistency_model_samples_with_its_own_chain(method):
  from diffusion.sampling import make_sampler
  config = affine_config(method)
  mesh = make_mesh(jax.devices()[:2])
  most = {"consistency": 5, "consistency_training": 6}[method]  # N - 1, s1
  variables = exact_teacher()
  for steps in (1, most):
    sample = make_sampler(build(config, affine_model()), mesh, steps=steps)
    x = np.asarray(sample(variables, jax.random.key(0), 0, np.zeros(4, np.int32)))
    assert x.shape == (4, *SHAPE) and np.all(np.isfinite(x))
  # --sigmas: the chain through the noise levels of `steps` is the same chain.
  two = consistency.sampling_steps(diffusion.make_schedule("linear", T), 2)
  through = make_sampler(build(config, affine_model()), mesh,
                         sigmas=tuple(edm.sigmas(diffusion.make_schedule("linear", T))[two]))
  run = lambda sample: np.asarray(sample(variables, jax.random.key(0), 0, np.zeros(4, np.int32)))
  np.testing.assert_array_equal(run(through),
                                run(make_sampler(build(config, affine_model()), mesh, steps=2)))
  assert not np.array_equal(run(through), run(make_sampler(build(config, affine_model()), mesh,
                                                           steps=1)))
  for options, message in (({"steps": most + 1}, rf"`steps` must lie in \[1, {most}\]"),
                           ({"steps": 0}, rf"`steps` must lie in \[1, {most}\]"),  # not [1, T]
                           ({"sampler": "ddim"}, "samples with its own chain"),
                           ({"start": 5}, "the applications need a model of every timestep"),
                           ({"sigmas": (1.0, 2.0)}, "`sigmas` must decrease"),
                           ({"sigmas": (80.0, 1.0), "steps": 2}, "give `steps` or `sigmas`"),
                           ({"sigmas": tuple(range(most + 1, 0, -1))},
                            rf"`sigmas` must hold 1 to {most} noise levels")):
    with pytest.raises(ValueError, match=message):
      make_sampler(build(config, affine_model()), mesh, **options)
  with pytest.raises(ValueError, match="needs a consistency model"):
    make_sampler(build(tiny_config(), affine_model()), mesh, sampler="consistency")
  with pytest.raises(ValueError, match="this run is not one"):
    make_sampler(build(tiny_config(), affine_model()), mesh, sigmas=(80.0,))


@pytest.mark.parametrize("settings, teacher, method", [
    ("distill_digits", "digits", "progressive"), ("consistency_digits", "digits", "consistency"),
    ("distill_cifar10", "cifar10", "progressive"),
    ("consistency_cifar10", "cifar10", "consistency")])
def test_the_distillation_configs_fit_their_teachers(settings, teacher, method):
  from _tiny import CONFIGS
  from diffusion.config import load_config, validate
  config = student_config(load_config(os.path.join(CONFIGS, f"{teacher}.py")),
                          load_config(os.path.join(CONFIGS, f"{settings}.py")), method)
  validate(config)
  methods.from_config(config, diffusion_of(config)).check(config)
  assert config.distill.method == method and config.distill.teacher_prediction == "eps"
  if method == "progressive":
    rounds = progressive.rounds(config.distill.teacher_steps, config.distill.steps)
    assert config.train.num_steps == rounds * config.distill.round_steps
    assert config.diffusion.prediction == "v" and config.train.keep_checkpoints is None
    assert config.optim.decay_steps == config.distill.round_steps  # each round anneals
  if teacher == "cifar10":
    assert config.model.dropout == 0.0 and config.model.ch == 128  # the teacher's network
