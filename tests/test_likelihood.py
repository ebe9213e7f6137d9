"""The variational bound: KLs, the discretized decoder and a closed-form optimum."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import diffusion

LEVELS = np.linspace(-1, 1, 256)


@pytest.mark.parametrize("m1, v1, m2, v2", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 2.0),
                                            (1.0, 0.01, 0.9, 0.02)])
def test_normal_kl_is_the_integral(m1, v1, m2, v2):
  p, q = stats.norm(m1, v1**0.5), stats.norm(m2, v2**0.5)
  want, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)),
                           m1 - 12 * v1**0.5, m1 + 12 * v1**0.5, points=[m1])
  got = diffusion.normal_kl(jnp.float32(m1), jnp.log(jnp.float32(v1)),
                            jnp.float32(m2), jnp.log(jnp.float32(v2)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def reference_log_mass(x, mean, std):
  """log P(bin of x) under N(mean, std²), float64, each tail handled by scipy."""
  lo = np.where(x < -0.999, -np.inf, x - 1 / 255)
  hi = np.where(x > 0.999, np.inf, x + 1 / 255)
  d = stats.norm(mean, std)
  # log(cdf(hi) - cdf(lo)) on the side of the mean where the masses are small;
  # np.where evaluates both sides, so the other one may divide by zero.
  with np.errstate(divide="ignore", invalid="ignore"):
    left = d.logcdf(hi) + np.log1p(-np.exp(d.logcdf(lo) - d.logcdf(hi)))
    right = d.logsf(lo) + np.log1p(-np.exp(d.logsf(hi) - d.logsf(lo)))
  return np.where((lo + hi) / 2 > mean, right, left)


@pytest.mark.parametrize("mean, std", [(0.0, 0.1), (0.37, 0.004), (-0.9, 1.5),
                                       (0.99, 0.01), (-3.0, 0.2), (0.5, 1e-4)])
def test_discretized_gaussian_log_likelihood(mean, std):
  x = jnp.asarray(LEVELS, jnp.float32)
  got = np.asarray(diffusion.discretized_gaussian_log_likelihood(
      x, jnp.float32(mean), jnp.log(jnp.float32(std))), np.float64)
  assert np.all(np.isfinite(got) | (got == -np.inf))
  # The 256 bins cover the line: their masses sum to 1.
  np.testing.assert_allclose(np.exp(got).sum(), 1.0, rtol=1e-5)
  want = reference_log_mass(LEVELS, mean, std)
  finite = want > -80  # far tails: both sides underflow differently
  np.testing.assert_allclose(got[finite], want[finite], rtol=2e-4, atol=1e-5)


def gaussian_kl_bits(m1, lv1, m2, lv2):
  return (0.5 * (-1 + lv2 - lv1 + np.exp(lv1 - lv2) + (m1 - m2) ** 2 * np.exp(-lv2))
          .reshape(len(m1), -1).mean(1) / math.log(2))


def test_vlb_term_and_prior(rng):
  betas = diffusion.cosine_betas(100)
  schedule = diffusion.Schedule.from_betas(betas)
  ac = np.cumprod(1 - betas)
  ac_prev = np.append(1, ac[:-1])
  t = np.array([0, 0, 1, 50, 99])
  x0 = rng.choice(LEVELS, (5, 6, 2))
  x_t = np.sqrt(ac[t])[:, None, None] * x0 + rng.standard_normal(x0.shape) * 0.3
  out = rng.standard_normal(x0.shape + (2,))[..., 0]
  u = rng.uniform(-1, 1, x0.shape)
  got = diffusion.vlb_term(schedule, jnp.asarray(np.concatenate([out, u], -1), jnp.float32),
                           jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32),
                           jnp.asarray(t), variance="learned_range", clip_x0=False)
  assert got.dtype == jnp.float32 and got.shape == (5,)

  c = lambda a: np.asarray(a)[t][:, None, None]
  b = c(betas)
  pv = betas * (1 - ac_prev) / (1 - ac)
  log_pv = np.log(np.append(pv[1], pv[1:]))
  model_mean = (x_t - b / np.sqrt(1 - c(ac)) * out) / np.sqrt(1 - b)
  model_log_var = (u + 1) / 2 * np.log(b) + (1 - u) / 2 * c(log_pv)
  true_mean = (np.sqrt(c(ac_prev)) * b * x0 + np.sqrt(1 - b) * (1 - c(ac_prev)) * x_t) / (1 - c(ac))
  kl = gaussian_kl_bits(true_mean, c(log_pv), model_mean, model_log_var)
  nll = np.array([-reference_log_mass(x0[i], model_mean[i], np.exp(0.5 * model_log_var[i])).mean()
                  for i in range(5)]) / math.log(2)
  np.testing.assert_allclose(got, np.where(t == 0, nll, kl), rtol=2e-4)

  prior = diffusion.prior_bpd(schedule, jnp.asarray(x0, jnp.float32))
  want = gaussian_kl_bits(np.sqrt(ac[-1]) * x0, np.log(1 - ac[-1]), 0.0, 0.0)
  np.testing.assert_allclose(prior, want, rtol=1e-4, atol=1e-9)


class GaussianData:
  """8-bit data from N(μ, s²): the optimal denoiser is known in closed form.

  For continuous data q(x_t) = N(sqrt(ᾱ) μ, ᾱ s² + 1 - ᾱ), so
  E[ε | x_t] = sqrt(1 - ᾱ) (x_t - sqrt(ᾱ) μ) / (ᾱ s² + 1 - ᾱ), and the true
  reverse conditional q(x_{t-1} | x_t) is Gaussian with variance
  β̃_t + c1² Var[x_0 | x_t], c1 the x_0 coefficient of eq. (7).
  """
  mu, s = 0.1, 0.3

  def __init__(self, rng, shape):
    edges = np.concatenate([[-np.inf], (LEVELS[:-1] + LEVELS[1:]) / 2, [np.inf]])
    self.p = np.diff(stats.norm.cdf(edges, self.mu, self.s))
    self.x0 = jnp.asarray(rng.choice(LEVELS, size=shape, p=self.p), jnp.float32)
    self.entropy_bits = -(self.p * np.log2(self.p)).sum()

  def denoiser(self, schedule, exact_variance):
    def fn(x, t):
      a = schedule.alphas_cumprod[t][:, None, None]
      eps = jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * self.mu) / (a * self.s**2 + 1 - a)
      if not exact_variance:
        return eps
      var_x0 = self.s**2 * (1 - a) / (a * self.s**2 + 1 - a)
      var = (schedule.posterior_variance[t][:, None, None]
             + schedule.posterior_mean_coef1[t][:, None, None] ** 2 * var_x0)
      return jnp.concatenate([eps, jnp.broadcast_to(jnp.log(var), x.shape)], -1)
    return fn

  def gap(self, T, variance):
    """Bound minus the exact NLL (the entropy), bits/dim, and its standard error."""
    schedule = diffusion.make_schedule("linear", T, beta_start=0.1 / T, beta_end=20 / T)
    fn = self.denoiser(schedule, exact_variance=variance == "learned")
    bpd = diffusion.bits_per_dim(fn, schedule, self.x0, jax.random.key(T), variance=variance,
                                 clip_x0=False, chunk_size=25)
    total = np.asarray(bpd.total, np.float64)
    return total.mean() - self.entropy_bits, total.std() / np.sqrt(len(total))


def test_the_bound_of_the_optimal_denoiser_lies_above_the_nll_and_approaches_it(rng):
  data = GaussianData(rng, (16, 8192, 1))
  exact, se = data.gap(100, "learned")
  large, se_large = data.gap(100, "fixed_large")
  small, se_small = data.gap(100, "fixed_small")
  # With the true reverse variances only the discretisation separates them.
  assert -3 * se < exact < 0.02, (exact, se)
  # Fixed variances are a looser bound, never below the NLL.
  assert large > exact + 0.03 and large > -3 * se_large
  assert small > large + 1.0
  # A finer chain brings the fixed-variance bound closer.
  small_fine, se_fine = GaussianData(rng, (8, 1024, 1)).gap(1000, "fixed_small")
  assert small_fine > -3 * se_fine and small_fine < small - 0.5


def test_bits_per_dim_sums_the_terms_and_ignores_the_chunk_size():
  schedule = diffusion.make_schedule("cosine", 50)
  denoise_fn = lambda x, t: 0.1 * x + 0.001 * t[:, None, None, None]
  x0 = jnp.asarray(np.random.default_rng(1).choice(LEVELS, (3, 4, 4, 1)), jnp.float32)
  key = jax.random.key(0)
  runs = [diffusion.bits_per_dim(denoise_fn, schedule, x0, key, chunk_size=k)
          for k in (1, 7, 50, 64)]
  for run in runs:
    assert run.terms.shape == (3, 50) and run.total.shape == (3,)
    np.testing.assert_allclose(run.terms, runs[0].terms, rtol=1e-6)
  r = runs[0]
  np.testing.assert_allclose(r.total, r.prior + r.terms.sum(1), rtol=1e-6)
  np.testing.assert_allclose(r.prior, diffusion.prior_bpd(schedule, x0), rtol=1e-6)
  # Term t is vlb_term at x_t drawn with fold_in(key, t).
  t = jnp.full((3,), 17)
  noise = jax.random.normal(jax.random.fold_in(key, 17), x0.shape)
  x_t = diffusion.q_sample(schedule, x0, t, noise)
  np.testing.assert_allclose(
      r.terms[:, 17], diffusion.vlb_term(schedule, denoise_fn(x_t, t), x0, x_t, t), rtol=1e-5)
