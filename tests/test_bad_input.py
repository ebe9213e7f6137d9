"""Bad input: a clear error naming the argument, raised while tracing.

Each call is made through `jax.jit(...).lower`, which traces and lowers but
never compiles: an error there comes before any XLA compilation.
"""

import jax
import jax.numpy as jnp
import pytest

import diffusion

S = diffusion.make_schedule("linear", 100)
X = jnp.zeros((4, 8, 8, 3))
T4 = jnp.array([0, 1, 2, 3])
KEY = jax.random.key(0)
EPS = lambda x, t: jnp.zeros_like(x)


def lower(fn, *args):
  return jax.jit(fn).lower(*args)


CASES = {
    "float timesteps": (
        TypeError, "t must be an integer array of timesteps; got dtype float32",
        lambda: lower(lambda x, t: diffusion.q_sample(S, x, t, x), X, T4.astype(jnp.float32))),
    "timesteps of another batch": (
        ValueError, r"t must have shape \[B\] = \(4,\), B being the batch size of x0; got shape \(3,\)",
        lambda: lower(lambda x, t: diffusion.q_sample(S, x, t, x), X, T4[:3])),
    "scalar timestep": (
        ValueError, r"t must have shape \[B\] = \(4,\)",
        lambda: lower(lambda x: diffusion.q_sample(S, x, jnp.int32(3), x), X)),
    "timesteps of shape [B, 1]": (
        ValueError, r"t must have shape \[B\] = \(4,\).*got shape \(4, 1\)",
        lambda: lower(lambda x, t: diffusion.q_posterior(S, x, x, t), X, T4[:, None])),
    "noise of another shape": (
        ValueError, r"noise must have the shape of x0 \(4, 8, 8, 3\); got \(4, 8, 8, 1\)",
        lambda: lower(lambda x: diffusion.q_sample(S, x, T4, x[..., :1]), X)),
    "integer data": (
        TypeError, "x0 must have a floating dtype; got int32",
        lambda: lower(lambda x: diffusion.q_sample(S, x, T4, x), X.astype(jnp.int32))),
    "data without a batch dimension": (
        ValueError, r"x0 must have a batch dimension and at least one data dimension",
        lambda: lower(lambda x: diffusion.prior_bpd(S, x), jnp.zeros((4,)))),
    "x_t of another shape than x0": (
        ValueError, r"x0 must have the shape of x_t",
        lambda: lower(lambda x: diffusion.q_posterior(S, x[:, :4], x, T4), X)),
    "C channels for a learned variance": (
        ValueError, r"model_output must have shape \(4, 8, 8, 6\) \(mean and variance channels\) "
                    r"for variance='learned_range'.*got \(4, 8, 8, 3\)",
        lambda: lower(lambda x: diffusion.p_mean_variance(S, x, x, T4, variance="learned_range"), X)),
    "2C channels for a fixed variance": (
        ValueError, r"model_output must have shape \(4, 8, 8, 3\) for variance='fixed_small'",
        lambda: lower(lambda x: diffusion.p_sample(S, jnp.concatenate([x, x], -1), x, T4, KEY), X)),
    "model output of another spatial size": (
        ValueError, r"model_output must have shape \(4, 8, 8, 3\)",
        lambda: lower(lambda x: diffusion.ddim_step(S, x[:, :4], x, T4, T4 - 1, None), X)),
    "unknown prediction": (
        ValueError, "prediction must be one of 'eps', 'x0', 'v'; got 'epsilon'",
        lambda: lower(lambda x: diffusion.p_mean_variance(S, x, x, T4, prediction="epsilon"), X)),
    "unknown variance": (
        ValueError, "variance must be one of 'fixed_small', 'fixed_large', 'learned_range', "
                    "'learned'; got 'small'",
        lambda: lower(lambda x: diffusion.vlb_term(S, x, x, x, T4, variance="small"), X)),
    "negative eta": (
        ValueError, r"eta must lie in \[0, 1\]; got -0.1",
        lambda: lower(lambda x: diffusion.ddim_step(S, x, x, T4, T4 - 1, KEY, eta=-0.1), X)),
    "eta without a key": (
        ValueError, "key must be given when eta is not 0",
        lambda: lower(lambda x: diffusion.ddim_step(S, x, x, T4, T4 - 1, None, eta=0.5), X)),
    "t_prev of another batch": (
        ValueError, r"t_prev must have shape \[B\] = \(4,\)",
        lambda: lower(lambda x: diffusion.ddim_step(S, x, x, T4, T4[:2], None), X)),
    "t_next of another batch": (
        ValueError, r"t_next must have shape \[B\] = \(4,\)",
        lambda: lower(lambda x: diffusion.ddim_inverse_step(S, x, x, T4, T4[:2]), X)),
    "unknown loss": (
        ValueError, "loss must be one of 'simple', 'vlb', 'hybrid'; got 'l2'",
        lambda: lower(lambda x: diffusion.training_losses(EPS, S, x, KEY, loss="l2"), X)),
    "hybrid loss with a fixed variance": (
        ValueError, "loss='hybrid' trains the variance, so variance must be one of "
                    "'learned_range', 'learned'; got 'fixed_large'",
        lambda: lower(lambda x: diffusion.loss_hybrid(EPS, S, x, KEY, variance="fixed_large"), X)),
    "denoiser output of the wrong shape": (
        ValueError, r"model_output must have shape \(4, 8, 8, 6\)",
        lambda: lower(lambda x: diffusion.loss_simple(EPS, S, x, KEY, variance="learned"), X)),
    "bad chunk size": (
        ValueError, "chunk_size must be a positive int; got 0",
        lambda: lower(lambda x: diffusion.bits_per_dim(EPS, S, x, KEY, chunk_size=0).total, X)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_named_before_compilation(case):
  error, message, call = CASES[case]
  with pytest.raises(error, match=message):
    call()


def test_out_of_range_timesteps_give_nan_not_a_clamped_value():
  x_t = diffusion.q_sample(S, X, jnp.array([0, 99, 100, -1]), X + 1)
  assert jnp.isfinite(x_t[:2]).all() and jnp.isnan(x_t[2:]).all()
