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
