"""Schedules against float64 NumPy computed independently, and their errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion
from diffusion import Schedule


def reference_tables(betas):
  """The tables of eq. (4) and (7), one step at a time in float64."""
  T = len(betas)
  ac = np.empty(T)
  prod = 1.0
  for i, b in enumerate(betas):
    prod *= 1.0 - b
    ac[i] = prod
  ac_prev = np.concatenate([[1.0], ac[:-1]])
  pv = np.array([(1 - ac_prev[i]) / (1 - ac[i]) * betas[i] for i in range(T)])
  return dict(
      betas=betas, alphas=1 - betas, alphas_cumprod=ac, alphas_cumprod_prev=ac_prev,
      log_alphas_cumprod=np.log(ac),
      sqrt_alphas_cumprod=ac**0.5, sqrt_one_minus_alphas_cumprod=(1 - ac)**0.5,
      log_one_minus_alphas_cumprod=np.log(1 - ac),
      sqrt_recip_alphas_cumprod=ac**-0.5, sqrt_recipm1_alphas_cumprod=(1 / ac - 1)**0.5,
      posterior_variance=pv,
      posterior_log_variance_clipped=np.log(np.concatenate([[pv[1]], pv[1:]])),
      posterior_mean_coef1=betas * ac_prev**0.5 / (1 - ac),
      posterior_mean_coef2=(1 - ac_prev) * (1 - betas)**0.5 / (1 - ac))


def test_linear_and_quadratic_betas():
  T = 1000
  lin = diffusion.linear_betas(T)
  assert lin.dtype == np.float64 and lin.shape == (T,)
  np.testing.assert_allclose(lin, [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)],
                             rtol=1e-12)
  quad = diffusion.quadratic_betas(10, 0.01, 0.04)
  np.testing.assert_allclose(np.sqrt(quad), np.linspace(0.1, 0.2, 10), rtol=1e-12)


def test_sigmoid_betas_are_increasing_between_the_ends():
  b = diffusion.sigmoid_betas(100, 1e-4, 0.02)
  assert np.all(np.diff(b) > 0) and 1e-4 < b[0] < b[-1] < 0.02
  np.testing.assert_allclose(b[[0, -1]], [1e-4 + 0.0199 / (1 + math.exp(6)),
                                          1e-4 + 0.0199 / (1 + math.exp(-6))])


def test_cosine_betas_follow_the_cosine_alpha_bar():
  T, s = 1000, 0.008
  b = diffusion.cosine_betas(T, s=s)
  f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
  alpha_bar = np.cumprod(1 - b)
  unclipped = b < 0.999
  want = np.array([f(i + 1) / f(0) for i in range(T)])
  np.testing.assert_allclose(alpha_bar[unclipped], want[unclipped], rtol=1e-10)
  assert b[-1] == 0.999  # the clip of improved DDPM at the last step
  assert diffusion.cosine_betas(T, max_beta=0.5).max() == 0.5


@pytest.mark.parametrize("name", sorted(diffusion.BETA_SCHEDULES))
def test_tables_match_float64_reference(name):
  betas = diffusion.BETA_SCHEDULES[name](1000)
  schedule = diffusion.make_schedule(name, 1000)
  want = reference_tables(betas)
  assert set(want) == set(vars(schedule))
  for field, table in vars(schedule).items():
    assert table.dtype == jnp.float32 and table.shape == (1000,), field
    np.testing.assert_allclose(np.asarray(table), want[field], rtol=2e-6,
                               atol=1e-30, err_msg=field)
  assert schedule.num_steps == 1000 and repr(schedule) == "Schedule(num_steps=1000)"


def test_schedule_is_a_pytree_that_passes_through_jit():
  schedule = diffusion.make_schedule("linear", 10)
  leaves = jax.tree.leaves(schedule)
  assert len(leaves) == 14 and all(leaf.shape == (10,) for leaf in leaves)

  @jax.jit
  def f(s):
    assert s.num_steps == 10  # static under jit
    return s.alphas_cumprod[-1]

  np.testing.assert_allclose(f(schedule), np.prod(1 - diffusion.linear_betas(10)),
                             rtol=1e-6)
  doubled = jax.tree.map(lambda a: 2 * a, schedule)
  assert isinstance(doubled, Schedule)
  with pytest.raises(AttributeError):
    schedule.betas = None


def test_from_alphas_cumprod_round_trips():
  betas = diffusion.cosine_betas(200)
  a = Schedule.from_betas(betas)
  b = Schedule.from_alphas_cumprod(np.cumprod(1 - betas))
  for field in vars(a):
    np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=1e-5,
                               err_msg=field)


def test_one_step_schedule():
  s = Schedule.from_betas([0.5])
  assert s.num_steps == 1
  np.testing.assert_allclose(s.posterior_log_variance_clipped, [math.log(0.5)])
  np.testing.assert_allclose(s.posterior_mean_coef1, [1.0])


def test_respace_keeps_the_marginals_of_kept_steps():
  betas = diffusion.linear_betas(1000)
  kept = np.array([0, 9, 99, 250, 500, 999])
  new = diffusion.respace_betas(betas, kept)
  np.testing.assert_allclose(np.cumprod(1 - new), np.cumprod(1 - betas)[kept],
                             rtol=1e-12)
  # q(x_t | x_0) of the respaced chain at step i is that of the original at kept[i].
  old_s, new_s = Schedule.from_betas(betas), Schedule.from_betas(new)
  x0 = jnp.linspace(-1, 1, 6 * 4).reshape(6, 4, 1)
  for got, want in zip(diffusion.q_mean_variance(new_s, x0, jnp.arange(6)),
                       diffusion.q_mean_variance(old_s, x0, jnp.asarray(kept))):
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("betas, match", [
    ([0.1, 0.0, 0.2], r"betas must lie in the open interval \(0, 1\).*betas\[1\]"),
    ([0.1, 1.0], r"betas must lie in the open interval \(0, 1\)"),
    ([-0.1, 0.2], r"betas must lie in the open interval"),
    ([0.1, np.nan], "betas must be finite"),
    ([0.1, np.inf], "betas must be finite"),
    ([], "betas must be a non-empty 1-D array"),
    ([[0.1, 0.2]], "betas must be a non-empty 1-D array"),
    ([0.1, 1e-12], "alphas_cumprod must strictly decrease in float32"),
])
def test_bad_betas(betas, match):
  with pytest.raises(ValueError, match=match):
    Schedule.from_betas(np.asarray(betas, np.float64))


def test_bad_alphas_cumprod():
  with pytest.raises(ValueError, match="alphas_cumprod must strictly decrease"):
    Schedule.from_alphas_cumprod([0.9, 0.8, 0.85])
  with pytest.raises(ValueError, match=r"alphas_cumprod must lie in the open interval"):
    Schedule.from_alphas_cumprod([1.0, 0.5])


def test_traced_betas_are_refused():
  with pytest.raises(TypeError, match="betas must be a concrete array"):
    jax.jit(Schedule.from_betas)(jnp.full((4,), 0.1))


def test_bad_schedule_names_and_sizes():
  with pytest.raises(ValueError, match="name must be one of 'linear', 'cosine'"):
    diffusion.make_schedule("cosin", 10)
  for T in (0, -3, 2.5, True):
    with pytest.raises(ValueError, match=r"T \(the number of steps\) must be a positive int"):
      diffusion.make_schedule("linear", T)
  with pytest.raises(TypeError):
    diffusion.make_schedule("cosine", 10, beta_end=0.02)
  with pytest.raises(ValueError, match="timesteps must be a non-empty, strictly increasing"):
    diffusion.respace_betas(diffusion.linear_betas(10), [0, 5, 5])
  with pytest.raises(ValueError, match="timesteps must be"):
    diffusion.respace_betas(diffusion.linear_betas(10), [3, 10])
