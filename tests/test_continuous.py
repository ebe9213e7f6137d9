"""Flow matching and EDM's training on continuous noise levels, against closed forms.

For Gaussian data N(μ, Σ) everything is known: the velocity field of the straight path,
v(x, t) = E[ε − x_0 | x_t = x], and EDM's denoiser D(x; σ) = E[x_0 | x_0 + σ n = x] are affine
in x, and their probability-flow ODEs carry N(0, I) (scaled) onto N(μ, Σ) along
x_t − (1 − t) μ = V_t^{1/2} V_1^{-1/2} (x_1 − 0) with V_t = (1 − t)² Σ + t² I.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg

from diffusion import edm, flow, ode

MU = np.array([0.3, -0.2])
SIGMA = np.array([[0.09, 0.05], [0.05, 0.16]])  # full covariance: the coordinates correlate


def exact_velocity(x, t):
  """E[ε − x_0 | x_t = x] for x_0 ~ N(MU, SIGMA): x [N, 2], t [N] (all equal; traceable)."""
  t0, mu, cov = t[0], jnp.asarray(MU, jnp.float32), jnp.asarray(SIGMA, jnp.float32)
  inverse = jnp.linalg.inv((1 - t0) ** 2 * cov + t0 ** 2 * jnp.eye(2))
  centred = x - (1 - t0) * mu[None]
  x0 = mu[None] + centred @ ((1 - t0) * cov @ inverse).T
  eps = centred @ (t0 * inverse).T
  return eps - x0


def solve(solver, field, x, grid):
  return getattr(ode, solver)(field, x, grid)


def data_and_noise(n: int = 200_000):
  """(n, x_0 ~ N(MU, SIGMA) [n, 2], ε ~ N(0, I) [n, 2])."""
  x0 = jnp.asarray(MU, jnp.float32)[None] + jax.random.normal(
      jax.random.key(0), (n, 2)) @ jnp.asarray(np.linalg.cholesky(SIGMA).T, jnp.float32)
  return n, x0, jax.random.normal(jax.random.key(1), (n, 2))


def norm(grads: dict) -> float:
  """The Euclidean norm of a gradient given as a dict of arrays."""
  return float(np.sqrt(sum(np.sum(np.square(v)) for v in grads.values())))


def test_the_velocity_target_is_the_derivative_of_the_path():
  x0, noise = (jax.random.normal(jax.random.key(i), (16, 3, 1)) for i in (0, 1))
  t, h = jnp.linspace(0.05, 0.95, 16), 1e-3
  fd = (flow.interpolate(x0, noise, t + h) - flow.interpolate(x0, noise, t - h)) / (2 * h)
  np.testing.assert_allclose(fd, flow.velocity(x0, noise), atol=2e-3)
  x_t = flow.interpolate(x0, noise, t)
  v = flow.velocity(x0, noise)
  np.testing.assert_allclose(flow.x0_from_velocity(x_t, t, v), x0, atol=1e-5)
  np.testing.assert_allclose(flow.eps_from_velocity(x_t, t, v), noise, atol=1e-5)
  sigma = flow.to_sigma(np.asarray(t))  # x_t / (1 − t) = x_0 + σ ε
  np.testing.assert_allclose(np.asarray(x_t) / (1 - np.asarray(t))[:, None, None],
                             np.asarray(x0) + sigma[:, None, None] * np.asarray(noise), atol=1e-4)
  np.testing.assert_allclose(flow.from_sigma(sigma), t, rtol=1e-6)


def test_euler_and_heun_on_the_exact_field_draw_the_data_at_first_and_second_order():
  """From x_1 ~ N(0, I) the exact flow ends at μ + Σ^{1/2} x_1; Euler's error halves and
  Heun's quarters when the steps double, and many steps draw N(μ, Σ)."""
  x1 = jax.random.normal(jax.random.key(0), (20_000, 2))
  exact = MU + np.asarray(x1, np.float64) @ linalg.sqrtm(SIGMA).real.T
  errors = {"euler": [], "heun": []}
  for solver in errors:
    for steps in (8, 16, 32):
      x = solve(solver, exact_velocity, x1, flow.time_grid(steps))
      errors[solver].append(float(np.abs(np.asarray(x, np.float64) - exact).mean()))
  e, h = errors["euler"], errors["heun"]
  assert 1.6 < e[0] / e[1] < 2.6 and 1.6 < e[1] / e[2] < 2.6, e
  assert 3.0 < h[0] / h[1] < 5.5 and 3.0 < h[1] / h[2] < 5.5, h
  x = np.asarray(solve("heun", exact_velocity, x1, flow.time_grid(32)), np.float64)
  np.testing.assert_allclose(x.mean(0), MU, atol=0.01)
  np.testing.assert_allclose(np.cov(x.T), SIGMA, atol=0.005)


def test_the_exact_velocity_minimises_the_flow_matching_loss():
  """At each t the loss's gradient with respect to an affine predictor A x + b vanishes at the
  exact field (up to sampling noise) and not at a perturbed one."""
  n, x0, noise = data_and_noise()
  for t0 in (0.2, 0.5, 0.8):
    t = jnp.full((n,), t0)
    # The exact field as A x + b: read off at x = 0 and the unit vectors.
    b = exact_velocity(jnp.zeros((1, 2)), t[:1])[0]
    a = jnp.stack([exact_velocity(jnp.eye(2)[i:i + 1], t[:1])[0] - b for i in range(2)], 1)
    mean_loss = lambda p: jnp.mean(flow.loss(lambda x, _: x @ p["a"].T + p["b"][None], x0, noise, t))
    at_exact = jax.grad(mean_loss)({"a": a, "b": b})
    off = jax.grad(mean_loss)({"a": a * 1.1, "b": b + 0.05})
    assert norm(at_exact) < 0.01 and 5 * norm(at_exact) < norm(off), (t0, norm(at_exact),
                                                                       norm(off))


def test_logit_normal_times():
  t = flow.sample_times(jax.random.key(0), (100_000,), "logit_normal", m=0.5, s=0.8)
  logit = np.log(np.asarray(t, np.float64) / (1 - np.asarray(t, np.float64)))
  assert abs(logit.mean() - 0.5) < 0.01 and abs(logit.std() - 0.8) < 0.01
  u = np.asarray(flow.sample_times(jax.random.key(1), (100_000,)))
  assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
  with pytest.raises(ValueError, match="`distribution` must be one of"):
    flow.sample_times(jax.random.key(0), (4,), "beta")
  grid = flow.time_grid(4, shift=3.0)
  assert grid[0] == 1 and grid[-1] == 0 and np.all(np.diff(grid) < 0)
  assert grid[1] > 0.75  # the shift spends the steps near the noise


def test_edms_preconditioning_gives_unit_variance_inputs_and_targets():
  """On data of variance σ_d², c_in (x_0 + σ n) and the network's target (x_0 − c_skip x) /
  c_out have unit variance at every σ, and λ(σ) c_out(σ)² = 1 (Karras et al. App. B.6)."""
  sigma_data = 0.5
  x0 = sigma_data * jax.random.normal(jax.random.key(0), (200_000,))
  noise = jax.random.normal(jax.random.key(1), (200_000,))
  for sigma in (0.002, 0.1, 0.5, 2.0, 80.0):
    c_skip, c_out, c_in, c_noise = edm.preconditioning(sigma, sigma_data)
    x = x0 + sigma * noise
    assert abs(float(jnp.std(c_in * x)) - 1) < 0.01
    assert abs(float(jnp.std((x0 - c_skip * x) / c_out)) - 1) < 0.01
    assert abs(float(edm.loss_weight(sigma, sigma_data) * c_out ** 2) - 1) < 1e-5
    assert abs(float(c_noise) - np.log(sigma) / 4) < 1e-6
  log_sigma = np.log(np.asarray(edm.sample_sigmas(jax.random.key(2), (100_000,))))
  assert abs(log_sigma.mean() + 1.2) < 0.02 and abs(log_sigma.std() - 1.2) < 0.02


def exact_denoiser(x, sigma):
  """E[x_0 | x_0 + σ n = x] for x_0 ~ N(MU, SIGMA) (traceable; σ [N], all equal)."""
  mu, cov = jnp.asarray(MU, jnp.float32), jnp.asarray(SIGMA, jnp.float32)
  gain = cov @ jnp.linalg.inv(cov + sigma[0] ** 2 * jnp.eye(2))
  return mu[None] + (x - mu[None]) @ gain.T


def test_the_exact_denoiser_minimises_edms_loss_and_its_ode_draws_the_data():
  n, x0, noise = data_and_noise()
  for s in (0.05, 0.5, 5.0):
    sigma = jnp.full((n,), s)
    gain = jnp.asarray(SIGMA @ np.linalg.inv(SIGMA + s ** 2 * np.eye(2)), jnp.float32)
    mean_loss = lambda p: jnp.mean(edm.training_loss(
        lambda x, _: jnp.asarray(MU, jnp.float32)[None] + (x - p["c"][None]) @ p["g"].T, x0,
        noise, sigma))
    at_exact = jax.grad(mean_loss)({"g": gain, "c": jnp.asarray(MU, jnp.float32)})
    off = jax.grad(mean_loss)({"g": gain + 0.05 * jnp.eye(2),
                               "c": jnp.asarray(MU, jnp.float32) + 0.05})
    assert 5 * norm(at_exact) < norm(off), (s, norm(at_exact), norm(off))
  # Heun on continuous σ (EDM's ρ = 7 grid from 80, then 0): x_80 = x_0 + 80 n ends at the
  # exact flow's μ + Σ^{1/2} (Σ + 80² I)^{-1/2} (x_80 − μ), the error shrinking at second order.
  x80 = jnp.asarray(MU, jnp.float32)[None] + 80.0 * jax.random.normal(jax.random.key(2),
                                                                      (20_000, 2))
  w, vecs = np.linalg.eigh(SIGMA)
  flow_map = vecs @ np.diag(np.sqrt(w / (w + 80.0 ** 2))) @ vecs.T
  exact = MU + (np.asarray(x80, np.float64) - MU) @ flow_map.T
  errors = []
  for steps in (16, 32, 64):
    grid = np.append(edm.karras_sigmas(steps, 0.002, 80.0), 0.0)
    x = solve("heun", edm.ode_field(exact_denoiser), x80, grid)
    errors.append(float(np.abs(np.asarray(x, np.float64) - exact).mean()))
  assert errors[0] / errors[1] > 2.5 and errors[1] / errors[2] > 2.5, errors
  np.testing.assert_allclose(np.cov(np.asarray(x, np.float64).T), SIGMA, atol=0.005)


def test_the_solvers_count_their_evaluations_and_check_the_grid():
  calls = []

  def field(x, t):
    calls.append(1)
    return -x

  for solver in ("euler", "heun"):
    for levels in (2, 3, 6):
      calls.clear()
      with jax.disable_jit():  # the scan as a Python loop: one append per evaluation
        getattr(ode, solver)(field, jnp.ones((2, 1)), np.linspace(1, 0, levels))
      assert len(calls) == ode.evaluations(solver, levels)
  for bad in ([1.0], [0.0, 1.0], [1.0, np.nan, 0.0]):
    with pytest.raises(ValueError, match="`grid` must be at least 2 finite, strictly decreasing"):
      ode.euler(field, jnp.ones((2, 1)), bad)
