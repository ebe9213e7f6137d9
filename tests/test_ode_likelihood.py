"""The probability-flow ODE's likelihood against closed forms: Gaussian data with the exact
field gives the Gaussian's log-density (flow matching's straight path and a DDPM's at
fractional t); the Hutchinson-Skilling divergence is unbiased against the exact one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from test_continuous import MU, SIGMA, exact_velocity
from diffusion import models, ode_likelihood
from diffusion.ode_likelihood import gaussian_logp, log_likelihood


def test_the_straight_path_with_its_exact_velocity_gives_the_gaussians_density():
  x = jnp.asarray(stats.multivariate_normal(MU, SIGMA).rvs(64, random_state=0), jnp.float32)
  logp, steps = jax.jit(lambda x: log_likelihood(exact_velocity, x, 0.0, 1.0,
                                                 lambda y: gaussian_logp(y, 1.0)))(x)
  want = stats.multivariate_normal(MU, SIGMA).logpdf(np.asarray(x, np.float64))
  np.testing.assert_allclose(logp, want, atol=2e-3)
  assert 5 < int(steps.max()) < 1000


def test_a_ddpm_at_fractional_timesteps_with_its_exact_noise_gives_the_gaussians_density():
  """x_t = α(t) x_0 + σ(t) ε with log ᾱ(t) linear between the schedule's steps: from the exact
  ε̂(x, t) = σ C⁻¹ (x − α μ), C = α² Σ + σ² I, the ODE gives log N(x; α(0) μ, C(0))."""
  from test_flow_edm import config_of
  from diffusion.runs import build
  config = config_of("ddpm")
  with config.unlocked():
    config.data.shape = (2,)
    config.diffusion.num_steps = 1000
  log_ab = None

  def path(t):
    k = jnp.clip(jnp.floor(t), 0, 998).astype(jnp.int32)
    log = log_ab[k] + (t - k) * (log_ab[k + 1] - log_ab[k])
    return jnp.exp(0.5 * log), jnp.sqrt(-jnp.expm1(log))

  def eps(params, x, t):
    alpha, sigma = path(t[0])
    cov = alpha ** 2 * jnp.asarray(SIGMA, jnp.float32) + sigma ** 2 * jnp.eye(2)
    return sigma * (x - alpha * jnp.asarray(MU, jnp.float32)[None]) @ jnp.linalg.inv(cov).T

  run = build(config, models.function(eps, params={}))
  log_ab = jnp.asarray(run.diffusion.schedule.log_alphas_cumprod, jnp.float32)
  f = run.method.field(lambda x, t: eps({}, x, t))
  t0, t1 = run.method.ode_span()
  alpha0, sigma0 = (float(v) for v in path(jnp.float32(0.0)))
  cov0 = alpha0 ** 2 * SIGMA + sigma0 ** 2 * np.eye(2)
  x = jnp.asarray(stats.multivariate_normal(alpha0 * MU, cov0).rvs(64, random_state=1),
                  jnp.float32)
  logp, _ = jax.jit(lambda x: log_likelihood(f, x, t0, t1, lambda y: gaussian_logp(y, 1.0)))(x)
  # The prior N(0, I) stands for x_{T−1}'s N(α μ, α² Σ + σ² I), ᾱ_{T−1} ≈ 4e-5.
  np.testing.assert_allclose(logp, stats.multivariate_normal(alpha0 * MU, cov0).logpdf(
      np.asarray(x, np.float64)), atol=0.02)


def test_the_hutchinson_divergence_is_unbiased():
  """On a small random network: the mean of Rademacher estimates over probes equals the
  exact divergence within 4 standard errors, and one probe is not exact."""
  keys = jax.random.split(jax.random.key(0), 3)
  w1 = jax.random.normal(keys[0], (6, 16)) / 2
  w2 = jax.random.normal(keys[1], (16, 6)) / 4
  f = lambda x, t: jnp.tanh(x.reshape(x.shape[0], -1) @ w1 + t[:, None]) @ w2
  x = jax.random.normal(keys[2], (5, 6))
  t = jnp.full((5,), 0.3)
  _, exact = ode_likelihood.divergence(f, x, t)
  jac = jax.vmap(jax.jacfwd(lambda v, s: f(v[None], s[None])[0]))(x, t)
  np.testing.assert_allclose(exact, jnp.trace(jac, axis1=1, axis2=2), rtol=1e-5)
  probes = jax.random.rademacher(jax.random.key(1), (2000, 5, 6), jnp.float32)
  estimates = jax.vmap(lambda p: ode_likelihood.divergence(f, x, t, p)[1])(probes)
  mean, stderr = estimates.mean(0), estimates.std(0) / np.sqrt(len(probes))
  assert np.all(np.abs(mean - exact) < 4 * stderr), (mean, exact, stderr)
  assert np.all(estimates.std(0) > 0.01)


@pytest.mark.parametrize("exact", [True, False])
def test_bits_per_dim_of_dequantized_8_bit_data_under_the_exact_flow(exact, capsys):
  """Gaussian data N(MEAN, STD²) per coordinate on the 8-bit grid, under the exact velocity
  field: each image's dequantized bits/dim has the closed form E_u[−log N(y)] + D log 127.5
  over D ln 2, with y uniform over the image's bin; sharded over the 8 devices."""
  from test_flow_edm import MEAN, SHAPE, STD, config_of, exact_velocity as velocity
  from diffusion.distributed import make_mesh, replicate
  from diffusion.evaluation.ode_nll import dataset_ode_bits_per_dim
  from diffusion.runs import build
  from diffusion import cli
  config = config_of("flow")
  with config.unlocked():
    config.data.dtype = "uint8"
  run = build(config, models.function(lambda p, x, t: velocity(x, t / 1000), params={}))
  rng = np.random.default_rng(0)
  images = np.clip(np.round((MEAN + STD * rng.normal(size=(64, *SHAPE)) + 1) * 127.5), 0,
                   255).astype(np.uint8)
  mesh = make_mesh()
  result = dataset_ode_bits_per_dim(run, replicate({"params": {}}, mesh), images, mesh,
                                    jax.random.key(0), batch=32, probes=2, exact=exact,
                                    progress=False)
  half, d = 127.5, int(np.prod(SHAPE))
  centre = images.astype(np.float64) / half - 1
  nll = 0.5 * np.log(2 * np.pi * STD ** 2) + ((centre - MEAN) ** 2 + 1 / (12 * half ** 2)) / (
      2 * STD ** 2)
  want = (nll.reshape(len(images), -1).sum(1) + d * np.log(half)) / (d * np.log(2))
  assert result["bpd"] == pytest.approx(want.mean(), abs=0.01), (result, want.mean())
  assert result["num_images"] == 64 and result["probes"] == (1 if exact else 2)
  assert cli.main(["evaluate", "--ode-nll"]) == 2
  assert "--ode-nll needs --workdir" in capsys.readouterr().err
  assert cli.main(["evaluate", "--ode-decoder"]) == 2
  assert "--ode-decoder changes --ode-nll: give both" in capsys.readouterr().err


def test_a_ddpm_with_the_exact_denoiser_of_8_bit_images_pays_its_lowest_level_in_closed_form():
  """The exact ε of the empirical distribution of N distinct 8-bit images (levels 32 apart):
  the ODE's bits/dim of each is log2(N) / D plus the cost of scoring its 8-bit bin by the
  chain's first noise N(0, σ_0²), σ_0 = √β_1, in closed form: the part of the DDPM's ODE
  likelihood that no network can remove (experiments/README "Likelihood")."""
  from test_flow_edm import config_of
  from diffusion.distributed import make_mesh, replicate
  from diffusion.evaluation.ode_nll import dataset_ode_bits_per_dim
  from diffusion.runs import build
  config = config_of("ddpm")
  with config.unlocked():
    config.data.shape, config.data.dtype = (2, 2, 1), "uint8"
    config.diffusion.num_steps = 1000
  images = (np.array([[0, 0, 0, 0], [0, 0, 0, 7], [3, 1, 4, 1], [7, 7, 7, 7], [5, 2, 6, 0]])
            * 32 + 16).astype(np.uint8).reshape(5, 2, 2, 1)
  data = jnp.asarray(images.reshape(5, 4) / 127.5 - 1, jnp.float32)
  log_ab = None

  def eps(params, x, t):
    k = jnp.clip(jnp.floor(t), 0, 998).astype(jnp.int32)
    log = (log_ab[k] + (t - k) * (log_ab[k + 1] - log_ab[k]))[:, None]
    alpha, sigma = jnp.exp(0.5 * log), jnp.sqrt(-jnp.expm1(log))
    flat = x.reshape(len(x), -1)
    weights = jax.nn.softmax(-jnp.sum((flat[:, None] - alpha[:, None] * data[None]) ** 2, -1)
                             / (2 * sigma ** 2), axis=1)
    return ((flat - alpha * weights @ data) / sigma).reshape(x.shape)

  run = build(config, models.function(eps, params={}))
  log_ab = jnp.asarray(run.diffusion.schedule.log_alphas_cumprod, jnp.float32)
  mesh = make_mesh()
  # Each image 16 times, each time with its own dequantization noise (the mean over 320
  # draws of u has a standard error of 0.002), each solved alone and tightly.
  result = dataset_ode_bits_per_dim(run, replicate({"params": {}}, mesh), np.tile(
      images, (16, 1, 1, 1)), mesh, jax.random.key(0), batch=80, exact=True, progress=False,
      rtol=1e-7, atol=1e-7)
  sigma0 = np.sqrt(run.diffusion.betas[0])
  level = (np.log(sigma0 * np.sqrt(2 * np.pi)) + (1 / 255) ** 2 / (6 * sigma0 ** 2)
           + np.log(127.5)) / np.log(2)  # E_u[−log2 N(u; 0, σ_0²)] + log2 127.5
  assert level == pytest.approx(1.713, abs=1e-3)
  # At the default rtol = atol = 1e-5 this stiff field's solve comes out 0.011 low.
  assert result["bpd"] == pytest.approx(np.log2(5) / 4 + level, abs=0.008), result
  # The lowest level scored by the chain's discretized decoder instead (σ = √β̃_2 at t = 0,
  # every pixel an inner bin here): log2(N) / D plus the decoder's mass in the bin, the bound's
  # L_0 of a perfect model; 0.4 bits/dim below the dequantized figure.
  decoded = dataset_ode_bits_per_dim(run, replicate({"params": {}}, mesh), np.tile(
      images, (16, 1, 1, 1)), mesh, jax.random.key(0), batch=80, exact=True, progress=False,
      rtol=1e-7, atol=1e-7, decoder=True)
  betas = run.diffusion.betas
  abar = np.cumprod(1 - betas)
  sigma_decoder = np.sqrt(betas[1] * (1 - abar[0]) / (1 - abar[1]))
  inner = -np.log2(special.erf(1 / 255 / (sigma_decoder * np.sqrt(2))))
  assert decoded["decoder"] and inner == pytest.approx(1.305, abs=1e-3)
  assert decoded["bpd"] == pytest.approx(np.log2(5) / 4 + inner, abs=0.008), decoded
  with pytest.raises(ValueError, match="by a DDPM chain's decoder; this run's method is 'flow'"):
    from test_flow_edm import exact_velocity
    flow = build(config_of("flow"), models.function(lambda p, x, t: exact_velocity(x, t), {}))
    dataset_ode_bits_per_dim(flow, {"params": {}}, images, mesh, jax.random.key(0),
                             decoder=True)
