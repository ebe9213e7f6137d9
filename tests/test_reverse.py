"""One reverse step: p_mean_variance, p_sample and DDIM, against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion

T = 1000
STEPS = np.array([0, 1, 7, 400, 998, 999])


@pytest.fixture(scope="module")
def tables():
  betas = diffusion.linear_betas(T)
  ac = np.cumprod(1 - betas)
  ac_prev = np.append(1.0, ac[:-1])
  pv = betas * (1 - ac_prev) / (1 - ac)
  return dict(schedule=diffusion.Schedule.from_betas(betas), betas=betas, ac=ac,
              ac_prev=ac_prev, pv=pv)


def col(a, t):
  """a[t] shaped [B, 1, 1, 1]."""
  return np.asarray(a)[t][:, None, None, None]


def noised(rng, tables, t, shape=(6, 4, 3, 2)):
  x0 = rng.uniform(-1, 1, shape)
  eps = rng.standard_normal(shape)
  a = col(tables["ac"], t)
  return x0, eps, np.sqrt(a) * x0 + np.sqrt(1 - a) * eps


def f32(*arrays):
  return [jnp.asarray(a, jnp.float32) for a in arrays]


def test_eps_mean_is_eq_11(rng, tables):
  _, out, x_t = noised(rng, tables, STEPS)
  mean, *_ = diffusion.p_mean_variance(tables["schedule"], *f32(out, x_t),
                                       jnp.asarray(STEPS), clip_x0=False)
  b = col(tables["betas"], STEPS)
  want = (x_t - b / np.sqrt(1 - col(tables["ac"], STEPS)) * out) / np.sqrt(1 - b)
  np.testing.assert_allclose(mean, want, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_true_predictions_give_the_posterior_mean(rng, tables, prediction):
  x0, eps, x_t = noised(rng, tables, STEPS)
  a = col(tables["ac"], STEPS)
  out = {"eps": eps, "x0": x0, "v": np.sqrt(a) * eps - np.sqrt(1 - a) * x0}[prediction]
  mean, _, _, pred_x0 = diffusion.p_mean_variance(
      tables["schedule"], *f32(out, x_t), jnp.asarray(STEPS), prediction=prediction)
  b, a_prev = col(tables["betas"], STEPS), col(tables["ac_prev"], STEPS)
  want = (np.sqrt(a_prev) * b / (1 - a) * x0
          + np.sqrt(1 - b) * (1 - a_prev) / (1 - a) * x_t)
  np.testing.assert_allclose(pred_x0, x0, atol=3e-3 if prediction == "eps" else 1e-5)
  np.testing.assert_allclose(mean, want, atol=5e-5)


def test_variance_types(rng, tables):
  t = jnp.asarray(STEPS)
  _, eps, x_t = noised(rng, tables, STEPS)
  u = rng.uniform(-1, 1, x_t.shape)
  pv, betas = tables["pv"], tables["betas"]
  log_pv_clipped = np.log(np.append(pv[1], pv[1:]))
  large = np.append(pv[1], betas[1:])
  frac = (u + 1) / 2
  cases = {
      "fixed_small": (eps, col(pv, STEPS), col(log_pv_clipped, STEPS)),
      "fixed_large": (eps, col(large, STEPS), col(np.log(large), STEPS)),
      "learned_range": (np.concatenate([eps, u], -1), None,
                        frac * col(np.log(betas), STEPS) + (1 - frac) * col(log_pv_clipped, STEPS)),
      "learned": (np.concatenate([eps, u], -1), None, u),
  }
  fixed_mean = None
  for variance, (out, want_var, want_log) in cases.items():
    mean, var, log_var, _ = diffusion.p_mean_variance(
        tables["schedule"], *f32(out, x_t), t, variance=variance)
    assert mean.shape == var.shape == log_var.shape == x_t.shape
    want_log = np.broadcast_to(want_log, x_t.shape)
    np.testing.assert_allclose(log_var, want_log, rtol=1e-5, atol=1e-5, err_msg=variance)
    np.testing.assert_allclose(var, np.exp(want_log) if want_var is None else
                               np.broadcast_to(want_var, x_t.shape), rtol=1e-5,
                               err_msg=variance)
    # The variance channels do not touch the mean.
    fixed_mean = mean if fixed_mean is None else fixed_mean
    np.testing.assert_allclose(mean, fixed_mean, rtol=1e-6, err_msg=variance)


def test_clipping_of_the_predicted_x0(tables):
  x_t = jnp.zeros((2, 3, 1))
  out = jnp.array([[[3.0], [-3.0], [0.5]]] * 2)
  t = jnp.array([10, 500])
  _, _, _, clipped = diffusion.p_mean_variance(tables["schedule"], out, x_t, t,
                                               prediction="x0")
  np.testing.assert_array_equal(clipped, np.clip(out, -1, 1))
  _, _, _, raw = diffusion.p_mean_variance(tables["schedule"], out, x_t, t,
                                           prediction="x0", clip_x0=False)
  np.testing.assert_array_equal(raw, out)


def test_p_sample_adds_sigma_z_except_at_t_0(tables):
  s = tables["schedule"]
  x_t = jax.random.normal(jax.random.key(1), (3, 64, 64, 3))
  out = jax.random.normal(jax.random.key(2), x_t.shape)
  t = jnp.array([0, 5, 700])
  mean, var, _, pred = diffusion.p_mean_variance(s, out, x_t, t, variance="fixed_large")
  x_prev, pred_x0 = diffusion.p_sample(s, out, x_t, t, jax.random.key(3),
                                       variance="fixed_large")
  np.testing.assert_array_equal(pred_x0, pred)
  np.testing.assert_array_equal(x_prev[0], mean[0])
  z = (x_prev[1:] - mean[1:]) / jnp.sqrt(var[1:])
  assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
  other, _ = diffusion.p_sample(s, out, x_t, t, jax.random.key(4), variance="fixed_large")
  assert not np.allclose(other[1:], x_prev[1:])


def test_ddim_with_eta_1_is_the_ancestral_step(tables):
  """η = 1 and t_prev = t - 1 give mean μ̃ and variance β̃ (DDIM Sec. 4.1)."""
  s = tables["schedule"]
  x_t = jax.random.normal(jax.random.key(1), (len(STEPS), 8, 8, 3))
  out = jax.random.normal(jax.random.key(2), x_t.shape)
  t = jnp.asarray(STEPS)
  key = jax.random.key(3)
  ancestral, _ = diffusion.p_sample(s, out, x_t, t, key)
  ddim, _ = diffusion.ddim_step(s, out, x_t, t, t - 1, key, eta=1.0)
  np.testing.assert_allclose(ddim, ancestral, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ddim_follows_the_trajectory_of_the_true_noise(rng, tables, prediction):
  """With the true ε, η = 0 lands on sqrt(ᾱ_prev) x_0 + sqrt(1 - ᾱ_prev) ε."""
  x0, eps, x_t = noised(rng, tables, STEPS)
  a = col(tables["ac"], STEPS)
  out = eps if prediction == "eps" else np.sqrt(a) * eps - np.sqrt(1 - a) * x0
  t_prev = np.array([-1, 0, 2, 100, 500, -1])
  got, _ = diffusion.ddim_step(tables["schedule"], *f32(out, x_t), jnp.asarray(STEPS),
                               jnp.asarray(t_prev), None, prediction=prediction,
                               clip_x0=False)
  a_prev = col(np.append(tables["ac"], 1.0), t_prev)  # index -1 is ᾱ = 1
  np.testing.assert_allclose(got, np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps,
                             atol=2e-3 if prediction == "eps" else 2e-5)
  # ... and the inverse step goes up the same trajectory.
  t_next = np.array([5, 2, 500, 999, 999, 999])
  up, _ = diffusion.ddim_inverse_step(tables["schedule"], *f32(out, x_t),
                                      jnp.asarray(STEPS), jnp.asarray(t_next),
                                      prediction=prediction)
  a_next = col(tables["ac"], t_next)
  np.testing.assert_allclose(up, np.sqrt(a_next) * x0 + np.sqrt(1 - a_next) * eps,
                             atol=2e-3 if prediction == "eps" else 2e-5)


def test_ddim_eta_sets_sigma_of_eq_16(rng, tables):
  _, out, x_t = noised(rng, tables, STEPS)
  t_prev = np.array([-1, 0, 3, 300, 990, 0])
  key = jax.random.key(7)
  eta = 0.5
  got, pred_x0 = diffusion.ddim_step(tables["schedule"], *f32(out, x_t), jnp.asarray(STEPS),
                                     jnp.asarray(t_prev), key, eta=eta, clip_x0=False)
  z = np.asarray(jax.random.normal(key, x_t.shape), np.float64)
  a, a_prev = col(tables["ac"], STEPS), col(np.append(tables["ac"], 1.0), t_prev)
  sigma = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
  x0 = (x_t - np.sqrt(1 - a) * out) / np.sqrt(a)
  want = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * out + sigma * z
  np.testing.assert_allclose(pred_x0, x0, rtol=1e-3, atol=1e-3)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_ddim_refuses_eta_outside_0_1_of_any_concrete_type(tables):
  s = tables["schedule"]
  x_t = jnp.zeros((2, 5, 1))
  t, t_prev = jnp.array([500, 20]), jnp.array([480, -1])
  for eta in (2.0, np.float32(2.0), jnp.asarray(-0.5), 3):
    with pytest.raises(ValueError, match="eta must lie in"):
      diffusion.ddim_step(s, x_t, x_t, t, t_prev, jax.random.key(0), eta=eta)
  # A traced η cannot be checked, and is taken.
  jax.jit(lambda eta: diffusion.ddim_step(s, x_t, x_t, t, t_prev, jax.random.key(0),
                                          eta=eta))(0.5)


def test_ddim_eta_0_is_deterministic(tables):
  s = tables["schedule"]
  x_t = jax.random.normal(jax.random.key(1), (2, 5, 1))
  out = jnp.tanh(x_t)
  t, t_prev = jnp.array([500, 20]), jnp.array([480, -1])
  runs = [diffusion.ddim_step(s, out, x_t, t, t_prev, key)[0]
          for key in (None, jax.random.key(0), jax.random.key(1))]
  np.testing.assert_array_equal(runs[0], runs[1])
  np.testing.assert_array_equal(runs[0], runs[2])


def test_ddim_inversion_reconstructs_an_image(tables):
  """Encode with the inverse steps, decode with η = 0: back to the image.

  The DDIM ODE is integrated to first order, so the error halves as the
  number of steps doubles.
  """
  s = tables["schedule"]
  eps_model = lambda x, t: 0.5 * jnp.tanh(x) + 0.01 * t[:, None, None, None] / T
  x0 = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=-1, maxval=1)
  full = lambda step: jnp.full((2,), step)

  def up(x, steps):
    t, t_next = map(full, steps)
    return diffusion.ddim_inverse_step(s, eps_model(x, t), x, t, t_next)[0], None

  def down(x, steps):
    t, t_prev = map(full, steps)
    return diffusion.ddim_step(s, eps_model(x, t), x, t, t_prev, None,
                               clip_x0=False)[0], None

  @jax.jit
  def round_trip_error(steps):
    latent, _ = jax.lax.scan(up, x0, (steps[:-1], steps[1:]))
    x, _ = jax.lax.scan(down, latent, (steps[::-1][:-1], steps[::-1][1:]))
    return jnp.abs(x - x0).max()

  errors = [float(round_trip_error(jnp.linspace(0, T - 1, n).round().astype(int)))
            for n in (100, 200, 1000)]
  assert errors[2] < 0.02
  assert 0.4 < errors[1] / errors[0] < 0.6


@pytest.mark.parametrize("sampler", ["fixed_small", "fixed_large", "ddim_eta0", "ddim_eta1"])
def test_chains_of_the_optimal_denoiser_sample_the_data(tables, sampler):
  """Data N(μ, s²): E[ε | x_t] is known, and the chain must end on N(μ, s²)."""
  s, mu, std, n = tables["schedule"], 0.1, 0.3, 20_000

  def oracle(x, t):
    a = s.alphas_cumprod[t][:, None, None]
    return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * std**2 + 1 - a)

  def step(x, t):
    ts, key = jnp.full((n,), t), jax.random.fold_in(jax.random.key(1), t)
    if sampler.startswith("ddim"):
      return diffusion.ddim_step(s, oracle(x, ts), x, ts, ts - 1, key, clip_x0=False,
                                 eta=float(sampler[-1]))[0], None
    return diffusion.p_sample(s, oracle(x, ts), x, ts, key, variance=sampler,
                              clip_x0=False)[0], None

  x_T = jax.random.normal(jax.random.key(0), (n, 1, 1))
  x0, _ = jax.jit(lambda x: jax.lax.scan(step, x, jnp.arange(T)[::-1]))(x_T)
  se = std / np.sqrt(n)
  assert abs(float(x0.mean()) - mu) < 4 * se
  # β̃ is a little smaller than the true reverse variance: fixed_small and
  # DDIM with η = 1 (the same chain) end a little narrow.
  assert abs(float(x0.std()) / std - 1) < 0.025
