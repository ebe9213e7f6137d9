"""The forward process against its definition: the Markov chain and Bayes' rule."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import diffusion


def test_q_sample_moments_match_the_chain_of_eq_2(rng):
  """Eq. (4) is the marginal of x_t = sqrt(1 - β_t) x_{t-1} + sqrt(β_t) z."""
  betas = diffusion.linear_betas(1000)
  schedule = diffusion.Schedule.from_betas(betas)
  steps = np.array([0, 10, 300, 999])
  x0_values = np.array([0.8, -0.5, 0.3, 1.0])
  n = 200_000
  # Run the chain in float64, recording x at the requested steps.
  x = np.repeat(x0_values[:, None], n // 4, axis=1)[0]  # one start value per run
  chain_mean, chain_var = [], []
  for x0_value, stop in zip(x0_values, steps):
    x = np.full(n // 4, x0_value)
    for b in betas[:stop + 1]:
      x = np.sqrt(1 - b) * x + np.sqrt(b) * rng.standard_normal(x.shape)
    chain_mean.append(x.mean())
    chain_var.append(x.var())

  x0 = jnp.asarray(np.repeat(x0_values[:, None, None], n // 4, axis=1), jnp.float32)
  noise = jax.random.normal(jax.random.key(0), x0.shape)
  x_t = np.asarray(diffusion.q_sample(schedule, x0, jnp.asarray(steps), noise), np.float64)
  mean, var, log_var = diffusion.q_mean_variance(schedule, x0, jnp.asarray(steps))
  np.testing.assert_allclose(np.exp(log_var), var, rtol=1e-5)
  se = np.sqrt(np.array(chain_var) / (n // 4))
  for i in range(4):
    np.testing.assert_allclose(x_t[i].mean(), chain_mean[i], atol=6 * se[i])
    np.testing.assert_allclose(x_t[i].var(), chain_var[i], rtol=0.03)
    np.testing.assert_allclose(mean[i, 0, 0], chain_mean[i], atol=6 * se[i])
    np.testing.assert_allclose(var[i, 0, 0], chain_var[i], rtol=0.03)


def bayes_posterior(betas, t, x0, x_t):
  """Mean and variance of q(x_{t-1} | x_t, x_0) by numerical integration.

  q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), on a fine grid.
  """
  ac = np.cumprod(1 - betas)
  grid = np.linspace(-5, 5, 2_000_001)
  log_w = (stats.norm.logpdf(x_t, np.sqrt(1 - betas[t]) * grid, np.sqrt(betas[t]))
           + stats.norm.logpdf(grid, np.sqrt(ac[t - 1]) * x0, np.sqrt(1 - ac[t - 1])))
  w = np.exp(log_w - log_w.max())
  w /= w.sum()
  mean = (w * grid).sum()
  return mean, (w * (grid - mean) ** 2).sum()


def test_q_posterior_is_bayes_rule():
  betas = diffusion.cosine_betas(1000)
  schedule = diffusion.Schedule.from_betas(betas)
  cases = [(1, 0.5, 0.6), (5, -0.9, -0.7), (250, 0.2, -1.3), (800, -1.0, 0.4),
           (999, 0.7, 1.9)]
  t = jnp.array([c[0] for c in cases])
  x0 = jnp.array([c[1] for c in cases], jnp.float32)[:, None]
  x_t = jnp.array([c[2] for c in cases], jnp.float32)[:, None]
  mean, var, log_var = diffusion.q_posterior(schedule, x0, x_t, t)
  for i, (step, a, b) in enumerate(cases):
    want_mean, want_var = bayes_posterior(betas, step, a, b)
    np.testing.assert_allclose(mean[i, 0], want_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(var[i, 0], want_var, rtol=1e-3)
    np.testing.assert_allclose(log_var[i, 0], np.log(want_var), atol=1e-3)


def test_q_posterior_at_the_first_step_is_x0():
  schedule = diffusion.make_schedule("linear", 1000)
  x0 = jnp.array([[0.3], [-0.2]])
  mean, var, log_var = diffusion.q_posterior(schedule, x0, jnp.array([[1.0], [0.5]]),
                                             jnp.array([0, 0]))
  np.testing.assert_allclose(mean, x0, rtol=1e-6)
  np.testing.assert_array_equal(var, 0.0)
  np.testing.assert_allclose(log_var, np.log(schedule.posterior_variance[1]))
