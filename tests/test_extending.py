"""A new sampler and a new training method, defined here alone, run through the library and the
`ddpm` command with no change to the library: the `Sampler` and `Method` protocols.

The sampler is Euler's method on the probability-flow ODE dx/dσ = (x - D(x; σ)) / σ (EDM's
units); the method is DDPM's L_simple with P2 weighting (Choi et al. 2022), λ(t) = 1 / (k +
SNR(t))^γ. The network is an affine map per timestep, exact for Gaussian data.
"""

import os
import pathlib
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion
from _tiny import tiny_config
from diffusion import cli, edm, methods, models, samplers
from diffusion.distributed import make_mesh
from diffusion.process import Diffusion
from diffusion.runs import build, load_run
from diffusion.sample_run import draw_samples
from diffusion.training import base_key, create_state, make_train_step, shard_batch, train

T, SHAPE, MEAN, STD = 20, (4, 1), 0.3, 0.2


@samplers.register
class EulerODE(samplers.Sampler):
  """x_{i+1} = x_i + (σ_{i+1} - σ_i) (x_i - D(x_i; σ_i)) / σ_i, then x_0 = D(x; σ_last)."""
  name = "euler-ode"
  default_steps = 30
  default_spacing = "karras"
  stochastic = False

  def visits(self, diffusion, steps):
    sigmas = edm.sigmas(diffusion.schedule)
    return steps[:-1], sigmas[steps[:-1]], sigmas[steps[1:]]

  def _d(self, chain):
    d = chain.diffusion
    return edm.denoiser(chain.network, chain.schedule, prediction=d.prediction,
                        clip_x0=d.clip_x0)

  def initialize(self, chain, x):
    return edm.to_edm(chain.schedule, x, chain.steps[0])

  def update(self, chain, x, visit):
    t, sigma, sigma_next = visit
    slope = (x - self._d(chain)(x, jnp.full((x.shape[0],), t))) / sigma
    return (x + (sigma_next - sigma) * slope).astype(x.dtype)

  def finalize(self, chain, x):
    return self._d(chain)(x, jnp.full((x.shape[0],), chain.steps[-1])).astype(x.dtype)


@methods.register
class P2(methods.DDPM):
  """L_simple weighted by λ(t) = 1 / (k + SNR(t))^γ; γ = 0 is DDPM's L_simple."""
  name = "p2-test"

  def __init__(self, diffusion, gamma: float = 1.0, k: float = 1.0, **ddpm):
    super().__init__(diffusion, **ddpm)
    self.gamma, self.k = gamma, k

  @classmethod
  def from_config(cls, config, diffusion):
    p2 = config.get("p2") or {}
    return cls(diffusion, p2.get("gamma", 1.0), p2.get("k", 1.0),
               label_dropout=config.train.get("label_dropout", 0.0))

  def losses(self, step):
    out = super().losses(step)
    ac = self.diffusion.schedule.alphas_cumprod[out["t"]]
    weight = 1.0 / (self.k + ac / (1 - ac)) ** self.gamma
    return {**out, "loss": weight * out["loss"]}


def affine(params, x, t):
  return jnp.asarray(params["a"])[t] * x + jnp.asarray(params["b"])[t]


def exact_params() -> dict:
  """The optimal ε-predictor of data N(MEAN, STD²) per coordinate: affine in x_t."""
  schedule = diffusion.make_schedule("linear", T)
  a, s = np.sqrt(schedule.alphas_cumprod), np.sqrt(1 - np.asarray(schedule.alphas_cumprod))
  c1, c0 = s / (a * a * STD ** 2 + s * s), -a * MEAN * s / (a * a * STD ** 2 + s * s)
  tile = lambda c: jnp.asarray(np.broadcast_to(c[:, None, None], (T, *SHAPE)), jnp.float32)
  return {"a": tile(c1), "b": tile(c0)}


def affine_network(settings, shape):
  """A model factory (config.model.name = "test_extending:affine_network")."""
  return models.function(affine, params=exact_params())


def extending_config(data_path: str = "", method: str = "ddpm", gamma: float = 1.0):
  config = tiny_config(num_steps=2, batch_size=16, log_every=1, checkpoint_every=2,
                       num_samples=0, ema_decay=0.0)
  with config.unlocked():
    config.method = method
    config.p2 = {"gamma": gamma, "k": 1.0}
    config.data.name, config.data.path = "numpy", data_path
    config.data.shape, config.data.dtype = SHAPE, "float32"
    config.model.name = "test_extending:affine_network"
    config.diffusion.num_steps = T
    config.diffusion.clip_x0 = False
  return config


def test_a_sampler_defined_here_runs_on_the_one_loop_and_through_make_sampler():
  """Euler's method with the exact ε of Gaussian data follows the probability-flow ODE, whose
  end is known in closed form (x_0 = MEAN + STD / sqrt(STD² + σ²) (x - MEAN) from x at σ), its
  error about halving with twice the steps (first order), through `samplers.run` and
  `make_sampler` alike."""
  betas = diffusion.linear_betas(1000)
  schedule = diffusion.Schedule.from_betas(betas)

  def oracle(x, t):  # E[ε | x_t] for data N(MEAN, STD²)
    a = schedule.alphas_cumprod[t].reshape(-1, 1, 1)
    return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * MEAN) / (a * STD ** 2 + 1 - a)

  x_T = jax.random.normal(jax.random.key(0), (4096, *SHAPE))
  errors = []
  for count in (8, 16, 32):
    steps = samplers.spaced_steps(schedule, count, "karras")
    x = np.asarray(samplers.run(samplers.make("euler-ode"), oracle,
                                Diffusion(betas, clip_x0=False), steps, x_T), np.float64)
    sigma = edm.sigmas(schedule)[steps[0]]
    start = np.asarray(x_T, np.float64) * np.sqrt(1 + sigma ** 2)  # EDM's units at steps[0]
    exact = MEAN + STD / np.sqrt(STD ** 2 + sigma ** 2) * (start - MEAN)
    errors.append(float(np.abs(x - exact).mean()))
  assert errors[2] < errors[1] < errors[0] and 1.5 < errors[1] / errors[2] < 3, errors
  run = build(extending_config(), affine_network(None, SHAPE))
  sample = make_sampler(run, "euler-ode", 16)
  x = np.asarray(sample({"params": exact_params()}, jax.random.key(0), 0, np.zeros(64, np.int32)))
  assert x.shape == (64, *SHAPE) and np.isfinite(x).all()
  assert sample is make_sampler(run, "euler-ode", 16)  # memoized like the built-in ones
  with pytest.raises(ValueError, match="`eta` is no option of sampler 'euler-ode'"):
    make_sampler(run, "euler-ode", 16, eta=0.5)


def make_sampler(run, name, steps, **options):
  from diffusion.sampling import make_sampler as make
  return make(run, make_mesh(), sampler=name, steps=steps, **options)


def trained(config):
  """(run, parameters, losses) after two train steps of the affine network on two fixed batches
  over 2 devices, from the same start."""
  mesh = make_mesh(jax.devices()[:2])
  rng = np.random.default_rng(0)
  batches = [{"x": (MEAN + STD * rng.normal(size=(16, *SHAPE))).astype(np.float32),
              "label": np.zeros(16, np.int32)} for _ in range(2)]
  start = {"params": jax.tree.map(lambda a: a * 0.5, exact_params())}
  run = build(config, affine_network(None, SHAPE))
  state = create_state(run, mesh, {"x": jnp.zeros((1, *SHAPE))}, start)
  step, losses = make_train_step(run, mesh), []
  for batch in batches:
    state, metrics = step(state, shard_batch(batch, mesh), base_key(config.seed, "train"))
    losses.append(float(metrics["loss"]))
  return run, jax.device_get(state.params), losses


def test_a_method_defined_here_trains_through_the_engine():
  """P2 with γ = 0 gives DDPM's parameters bit for bit after two steps (the engine calls the
  method and nothing else); with γ = 1 the loss is down-weighted (λ < 1 for k = 1) and the
  parameters differ."""
  ddpm, ddpm_params, ddpm_losses = trained(extending_config())
  flat, flat_params, flat_losses = trained(extending_config(method="p2-test", gamma=0.0))
  p2, p2_params, p2_losses = trained(extending_config(method="p2-test", gamma=1.0))
  assert type(flat.method) is P2 and type(ddpm.method) is methods.DDPM
  jax.tree.map(np.testing.assert_array_equal, flat_params, ddpm_params)
  assert flat_losses == ddpm_losses
  assert p2_losses[0] < ddpm_losses[0]
  assert not np.array_equal(p2_params["a"], ddpm_params["a"])


def test_min_snr_weighting_is_one_config_key_of_ddpm():
  """config.diffusion.snr_gamma: a γ above every SNR weighs ε's L_simple by SNR / SNR = 1, the
  plain run's parameters bit for bit; γ = 5 down-weighs the high-SNR steps and changes them."""
  def config(gamma):
    c = extending_config()
    c.diffusion.snr_gamma = gamma
    return c
  _, plain, plain_losses = trained(config(0.0))
  _, above, above_losses = trained(config(1e30))
  _, five, five_losses = trained(config(5.0))
  jax.tree.map(np.testing.assert_array_equal, above, plain)
  assert above_losses == plain_losses and five_losses[0] < plain_losses[0]
  assert not np.array_equal(five["a"], plain["a"])
  bad = config(5.0)
  bad.diffusion.loss = "vlb"
  with pytest.raises(ValueError, match="config.diffusion.snr_gamma weighs L_simple's term"):
    build(bad)
  bad.diffusion.snr_gamma = -1.0
  with pytest.raises(ValueError, match=r"config.diffusion.snr_gamma must be a number >= 0"):
    build(bad)


def test_the_ddpm_command_trains_and_samples_with_them(tmp_path, capsys):
  """`ddpm train` with config.method and `ddpm sample --sampler` naming them by import path,
  in a new process's way: nothing registered by hand."""
  data = tmp_path / "x.npy"
  np.save(data, (MEAN + STD * np.random.default_rng(0).normal(size=(64, *SHAPE))).astype(
      np.float32))
  config = tmp_path / "p2.py"
  config.write_text(
      "import sys\n"
      f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
      "from test_extending import extending_config\n"
      f"def get_config():\n  return extending_config({str(data)!r}, 'test_extending:P2')\n")
  workdir, out = tmp_path / "run", tmp_path / "s.npz"
  assert cli.main(["train", "--config", str(config), "--workdir", str(workdir)]) == 0
  run = load_run(str(workdir))
  assert isinstance(run.method, P2) and run.config.method == "test_extending:P2"
  assert cli.main(["sample", "--workdir", str(workdir), "--num", "8", "--out", str(out),
                   "--sampler", "test_extending:EulerODE", "--steps", "6"]) == 0
  samples = np.load(out)["arr_0"]
  assert samples.shape == (8, *SHAPE) and np.isfinite(samples).all()
  assert cli.main(["sample", "--workdir", str(workdir), "--num", "8", "--out", str(out),
                   "--sampler", "euler-ode", "--eta", "0.5"]) == 2
  assert "--eta is no option of sampler 'euler-ode'" in capsys.readouterr().err
  assert "test_extending" in sys.modules


BEFORE = pathlib.Path(__file__).parent / "data"


class Gaussian:
  """The data the run folder of before was trained on."""
  def __len__(self):
    return 64

  def __getitem__(self, i):
    return {"x": (MEAN + STD * np.random.default_rng(i).normal(size=SHAPE)).astype(np.float32)}


def test_a_run_folder_written_before_the_redesign_loads_samples_and_resumes(tmp_path):
  """tests/data/run_before_engine was written by the engine before the Run/Method/Sampler
  redesign (tests/data/make_run_before_engine.py): it loads as a DDPM run, samples what that
  engine sampled, and resumes."""
  start = {"a": jnp.full((T, *SHAPE), 0.5), "b": jnp.zeros((T, *SHAPE))}
  network = lambda: models.function(affine, params=start, name="(affine)")
  run = load_run(str(BEFORE / "run_before_engine"), model=network())
  assert run.step == 2 and type(run.method) is methods.DDPM
  x = draw_samples(run, np.zeros(8, int), sampler="ddim", steps=5)
  np.testing.assert_allclose(x, np.load(BEFORE / "samples_before_engine.npz")["arr_0"],
                             rtol=1e-5, atol=1e-6)
  folder = tmp_path / "run"
  shutil.copytree(BEFORE / "run_before_engine", folder)
  config = run.config
  config.train.num_steps = 4
  assert train(config, str(folder), model=network(), source=Gaussian()) == 4
