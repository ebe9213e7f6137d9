"""The samplers against the exact answer for Gaussian data, whose optimal denoiser is known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import diffusion
from diffusion import samplers

T = 1000
MU, STD = 0.1, 0.3
BETAS = diffusion.linear_betas(T)
SCHEDULE = diffusion.Schedule.from_betas(BETAS)


def oracle(x, t):
  """E[ε | x_t] for data N(MU, STD²): the optimal ε-predictor."""
  a = SCHEDULE.alphas_cumprod[t].reshape(-1, 1, 1)
  return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * MU) / (a * STD**2 + 1 - a)


def run_named(sampler, network, betas, schedule, steps, x, keys, *, prediction, variance,
              clip_x0, **options):
  """The chain named `sampler` through its functional form (`ancestral` takes the betas, the
  others a Schedule)."""
  if sampler == "ddpm":
    return samplers.ancestral(network, betas, steps, x, keys, prediction=prediction,
                              variance=variance, clip_x0=clip_x0)
  fn = {"ddim": samplers.ddim, "dpm++": samplers.dpm_solver_pp_2m, "heun": samplers.heun,
        "edm-sde": samplers.edm_sde}[sampler]
  if sampler in ("ddim", "dpm++"):
    options["variance"] = variance
  return fn(network, schedule, steps, x, keys, prediction=prediction, clip_x0=clip_x0, **options)


def chain(sampler, count, n=20_000, seed=0, spacing=None, **options):
  """Samples of `sampler` over `count` steps; `seed` draws the chain's noise, not x_T."""
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(n))
  x_T = jax.random.normal(jax.random.key(1000), (n, 1, 1))
  steps = samplers.spaced_steps(SCHEDULE, count, spacing or samplers.get(sampler).default_spacing)
  run = jax.jit(lambda x, k: run_named(sampler, oracle, BETAS, SCHEDULE, steps, x, k,
                                          prediction="eps", variance="fixed_small",
                                          clip_x0=False, **options))
  return np.asarray(run(x_T, keys)).ravel()


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "logsnr"])
def test_spaced_steps(spacing):
  for count in (1, 2, 10, 50, 1000):
    steps = samplers.spaced_steps(SCHEDULE, count, spacing)
    assert len(steps) == count and steps[0] == 999 and np.all(np.diff(steps) < 0)
    assert count == 1 or steps[-1] == 0
  partial = samplers.spaced_steps(SCHEDULE, 20, spacing, start=300)
  assert partial[0] == 300 and partial[-1] == 0 and len(partial) == 20
  np.testing.assert_array_equal(samplers.spaced_steps(SCHEDULE, None, spacing), np.arange(999, -1, -1))


def test_the_ddim_papers_spacings():
  np.testing.assert_array_equal(samplers.spaced_steps(SCHEDULE, 10),
                                [999, 888, 777, 666, 555, 444, 333, 222, 111, 0])
  quadratic = samplers.spaced_steps(SCHEDULE, 10, "quadratic")[::-1]
  np.testing.assert_allclose(quadratic, 999 * np.linspace(0, 1, 10) ** 2, atol=0.5)


def test_bad_spacing_arguments():
  with pytest.raises(ValueError, match=r"steps must be an int in \[1, 1000\]"):
    samplers.spaced_steps(SCHEDULE, 1001)
  with pytest.raises(ValueError, match="spacing must be one of"):
    samplers.spaced_steps(SCHEDULE, 10, "cubic")
  with pytest.raises(ValueError, match=r"start step must lie in \[0, 1000\)"):
    samplers.spaced_steps(SCHEDULE, 10, start=1000)


def test_ddim_with_eta_1_over_every_step_is_ancestral_sampling_in_distribution():
  ancestral = chain("ddpm", None, seed=0)
  ddim = chain("ddim", 1000, seed=1, eta=1.0)
  assert not np.allclose(ancestral, ddim)  # independent noise
  assert stats.ks_2samp(ancestral, ddim).pvalue > 0.01
  for x in (ancestral, ddim):  # both end on the data, a little narrow (σ² = β̃)
    assert abs(x.mean() - MU) < 4 * STD / np.sqrt(len(x)) and abs(x.std() / STD - 1) < 0.03


def test_ddim_with_eta_0_is_deterministic():
  np.testing.assert_array_equal(chain("ddim", 50, n=100, seed=0), chain("ddim", 50, n=100, seed=7))
  assert not np.array_equal(chain("ddim", 50, n=100, eta=0.5, seed=0),
                            chain("ddim", 50, n=100, eta=0.5, seed=7))


def test_dpm_solver_pp_is_accurate_in_few_steps():
  """The probability-flow ODE maps N(0, 1) exactly onto the data N(MU, STD²)."""
  exact = chain("ddim", 1000, n=4000)  # the ODE to first order with tiny steps
  for steps, tolerance in ((10, 0.05), (20, 0.03)):
    dpm = chain("dpm++", steps, n=4000)
    ddim = chain("ddim", steps, n=4000)
    assert np.abs(dpm - exact).max() < tolerance
    assert np.abs(dpm - exact).max() < np.abs(ddim - exact).max() / 4
    assert abs(dpm.std() / STD - 1) < 0.04


@pytest.mark.parametrize("count", [1000, 100, 10])
def test_respacing_keeps_the_marginals_of_the_kept_steps(count):
  """With the exact reverse variances of the respaced chain, every step draws from the true
  q(x_{t_{i-1}} | x_{t_i}): the chain ends on the data for any number of steps."""
  kept = np.sort(samplers.spaced_steps(SCHEDULE, count))
  respaced = diffusion.Schedule.from_betas(diffusion.respace_betas(BETAS, kept))
  np.testing.assert_allclose(respaced.alphas_cumprod, SCHEDULE.alphas_cumprod[kept], rtol=1e-5)

  def exact(x, t):
    i = jnp.searchsorted(jnp.asarray(kept), t)
    a = respaced.alphas_cumprod[i].reshape(-1, 1, 1)
    var_x0 = STD**2 * (1 - a) / (a * STD**2 + 1 - a)
    var = (respaced.posterior_variance[i].reshape(-1, 1, 1)
           + respaced.posterior_mean_coef1[i].reshape(-1, 1, 1) ** 2 * var_x0)
    return jnp.concatenate([oracle(x, t), jnp.log(var)], -1)

  n = 20_000
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(n))
  x_T = jax.random.normal(jax.random.key(1), (n, 1, 1))
  x = np.asarray(samplers.ancestral(exact, BETAS, kept[::-1], x_T, keys, variance="learned",
                                    clip_x0=False)).ravel()
  assert abs(x.mean() - MU) < 4 * STD / np.sqrt(n)
  assert abs(x.std() / STD - 1) < 0.015


def test_classifier_free_guidance_mixes_the_two_predictions():
  def model_fn(x, t, y):  # "ε" = label, variance channel = 10 · label
    y = y.astype(jnp.float32).reshape(-1, 1, 1, 1)
    return jnp.concatenate([jnp.broadcast_to(y, x.shape), jnp.broadcast_to(10 * y, x.shape)], -1)
  labels = jnp.array([2, 3])
  guided = samplers.classifier_free_guidance(model_fn, labels, null_class=10, scale=3.0, channels=1)
  out = guided(jnp.zeros((2, 4, 4, 1)), jnp.array([5, 5]))
  # ε̃ = ε_∅ + w (ε_y - ε_∅) with ε_∅ = 10; the variance is the conditional one.
  np.testing.assert_allclose(out[:, 0, 0, 0], 10 + 3 * (np.array([2, 3]) - 10))
  np.testing.assert_allclose(out[:, 0, 0, 1], [20, 30])


# EDM's samplers on a 3-D Gaussian with a diagonal covariance, whose denoiser and
# probability-flow ODE have closed forms: in EDM's units (x = x_0 + σ n), every
# coordinate keeps (x - μ) / sqrt(v + σ²), so σ_start -> 0 maps x to μ + sqrt(v / (v + σ²)) (x - μ).
MEANS, VARS = np.array([[0.5, -0.3, 0.0]]), np.array([[0.04, 0.25, 1.0]])


def gaussian_eps(x, t):
  """E[ε | x_t] for data N(MEANS, diag(VARS)): the optimal ε-predictor."""
  a = SCHEDULE.sqrt_alphas_cumprod[t][:, None]
  s = SCHEDULE.sqrt_one_minus_alphas_cumprod[t][:, None]
  x0 = MEANS + VARS * a / (a * a * VARS + s * s) * (x - a * MEANS)
  return (x - a * x0) / s


def edm_chain(sampler, count, n=4096, seed=0):
  steps = samplers.spaced_steps(SCHEDULE, count, "karras")
  x_T = jax.random.normal(jax.random.key(1000), (n, 3))
  keys = jax.random.split(jax.random.key(seed), n)
  run = jax.jit(lambda x, k: run_named(sampler, gaussian_eps, BETAS, SCHEDULE, steps, x, k,
                                          prediction="eps", variance="fixed_small",
                                          clip_x0=False))
  sigma = diffusion.edm.sigmas(SCHEDULE)[steps[0]]
  x = np.asarray(x_T, np.float64) * np.sqrt(1 + sigma ** 2)  # EDM's units at steps[0]
  return np.asarray(run(x_T, keys), np.float64), MEANS + np.sqrt(VARS / (VARS + sigma ** 2)) * (
      x - MEANS)


def test_karras_spacing_follows_edm_from_sigma_80():
  steps = samplers.spaced_steps(SCHEDULE, 18, "karras")
  sigmas = diffusion.edm.sigmas(SCHEDULE)[steps]
  assert len(steps) == 18 and np.all(np.diff(steps) < 0) and steps[-1] == 0
  assert abs(np.log(sigmas[0] / 80)) < 0.01  # the linear schedule's σ_999 is 157
  want = diffusion.edm.karras_sigmas(18, sigmas[-1], sigmas[0])  # eq. (5), ρ = 7
  np.testing.assert_allclose(np.log(sigmas[1:-1]), np.log(want[1:-1]), atol=0.05)  # σ_1 / σ_0 = 1.7
  np.testing.assert_array_equal(samplers.spaced_steps(SCHEDULE, 1, "karras"), steps[:1])


def test_heun_follows_the_probability_flow_ode_to_second_order():
  """With the exact denoiser, Heun's chain lands each sample near the exact ODE solution and
  the samples on the data's mean and covariance; doubling the steps cuts the error about
  4-fold (2nd order; an Euler chain would halve it). Its error is a slight overshoot of the
  spread: the std is 2-7 % too wide at 18 steps (35 evaluations), 1-2 % at 35."""
  errors = {}
  for count in (18, 35):
    x, exact = edm_chain("heun", count, n=20_000)
    errors[count] = np.sqrt(np.mean((x - exact) ** 2))
    assert np.all(np.abs(x.mean(0) - MEANS[0]) < 4 * np.sqrt(VARS[0] / len(x))), x.mean(0)
    cov = np.cov(x.T)
    np.testing.assert_allclose(cov[np.triu_indices(3, 1)], 0, atol=0.01)
    np.testing.assert_allclose(np.sqrt(np.diag(cov) / VARS[0]), 1,
                               atol=0.08 if count == 18 else 0.03)
  assert errors[18] < 0.03 and errors[18] / errors[35] > 3.2


def test_edm_sde_samples_the_data_and_depends_on_its_noise():
  x, _ = edm_chain("edm-sde", 40, n=20_000, seed=0)
  assert np.all(np.abs(x.mean(0) - MEANS[0]) < 5 * np.sqrt(VARS[0] / len(x))), x.mean(0)
  np.testing.assert_allclose(np.std(x, 0) / np.sqrt(VARS[0]), 1, atol=0.06)
  other, _ = edm_chain("edm-sde", 40, n=64, seed=1)
  assert not np.allclose(other, x[:64])
  steps = samplers.spaced_steps(SCHEDULE, 40, "karras")
  hats = samplers.churned_steps(SCHEDULE, steps)
  sigmas = diffusion.edm.sigmas(SCHEDULE)
  churned = (sigmas[steps] >= 0.01) & (sigmas[steps] <= 1)
  assert np.all(hats[~churned] == steps[~churned]) and np.all(hats[churned] > steps[churned])
  np.testing.assert_allclose(sigmas[hats[churned]] / sigmas[steps[churned]], 1 + 30 / 40,
                             rtol=0.35)  # γ = min(S_churn / N, sqrt(2) - 1) = 0.41, rounded


def test_edm_sde_adds_no_noise_where_there_is_no_churn():
  """With ε ≡ 0 the denoiser returns its input, so x never moves and the output is x_T's
  EDM units plus the churn noise alone: N(0, Σ (σ̂_i² - σ_i²) S_noise²) per coordinate, from
  the γ > 0 steps only. Jitted and eager chains agree (in float32 under jit, σ̂² - σ² left a
  rounding residue that added noise of ~1e-4 σ at each of the γ = 0 steps)."""
  n, count = 512, 40
  steps = samplers.spaced_steps(SCHEDULE, count, "karras")
  x_T = jax.random.normal(jax.random.key(1000), (n, 8, 8, 1))
  keys = jax.random.split(jax.random.key(0), n)
  run = lambda x, k: run_named("edm-sde", lambda x, t: jnp.zeros_like(x), BETAS, SCHEDULE,
                                  steps, x, k, prediction="eps", variance="fixed_small",
                                  clip_x0=False)
  # At XLA's default optimisation level (the suite compiles at 0, where LLVM contracts no
  # multiply-add and the residue never shows).
  jitted = np.asarray(jax.jit(run, compiler_options={"xla_backend_optimization_level": 2})(
      x_T, keys), np.float64)
  with jax.disable_jit():
    eager = np.asarray(run(x_T, keys), np.float64)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
  sigmas = diffusion.edm.sigmas(SCHEDULE)
  hats = samplers.churned_steps(SCHEDULE, steps)
  added = jitted - np.asarray(x_T, np.float64) * np.sqrt(1 + sigmas[steps[0]] ** 2)
  want = np.sqrt(np.sum(sigmas[hats] ** 2 - sigmas[steps] ** 2)) * diffusion.edm.S_NOISE
  assert abs(added.std() / want - 1) < 0.03, (added.std(), want)


def test_edm_samplers_count_their_evaluations():
  calls = []

  def counting(x, t):
    calls.append(1)
    return gaussian_eps(x, t)

  for sampler in ("heun", "edm-sde"):
    for count, want in ((1, 1), (2, 3), (5, 9)):
      calls.clear()
      steps = samplers.spaced_steps(SCHEDULE, count, "karras")
      with jax.disable_jit():  # the scan runs as a Python loop: one append per evaluation
        run_named(sampler, counting, BETAS, SCHEDULE, steps, jnp.zeros((2, 3)),
                     jax.random.split(jax.random.key(0), 2), prediction="eps",
                     variance="fixed_small", clip_x0=False)
      assert len(calls) == want == samplers.make(sampler).evaluations(count)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++", "heun", "edm-sde"])
def test_every_chain_keeps_bfloat16_and_refuses_bad_steps_and_keys(sampler):
  """A bf16 x_T comes back bf16 (the scan's carry keeps x's dtype; DPM-Solver++ and Heun
  carried float32 and failed to trace), and close to the float32 chain. Timesteps that are not
  decreasing or not in [0, T), a single key for several samples, and the betas where a
  Schedule goes (and the reverse for ancestral) are refused naming the argument, before
  tracing."""
  n, count = 64, 6
  keys = jax.random.split(jax.random.key(0), n)
  x_T = jax.random.normal(jax.random.key(1), (n, 1, 1))
  steps = samplers.spaced_steps(SCHEDULE, count, samplers.get(sampler).default_spacing)
  run = lambda x, steps=steps, k=keys, betas=BETAS, schedule=SCHEDULE: run_named(
      sampler, oracle, betas, schedule, steps, x, k, prediction="eps", variance="fixed_small",
      clip_x0=False)
  low, full = run(x_T.astype(jnp.bfloat16)), run(x_T)
  assert low.dtype == jnp.bfloat16 and full.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(low, np.float32), full, atol=0.05)
  for bad in (steps[::-1].copy(), np.append(steps, 5), np.array([T, 0]), steps.astype(float)):
    with pytest.raises(ValueError, match=r"steps must be decreasing int timesteps in \[0, 1000\)"):
      run(x_T, bad)
  if sampler not in ("dpm++", "heun"):  # the deterministic solvers take no keys
    with pytest.raises(ValueError, match=r"keys must hold one key per sample, \[64\]"):
      run(x_T, k=jax.random.key(0))
  if sampler == "ddpm":
    with pytest.raises(TypeError, match="ancestral takes the schedule's float64 betas"):
      run(x_T, betas=SCHEDULE)
  else:
    with pytest.raises(TypeError, match="schedule must be a diffusion Schedule"):
      run(x_T, schedule=BETAS)
