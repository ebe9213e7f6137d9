"""ε, x_0 and v conversions against the definitions, in float64 NumPy."""

import jax.numpy as jnp
import numpy as np
import pytest

import diffusion


@pytest.fixture
def setup(rng):
  betas = diffusion.cosine_betas(1000)
  ac = np.cumprod(1 - betas)
  t = np.array([0, 1, 500, 998, 999])
  x0 = rng.uniform(-1, 1, (5, 3, 4, 2))
  eps = rng.standard_normal((5, 3, 4, 2))
  a = ac[t][:, None, None, None]
  x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
  v = np.sqrt(a) * eps - np.sqrt(1 - a) * x0
  f32 = lambda z: jnp.asarray(z, jnp.float32)
  return diffusion.Schedule.from_betas(betas), jnp.asarray(t), f32(x0), f32(eps), f32(x_t), f32(v)


def test_conversions_recover_each_other(setup):
  s, t, x0, eps, x_t, v = setup
  # Away from the ends the conversions are well conditioned.
  mid = slice(1, 4)
  np.testing.assert_allclose(diffusion.x0_from_eps(s, x_t, t, eps)[mid], x0[mid], atol=2e-4)
  np.testing.assert_allclose(diffusion.eps_from_x0(s, x_t, t, x0)[mid], eps[mid], atol=2e-4)
  np.testing.assert_allclose(diffusion.v_from_x0_eps(s, x0, t, eps), v, atol=1e-5)
  np.testing.assert_allclose(diffusion.x0_from_v(s, x_t, t, v), x0, atol=1e-5)
  np.testing.assert_allclose(diffusion.eps_from_v(s, x_t, t, v), eps, atol=1e-5)


def test_target_and_prediction(setup):
  s, t, x0, eps, x_t, v = setup
  np.testing.assert_array_equal(diffusion.target(s, "eps", x0, t, eps), eps)
  np.testing.assert_array_equal(diffusion.target(s, "x0", x0, t, eps), x0)
  for prediction in ("eps", "x0", "v"):  # x0's dtype, whatever the noise's
    assert diffusion.target(s, prediction, x0.astype(jnp.bfloat16), t, eps).dtype == jnp.bfloat16
  np.testing.assert_allclose(diffusion.target(s, "v", x0, t, eps), v, atol=1e-5)
  np.testing.assert_allclose(diffusion.x0_from_prediction(s, "v", x_t, t, v), x0, atol=1e-5)
  np.testing.assert_array_equal(diffusion.x0_from_prediction(s, "x0", x_t, t, x0), x0)
