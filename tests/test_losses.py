"""Training losses: their targets, scales and where their gradients go."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion

T = 1000


@pytest.fixture(scope="module")
def schedule():
  return diffusion.make_schedule("linear", T)


def test_simple_loss_targets(schedule):
  x0 = jax.random.uniform(jax.random.key(0), (4, 64, 64, 3), minval=-1, maxval=1)
  zero = lambda x, t: jnp.zeros_like(x)
  key = jax.random.key(1)
  eps = diffusion.training_losses(zero, schedule, x0, key)
  np.testing.assert_allclose(eps["mse"], 1.0, atol=0.02)  # E ε² = 1
  assert eps["mse"].dtype == jnp.float32 and eps["t"].shape == (4,)
  np.testing.assert_array_equal(eps["loss"], eps["mse"])
  x0_loss = diffusion.training_losses(zero, schedule, x0, key, prediction="x0")
  np.testing.assert_allclose(x0_loss["mse"], jnp.mean(x0**2, axis=(1, 2, 3)), rtol=1e-5)
  v = diffusion.training_losses(zero, schedule, x0, key, prediction="v")
  a = schedule.alphas_cumprod[v["t"]]
  np.testing.assert_allclose(v["mse"], a + (1 - a) * jnp.mean(x0**2, axis=(1, 2, 3)),
                             rtol=0.03)  # E v² = ᾱ + (1 - ᾱ) x0²


def test_simple_loss_of_the_true_noise_is_zero(schedule):
  """For data that is one point, ε is a function of x_t."""
  x0 = jnp.full((8, 5, 5, 1), 0.25)
  def oracle(x, t):
    a = schedule.alphas_cumprod[t][:, None, None, None]
    return (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
  loss = diffusion.loss_simple(oracle, schedule, x0, jax.random.key(2))
  assert loss.shape == () and float(loss) < 1e-6


def test_given_timesteps_and_keys(schedule):
  x0 = jax.random.uniform(jax.random.key(0), (3, 4, 2), minval=-1, maxval=1)
  fn = lambda x, t: 0.5 * x
  t = jnp.array([5, 500, 999])
  a = diffusion.training_losses(fn, schedule, x0, jax.random.key(3), t=t)
  b = diffusion.training_losses(fn, schedule, x0, jax.random.key(3), t=t)
  c = diffusion.training_losses(fn, schedule, x0, jax.random.key(4), t=t)
  np.testing.assert_array_equal(a["t"], t)
  np.testing.assert_array_equal(a["loss"], b["loss"])
  assert not np.allclose(a["loss"], c["loss"])


def test_given_noise_is_the_noise_of_x_t(schedule):
  """With ε given, x_t = sqrt(ᾱ) x0 + sqrt(1 - ᾱ) ε is built from it (a network that returns
  the ε it infers from x_t has zero loss) and the key no longer matters."""
  x0 = jax.random.uniform(jax.random.key(0), (3, 4, 2), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.key(5), x0.shape)
  t = jnp.array([5, 500, 999])
  def infer(x, t_):
    a = schedule.alphas_cumprod[t_][:, None, None]
    return (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
  exact = diffusion.training_losses(infer, schedule, x0, jax.random.key(3), t=t, noise=noise)
  assert float(jnp.max(exact["mse"])) < 1e-8
  half = lambda x, t_: 0.5 * x
  a = diffusion.training_losses(half, schedule, x0, jax.random.key(3), t=t, noise=noise)
  b = diffusion.training_losses(half, schedule, x0, jax.random.key(4), t=t, noise=noise)
  np.testing.assert_array_equal(a["loss"], b["loss"])
  with pytest.raises(ValueError, match=r"noise has shape \(3, 4\); x0 has \(3, 4, 2\)"):
    diffusion.training_losses(half, schedule, x0, jax.random.key(3), noise=noise[..., 0])


def test_vlb_loss_is_T_times_the_term(schedule):
  x0 = jnp.asarray(np.random.default_rng(0).choice(np.linspace(-1, 1, 256), (4, 6, 6, 3)),
                   jnp.float32)
  seen = []
  def fn(x, t):
    seen.append((x, t))
    return jnp.concatenate([0.3 * x, jnp.tanh(x)], -1)
  losses = diffusion.training_losses(fn, schedule, x0, jax.random.key(5), loss="vlb",
                                     variance="learned_range")
  (x_t, t), = seen
  vb = diffusion.vlb_term(schedule, fn(x_t, t), x0, x_t, t, variance="learned_range",
                          clip_x0=False)
  np.testing.assert_allclose(losses["vb"], vb, rtol=1e-6)
  np.testing.assert_allclose(losses["loss"], T * vb, rtol=1e-6)
  assert diffusion.loss_vlb(fn, schedule, x0, jax.random.key(5),
                            variance="learned_range") == pytest.approx(float(losses["loss"].mean()), rel=1e-6)


def test_hybrid_trains_the_variance_through_the_vlb_only(schedule):
  x0 = jnp.asarray(np.random.default_rng(0).choice(np.linspace(-1, 1, 256), (4, 6, 6, 3)),
                   jnp.float32)
  key = jax.random.key(6)

  def model(params):
    return lambda x, t: jnp.concatenate(
        [params["mean"] * x, jnp.broadcast_to(params["var"], x.shape)], -1)

  params = {"mean": jnp.float32(0.4), "var": jnp.float32(0.1)}
  grad = lambda loss_fn: jax.grad(lambda p: loss_fn(model(p), schedule, x0, key,
                                                    variance="learned_range"))(params)
  hybrid, simple, vlb = (grad(f) for f in (diffusion.loss_hybrid, diffusion.loss_simple,
                                           diffusion.loss_vlb))
  assert simple["var"] == 0
  np.testing.assert_allclose(hybrid["mean"], simple["mean"], rtol=1e-6)
  np.testing.assert_allclose(hybrid["var"], 0.001 * vlb["var"], rtol=1e-5)
  assert hybrid["var"] != 0 and vlb["mean"] != 0
  losses = diffusion.training_losses(model(params), schedule, x0, key, loss="hybrid",
                                     variance="learned_range", vlb_weight=0.01)
  np.testing.assert_allclose(losses["loss"], losses["mse"] + 0.01 * T * losses["vb"],
                             rtol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weighting_is_min_snr_times_the_x0_error(schedule, prediction):
  """Hang et al. 2023: each parameterisation's min-SNR-γ weighted L_simple equals
  min(SNR_t, γ) ||x_0 - x̂_0||² (x̂_0 the network's, converted), SNR_t = ᾱ_t / (1 - ᾱ_t) computed
  here in float64; t spans SNRs far above and below γ = 5."""
  from diffusion.losses import min_snr_weight
  x0 = jax.random.uniform(jax.random.key(0), (8, 4, 4, 1), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.key(1), x0.shape)
  t = jnp.array([0, 10, 50, 100, 200, 400, 700, 999])
  output = jax.random.normal(jax.random.key(2), x0.shape)
  out = diffusion.training_losses(lambda x_t, t: output, schedule, x0, jax.random.key(3),
                                  prediction=prediction, t=t, noise=noise)
  weighted = min_snr_weight(schedule, t, prediction, 5.0) * out["mse"]
  x_t = diffusion.q_sample(schedule, x0, t, noise)
  x0_hat = diffusion.x0_from_prediction(schedule, prediction, x_t, t, output)
  ac = np.asarray(schedule.alphas_cumprod, np.float64)[np.asarray(t)]
  snr = ac / (1 - ac)
  assert snr.max() > 100 * 5 and snr.min() < 5 / 100
  want = np.minimum(snr, 5.0) * np.mean(np.asarray(x0 - x0_hat, np.float64) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(weighted, want, rtol=2e-4)
  with pytest.raises(ValueError, match="gamma must be > 0"):
    min_snr_weight(schedule, t, prediction, 0.0)
