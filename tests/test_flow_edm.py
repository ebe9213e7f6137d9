"""Flow matching and EDM's training as methods of the engine: their samplers on continuous noise
levels draw Gaussian data from the exact network, 8 devices train what 1 does, a resumed run
is bit-exact, and `ddpm train` / `ddpm sample` run them."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _tiny import CONFIGS, tiny_config, tiny_overrides
from diffusion import cli, edm, methods, models, samplers
from diffusion.distributed import make_mesh
from diffusion.runs import build, load_run
from diffusion.sampling import make_sampler
from diffusion.training import base_key, create_state, make_train_step, shard_batch, train

SHAPE, MEAN, STD = (4, 1), 0.3, 0.2


def config_of(method: str, **train):
  config = tiny_config(**{"num_steps": 2, "batch_size": 16, "log_every": 1,
                          "checkpoint_every": 2, "num_samples": 0, "ema_decay": 0.0, **train})
  config.optim.update(lr=1e-2, warmup_steps=0)
  config.train.sample_sampler = ""  # the method's own (digits.py's dpm++ is a discrete chain)
  with config.unlocked():
    config.method = method
    config.data.shape, config.data.dtype = SHAPE, "float32"
    config.diffusion.clip_x0 = False
    config.edm = {"sigma_data": STD}
  return config


def exact_velocity(x, t):
  """E[ε − x_0 | x_t] for x_0 ~ N(MEAN, STD²) per coordinate, t float [B] in [0, 1]."""
  t = t.reshape(-1, 1, 1)
  v = (1 - t) ** 2 * STD ** 2 + t ** 2
  return -MEAN + (t - (1 - t) * STD ** 2) / v * (x - (1 - t) * MEAN)


def exact_edm_network(x_in, c_noise):
  """The F whose preconditioned denoiser is E[x_0 | x_0 + σ n] for x_0 ~ N(MEAN, STD²)."""
  sigma = jnp.exp(4 * c_noise)
  c_skip, c_out, c_in, _ = edm.preconditioning(sigma, STD)
  col = lambda a: a.reshape(-1, 1, 1)
  x = x_in / col(c_in)
  d = MEAN + STD ** 2 / (STD ** 2 + col(sigma) ** 2) * (x - MEAN)
  return (d - col(c_skip) * x) / col(c_out)


# Steps enough for 3 %: the path's bend near the data (std 0.2) takes many of a uniform grid's,
# and EDM's chain ends 400 times smaller than it starts.
@pytest.mark.parametrize("method, network, sampler, steps", [
    ("flow", lambda p, x, t: exact_velocity(x, t / 1000), "euler", 200),
    ("flow", lambda p, x, t: exact_velocity(x, t / 1000), "heun", 40),
    ("edm", lambda p, x, c: exact_edm_network(x, c), "heun", 64),
    ("edm", lambda p, x, c: exact_edm_network(x, c), "euler", 256),
    ("flow", lambda p, x, t: exact_velocity(x, t / 1000), "edm-sde", 64),
    ("edm", lambda p, x, c: exact_edm_network(x, c), "edm-sde", 64)])
def test_the_continuous_chains_draw_the_data_from_the_exact_network(method, network, sampler,
                                                                    steps):
  run = build(config_of(method), models.function(network, params={}))
  assert run.method.continuous and type(run.method) is methods.get(method)
  sample = make_sampler(run, make_mesh(), sampler=sampler, steps=steps)
  x = np.asarray(sample({"params": {}}, jax.random.key(0), 0, np.zeros(4096, np.int32)))
  assert abs(x.mean() - MEAN) < 0.01 and abs(x.std() / STD - 1) < 0.03, (x.mean(), x.std())
  # The scan's trips: Euler's every step; Heun's but the last, an Euler step after the scan.
  assert sample.loop_trips == (steps if sampler == "euler" else steps - 1)
  with pytest.raises(ValueError, match="`sampler` must be one of euler, heun, .*edm-sde"):
    make_sampler(run, make_mesh(), sampler="ddpm")
  with pytest.raises(ValueError, match="`spacing`: method|`spacing` of an EDM run's chain"):
    make_sampler(run, make_mesh(), spacing="quadratic")
  with pytest.raises(ValueError, match="written for a discrete DDPM's forward process"):
    from diffusion.applications import denoise
    denoise(run, {"params": {}}, np.zeros((8, *SHAPE), np.float32), 0.1, make_mesh(),
            jax.random.key(0))


@pytest.mark.parametrize("method", ["flow", "edm"])
def test_ddim_is_the_euler_step_and_dpm_solver_is_second_order_on_either_path(method):
  """From x at the top level the exact ODE ends at MEAN + STD (x − MEAN) / sqrt(STD² + top²):
  DDIM's step (in λ, on the data prediction) equals Euler's on the field to float precision,
  and DPM-Solver++(2M)'s error shrinks at more than first order when the steps grow 16-fold
  (Euler's: ~16×; second order: ~256×, which EDM's grid reaches and flow matching's uniform
  one, uneven in λ, approaches more slowly)."""
  net = ((lambda x, t: exact_velocity(x, t / 1000)) if method == "flow" else exact_edm_network)
  run = build(config_of(method), models.function(lambda p, x, c: net(x, c), params={}))
  z = jax.random.normal(jax.random.key(0), (4096, *SHAPE))
  top = run.method.prior_scale(1.0 if method == "flow" else run.method.sigma_max)
  exact = MEAN + STD / np.sqrt(STD ** 2 + top ** 2) * (top * np.asarray(z, np.float64) - MEAN)
  if method == "flow":  # x_1 = ε: x_0 = MEAN + STD ε
    exact = MEAN + STD * np.asarray(z, np.float64)
  errors, euler_x = {}, {}
  for name in ("euler", "ddim", "dpm++"):
    sampler = samplers.make(name, continuous=True)
    for steps in (16, 256):
      grid = run.method.sampling_steps(sampler, steps, None, None)
      x = samplers.run(sampler, net, run.diffusion, grid, z, method=run.method)
      errors[name, steps] = float(np.abs(np.asarray(x, np.float64) - exact).mean())
      if name == "ddim":
        np.testing.assert_allclose(x, euler_x[steps], rtol=1e-4, atol=1e-5)
      euler_x[steps] = x
  ratios = {n: errors[n, 16] / errors[n, 256] for n in ("euler", "dpm++")}
  assert 10 < ratios["euler"] < 25 and ratios["dpm++"] > 32, (ratios, errors)
  assert errors["dpm++", 256] < errors["euler", 256] / 5, errors


def basis(level):
  """Features of a continuous level (flow's 1000 t, EDM's ln σ / 4) for a small network."""
  return jnp.stack([jnp.ones_like(level), jnp.tanh(level / 500), jnp.tanh(level / 4),
                    jnp.tanh(level)], -1)


def small(params, x, level):
  """out = (w · φ(level)) x + b · φ(level): trainable, of a continuous level."""
  phi = basis(jnp.asarray(level, jnp.float32))
  return (phi @ params["w"]).reshape(-1, 1, 1) * x + (phi @ params["b"]).reshape(-1, 1, 1)


def small_network():
  return models.function(small, params={"w": jnp.full((4,), 0.5), "b": jnp.zeros((4,))},
                         name="(small)")


@pytest.mark.parametrize("method", ["flow", "edm"])
def test_eight_devices_train_what_one_does(method):
  rng = np.random.default_rng(0)
  batches = [{"x": (MEAN + STD * rng.normal(size=(16, *SHAPE))).astype(np.float32),
              "label": np.zeros(16, np.int32)} for _ in range(2)]
  params = {}
  for devices in (1, 8):
    mesh = make_mesh(jax.devices()[:devices])
    run = build(config_of(method), small_network())
    state = create_state(run, mesh, {"x": jnp.zeros((1, *SHAPE))})
    step = make_train_step(run, mesh)
    for batch in batches:
      state, metrics = step(state, shard_batch(batch, mesh), base_key(0, "train"))
      assert np.isfinite(float(metrics["loss"]))
    params[devices] = jax.device_get(state.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               params[1], params[8])
  assert not np.allclose(params[1]["w"], 0.5)  # it trained


class Gaussian:
  def __len__(self):
    return 64

  def __getitem__(self, i):
    return {"x": (MEAN + STD * np.random.default_rng(i).normal(size=SHAPE)).astype(np.float32)}


@pytest.mark.parametrize("method", ["flow", "edm"])
def test_a_resumed_run_is_bit_exact(method, tmp_path):
  once = str(tmp_path / "once")
  assert train(config_of(method, num_steps=4), once, model=small_network(), source=Gaussian()) == 4
  twice = str(tmp_path / "twice")
  assert train(config_of(method, num_steps=2), twice, model=small_network(), source=Gaussian()) == 2
  assert train(config_of(method, num_steps=4), twice, model=small_network(), source=Gaussian()) == 4
  a, b = (load_run(w, model=small_network()) for w in (once, twice))
  assert type(a.method) is methods.get(method) and a.step == b.step == 4
  jax.tree.map(np.testing.assert_array_equal, a.variables, b.variables)


def test_ddpm_trains_and_samples_a_flow_matching_run(tmp_path, capsys):
  workdir, out = str(tmp_path / "fm"), str(tmp_path / "s.npz")
  assert cli.main(["train", "--config", os.path.join(CONFIGS, "digits_fm.py"), "--workdir",
                   workdir, *tiny_overrides(num_samples=0, num_steps=2)]) == 0
  assert cli.main(["sample", "--workdir", workdir, "--num", "8", "--out", out, "--sampler",
                   "heun", "--steps", "2"]) == 0
  assert np.load(out)["arr_0"].shape == (8, 8, 8, 1)
  assert cli.main(["sample", "--workdir", workdir, "--num", "8", "--out", out, "--sampler",
                   "ddpm"]) == 2
  assert "--sampler must be one of euler, heun" in capsys.readouterr().err
  assert cli.main(["evaluate", "--workdir", workdir, "--bpd", "--num", "8"]) == 2
  assert "written for a discrete DDPM's forward process" in capsys.readouterr().err


def test_edm_sde_adds_its_noise_within_the_point_sets_subspace():
  """EDM's stochastic sampler on a point-set run: the noise it injects is centred like the
  data, so a chain of centred predictions stays centred without the final projection."""
  config = config_of("edm")
  config.data.shape, config.data.kind = (5, 3), "points"
  run = build(config, models.function(lambda p, x, c: jnp.zeros_like(x), params={}))
  z = jax.random.normal(jax.random.key(0), (16, 5, 3))
  z = z - z.mean(axis=1, keepdims=True)
  keys = jax.random.split(jax.random.key(1), 16)
  out = {}
  for churn in (0.0, 40.0):
    sampler = samplers.make("edm-sde", continuous=True, churn=churn, s_tmax=100.0)
    grid = run.method.sampling_steps(sampler, 8, None, None)
    out[churn] = np.asarray(samplers.run(sampler, lambda x, c: jnp.zeros_like(x), run.diffusion,
                                         grid, z, keys, method=run.method))
  assert np.abs(out[40.0] - out[0.0]).max() > 1e-3  # noise was added
  np.testing.assert_allclose(out[40.0].mean(axis=1), 0, atol=1e-5)


def test_a_point_set_run_trains_and_samples_with_flow_matching(tmp_path):
  """The protein example (EGNN, point sets) under flow matching, from the command line."""
  workdir, out = str(tmp_path / "protein"), str(tmp_path / "s.npz")
  assert cli.main(["train", "--config", os.path.join(CONFIGS, "protein.py"), "--workdir", workdir,
                   "--config.method=flow", "--config.train.num_steps=2",
                   "--config.train.batch_size=8", "--config.train.num_samples=0",
                   "--config.train.sample_sampler=", "--config.model.hidden=16",
                   "--config.model.depth=1"]) == 0
  assert cli.main(["sample", "--workdir", workdir, "--num", "8", "--out", out, "--sampler",
                   "dpm++", "--steps", "3"]) == 0
  x = np.load(out)["arr_0"]
  assert x.shape == (8, 16, 3) and np.all(np.isfinite(x)) and x.std() > 0.1
