"""Every public function under jit, vmap and grad, in float32 and bfloat16,
on 1-D, 2-D and 3-D data, compiled once per shape."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion

SCHEDULE = diffusion.make_schedule("cosine", 20)
SHAPES = {"1d": (3, 16, 2), "2d": (3, 8, 8, 3), "3d": (3, 4, 4, 4, 1)}


def eps_model(x, t):
  return jnp.tanh(x) + 0.01 * t.reshape(t.shape + (1,) * (x.ndim - 1))


def learned_model(x, t):
  return jnp.concatenate([eps_model(x, t), jnp.sin(x)], -1)


def normal(key, x):
  return jax.random.normal(key, x.shape).astype(x.dtype)


# Each call maps (schedule, x [B, ..., C], t [B], key) to an array.
CALLS = {
    "q_sample": lambda s, x, t, k: diffusion.q_sample(s, x, t, normal(k, x)),
    "q_mean_variance": lambda s, x, t, k: diffusion.q_mean_variance(s, x, t)[1],
    "q_posterior": lambda s, x, t, k: diffusion.q_posterior(s, 0.5 * x, x, t)[0],
    "x0_from_eps": lambda s, x, t, k: diffusion.x0_from_eps(s, x, t, jnp.tanh(x)),
    "eps_from_x0": lambda s, x, t, k: diffusion.eps_from_x0(s, x, t, jnp.tanh(x)),
    "v_from_x0_eps": lambda s, x, t, k: diffusion.v_from_x0_eps(s, x, t, jnp.tanh(x)),
    "x0_from_v": lambda s, x, t, k: diffusion.x0_from_v(s, x, t, jnp.tanh(x)),
    "eps_from_v": lambda s, x, t, k: diffusion.eps_from_v(s, x, t, jnp.tanh(x)),
    "p_mean_variance": lambda s, x, t, k: diffusion.p_mean_variance(
        s, learned_model(x, t), x, t, variance="learned_range", prediction="v")[0],
    "p_sample": lambda s, x, t, k: diffusion.p_sample(s, eps_model(x, t), x, t, k)[0],
    "ddim_step": lambda s, x, t, k: diffusion.ddim_step(
        s, eps_model(x, t), x, t, t - 3, k, eta=0.5)[0],
    "ddim_inverse_step": lambda s, x, t, k: diffusion.ddim_inverse_step(
        s, eps_model(x, t), x, t, t + 2)[0],
    "vlb_term": lambda s, x, t, k: diffusion.vlb_term(
        s, learned_model(x, t), jnp.clip(x, -1, 1), diffusion.q_sample(s, x, t, normal(k, x)),
        t, variance="learned"),
    "prior_bpd": lambda s, x, t, k: diffusion.prior_bpd(s, x),
    "training_losses": lambda s, x, t, k: diffusion.training_losses(
        learned_model, s, x, k, loss="hybrid", variance="learned_range")["loss"],
    "bits_per_dim": lambda s, x, t, k: diffusion.bits_per_dim(
        eps_model, s, x, k, chunk_size=8).total,
}
REDUCTIONS = {"vlb_term", "prior_bpd", "training_losses", "bits_per_dim"}


def inputs(shape, dtype=jnp.float32):
  x = jax.random.uniform(jax.random.key(0), shape, minval=-1, maxval=1).astype(dtype)
  return x, jnp.array([4, 10, 16])[: shape[0]], jax.random.key(1)


@pytest.mark.parametrize("dims", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(CALLS))
def test_jit_vmap_grad(name, dims):
  fn = CALLS[name]
  jitted = jax.jit(fn)
  x, t, key = inputs(SHAPES[dims])
  eager = fn(SCHEDULE, x, t, key)
  assert eager.shape == ((3,) if name in REDUCTIONS else x.shape)
  assert np.all(np.isfinite(eager))
  np.testing.assert_allclose(jitted(SCHEDULE, x, t, key), eager, rtol=1e-5, atol=1e-5)

  # vmap over a leading axis of independent batches equals a loop.
  xs = jnp.stack([x, -0.5 * x])
  ts = jnp.stack([t, t[::-1]])
  keys = jax.random.split(key)
  batched = jax.vmap(fn, in_axes=(None, 0, 0, 0))(SCHEDULE, xs, ts, keys)
  for i in range(2):
    np.testing.assert_allclose(batched[i], jitted(SCHEDULE, xs[i], ts[i], keys[i]),
                               rtol=1e-5, atol=1e-5)

  grad = jax.grad(lambda x: fn(SCHEDULE, x, t, key).sum())(x)
  assert grad.shape == x.shape and np.all(np.isfinite(grad))


@pytest.mark.parametrize("name", sorted(CALLS))
def test_bfloat16_keeps_its_dtype_and_stays_close_to_float32(name):
  fn = jax.jit(CALLS[name])
  x32, t, key = inputs(SHAPES["2d"])
  x16 = x32.astype(jnp.bfloat16)
  out32, out16 = fn(SCHEDULE, x32, t, key), fn(SCHEDULE, x16, t, key)
  assert out16.dtype == (jnp.float32 if name in REDUCTIONS else jnp.bfloat16)
  # The reference is float32 arithmetic on the bfloat16-rounded input.
  ref = fn(SCHEDULE, x16.astype(jnp.float32), t, key)
  scale = float(jnp.abs(ref).max())
  np.testing.assert_allclose(out16.astype(jnp.float32), ref, rtol=1e-2, atol=1e-2 * scale)
  np.testing.assert_allclose(out16.astype(jnp.float32), out32, rtol=0.05, atol=0.05 * scale)


def test_new_values_and_schedules_never_retrace():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(schedule, x, t, key):
    mean, *_ = diffusion.p_mean_variance(schedule, eps_model(x, t), x, t)
    return mean + diffusion.ddim_step(schedule, eps_model(x, t), x, t, t - 1, key)[0]

  x, t, key = inputs(SHAPES["2d"])
  for schedule in (SCHEDULE, diffusion.make_schedule("linear", 20),
                   diffusion.make_schedule("sigmoid", 20)):
    for i in range(3):
      step(schedule, x + i, t - i, jax.random.fold_in(key, i))
  chex.clear_trace_counter()
