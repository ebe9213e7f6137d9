"""The power-function EMA and its post-hoc reconstruction, against closed forms, numerical
integration and a directly computed average on a toy training path."""

import numpy as np
import pytest
from scipy import integrate

from diffusion import power_ema


def test_sigma_rel_and_gamma_invert_each_other():
  # EDM2's two profiles (Karras et al. 2024, Sec. 3.1): σ_rel 0.05 and 0.10 are γ ≈ 16.97, 6.94.
  assert power_ema.gamma_of(0.05) == pytest.approx(16.97, abs=0.01)
  assert power_ema.gamma_of(0.10) == pytest.approx(6.94, abs=0.01)
  for sigma in (0.01, 0.05, 0.13, 0.25):
    assert power_ema.sigma_rel_of(power_ema.gamma_of(sigma)) == pytest.approx(sigma, rel=1e-10)
  # σ_rel is the std of the profile's τ / t: from its own moments.
  gamma = power_ema.gamma_of(0.08)
  density = lambda u: (gamma + 1) * u ** gamma
  mean = integrate.quad(lambda u: u * density(u), 0, 1)[0]
  var = integrate.quad(lambda u: (u - mean) ** 2 * density(u), 0, 1)[0]
  assert np.sqrt(var) == pytest.approx(0.08, rel=1e-8)
  for bad in (0.0, -0.1, 0.3, True):
    with pytest.raises(ValueError, match="`sigma_rel` must lie in"):
      power_ema.gamma_of(bad)


def test_the_update_averages_with_the_power_profile():
  """θ̂_t = Σ_k (k^{γ+1} − (k−1)^{γ+1}) / t^{γ+1} θ_k: the discrete profile, exactly."""
  rng = np.random.default_rng(0)
  path = rng.normal(size=(300, 3))
  gamma = 6.94
  ema = np.zeros(3)
  for t, theta in enumerate(path, start=1):
    b = power_ema.beta(t, gamma)
    ema = b * ema + (1 - b) * theta
  k = np.arange(1, 301, dtype=np.float64)
  weights = (k ** (gamma + 1) - (k - 1) ** (gamma + 1)) / 300.0 ** (gamma + 1)
  np.testing.assert_allclose(ema, weights @ path, rtol=1e-10)


def test_profile_inner_products_equal_numerical_integrals():
  def p(t, g):
    return lambda tau: (g + 1) * tau ** g / t ** (g + 1) if tau <= t else 0.0
  for (t1, g1, t2, g2) in ((100.0, 6.94, 100.0, 16.97), (40.0, 3.0, 100.0, 16.97),
                           (100.0, 1.0, 30.0, 0.5)):
    numeric = integrate.quad(lambda tau: p(t1, g1)(tau) * p(t2, g2)(tau), 0, min(t1, t2),
                             epsabs=0, epsrel=1e-12)[0]
    assert power_ema.profile_dot(t1, g1, t2, g2) == pytest.approx(numeric, rel=1e-8)


def test_a_tracked_profile_is_reconstructed_as_itself():
  steps = np.repeat(np.arange(1, 11) * 500.0, 2)
  gammas = np.tile([power_ema.gamma_of(0.05), power_ema.gamma_of(0.10)], 10)
  for i in (3, 12, 19):
    x = power_ema.coefficients(steps, gammas, steps[i], gammas[i])
    np.testing.assert_allclose(x, np.eye(20)[i], atol=1e-6)
    assert power_ema.profile_error(steps, gammas, x, steps[i], gammas[i]) < 1e-6


def test_a_new_length_is_reconstructed_from_snapshots_on_a_toy_training_path():
  """Noisy gradient descent on a quadratic whose optimum drifts: the average of σ_rel 0.07
  rebuilt from snapshots of the 0.05 and 0.10 averages (every 100 of 3,000 steps) equals the
  0.07 average computed along the path, within a small fraction of what separates 0.05 from
  0.10; at step 3,000 and at an earlier snapshot time."""
  rng = np.random.default_rng(1)
  tracked = [power_ema.gamma_of(0.05), power_ema.gamma_of(0.10)]
  target = power_ema.gamma_of(0.07)
  theta, emas, direct = np.zeros(4), [np.zeros(4), np.zeros(4)], {}
  snapshots, steps, gammas, direct_ema = [], [], [], np.zeros(4)
  for t in range(1, 3001):
    optimum = np.array([np.sin(t / 400), np.cos(t / 700), t / 3000, 1.0])
    theta = theta - 0.05 * (theta - optimum) + 0.05 * rng.normal(size=4)
    for j, g in enumerate(tracked):
      b = power_ema.beta(t, g)
      emas[j] = b * emas[j] + (1 - b) * theta
    b = power_ema.beta(t, target)
    direct_ema = b * direct_ema + (1 - b) * theta
    if t % 100 == 0:
      for j, g in enumerate(tracked):
        snapshots.append(emas[j].copy())
        steps.append(t)
        gammas.append(g)
      direct[t] = (direct_ema.copy(), emas[0].copy(), emas[1].copy())
  for at in (3000, 1500):
    x = power_ema.coefficients(steps, gammas, at, target)
    rebuilt = x @ np.stack(snapshots)
    want, a, b = direct[at]
    spread = np.linalg.norm(a - b)
    assert spread > 0.01
    assert np.linalg.norm(rebuilt - want) < 0.05 * spread, (rebuilt, want, spread)
    assert power_ema.profile_error(steps, gammas, x, at, target) < 0.05


# The engine: the train step keeps the power EMAs, training keeps their snapshots, `ddpm ema`
# rebuilds any σ_rel from them as a run folder that `ddpm sample` reads.

def _config(steps, power=(0.05, 0.10), every=2):
  from test_flow_edm import config_of
  config = config_of("ddpm", num_steps=steps, checkpoint_every=2)
  with config.unlocked():
    config.train.power_ema, config.train.ema_snapshot_every = power, every
  return config


def test_the_train_step_keeps_each_power_ema_as_its_recursion_says():
  import jax
  import jax.numpy as jnp
  from test_flow_edm import SHAPE, small_network
  from diffusion.distributed import make_mesh
  from diffusion.runs import base_key, build
  from diffusion.training import create_state, make_train_step, shard_batch
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(16, *SHAPE)).astype(np.float32),
           "label": np.zeros(16, np.int32)}
  mesh = make_mesh(jax.devices()[:1])
  run = build(_config(3), small_network())
  state = create_state(run, mesh, {"x": jnp.zeros((1, *SHAPE))})
  step = make_train_step(run, mesh)
  path = []
  for _ in range(3):
    state, _ = step(state, shard_batch(batch, mesh), base_key(0, "train"))
    path.append(jax.device_get(state.params))
  for name, sigma in (("sigma_rel_0_05", 0.05), ("sigma_rel_0_1", 0.10)):
    gamma, expected = power_ema.gamma_of(sigma), None
    for t, params in enumerate(path, start=1):
      b = power_ema.beta(t, gamma)
      expected = params if expected is None else jax.tree.map(
          lambda e, p: b * e + (1 - b) * p, expected, params)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7),
                 jax.device_get(state.power_emas[name]), expected)
  assert not np.allclose(state.power_emas["sigma_rel_0_05"]["w"],
                         state.power_emas["sigma_rel_0_1"]["w"])


def test_ddpm_ema_rebuilds_a_profile_of_a_resumed_run_and_samples_it(tmp_path, capsys):
  """A run trained 2 steps without power EMAs resumes to 6 with them (they start from the
  classic EMA) and keeps snapshots at steps 4 and 6; the reconstruction of a tracked σ_rel is
  that profile, another σ_rel a different average, and `ddpm ema` writes a run folder that
  `load_run` (as `ddpm sample`) reads."""
  import jax
  from test_flow_edm import Gaussian, small_network
  from diffusion import cli, posthoc
  from diffusion.runs import Checkpoints, load_run
  from diffusion.training import train
  workdir = str(tmp_path / "run")
  train(_config(2, power=(), every=0), workdir, model=small_network(), source=Gaussian())
  assert not (tmp_path / "run" / "ema_snapshots").exists()
  assert train(_config(6), workdir, model=small_network(), source=Gaussian()) == 6
  assert posthoc.snapshot_steps(workdir) == [4, 6]
  saved = Checkpoints(workdir, read_only=True).restore_part("power_emas", 6)
  recon = posthoc.reconstruct(workdir, 0.10)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               recon.params, jax.device_get(saved["sigma_rel_0_1"]))
  both = posthoc.reconstruct_all(workdir, [0.10, 0.07])  # one pass over the snapshots
  np.testing.assert_array_equal(both[0].params["w"], recon.params["w"])
  np.testing.assert_array_equal(both[1].params["w"], posthoc.reconstruct(workdir, 0.07).params["w"])
  other = posthoc.reconstruct(workdir, 0.07, step=4)
  assert other.step == 4 and not np.allclose(other.params["w"], recon.params["w"])
  out = str(tmp_path / "ema07")
  assert cli.main(["ema", "--workdir", workdir, "--sigma-rel", "0.07", "--out", out]) == 0
  run = load_run(out, model=small_network())
  assert run.step == 6
  np.testing.assert_allclose(run.variables["params"]["w"],
                             posthoc.reconstruct(workdir, 0.07).params["w"], rtol=1e-6)
  capsys.readouterr()
  assert cli.main(["ema", "--workdir", workdir, "--sigma-rel", "0.07", "--step", "5", "--out",
                   str(tmp_path / "x")]) == 2
  assert "--step 5 has no EMA snapshot; the snapshots are at steps 4, 6" in capsys.readouterr().err
