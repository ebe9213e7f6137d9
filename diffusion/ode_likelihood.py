"""The exact likelihood of a probability-flow ODE (Song et al. 2021, App. D; Chen et al. 2018's
instantaneous change of variables), solved adaptively with diffrax.

For dx/dτ = f(x, τ) carrying the data at level τ0 to the prior at level τ1,

  log p_τ0(x(τ0)) = log p_τ1(x(τ1)) + ∫_{τ0}^{τ1} ∇·f(x(τ), τ) dτ,

integrated jointly with x from τ0 to τ1. The divergence is exact (one Jacobian-vector product
per data dimension: small data) or the Hutchinson-Skilling estimate εᵀ (∂f/∂x) ε with a
Rademacher ε held fixed through the solve (one product per evaluation, unbiased).

Needs diffrax (`pip install '.[likelihood]'`, in the test extra as well).

Shapes: x [N, ...]; f(x [N, ...], τ float [N]) -> [N, ...], each example's output depending on
its own input alone (no batch statistics).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

Field = Callable[[jax.Array, jax.Array], jax.Array]


def _diffrax():
  try:
    import diffrax
  except ImportError:
    raise ImportError("the ODE likelihood solves with diffrax: pip install '.[likelihood]' "
                      "(or pip install diffrax)") from None
  return diffrax


def divergence(f: Field, x: jax.Array, tau: jax.Array, probe: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
  """(f(x, τ), ∇·f per example [N]): exact when `probe` is None (one JVP per dimension), else
  probeᵀ (∂f/∂x) probe for `probe` [N, ...] (Hutchinson-Skilling)."""
  fx = lambda y: f(y, tau)
  if probe is not None:
    out, jv = jax.jvp(fx, (x,), (probe,))
    return out, jnp.sum((probe * jv).reshape(x.shape[0], -1).astype(jnp.float32), axis=1)
  out = fx(x)
  size = x[0].size
  flat = x.shape[0], size

  def column(k):
    basis = jax.nn.one_hot(jnp.full((x.shape[0],), k), size, dtype=x.dtype).reshape(x.shape)
    return jax.jvp(fx, (x,), (basis,))[1].reshape(flat)[:, k]

  return out, jnp.sum(jax.lax.map(column, jnp.arange(size)), axis=0).astype(jnp.float32)


def log_likelihood(f: Field, x: jax.Array, tau0: float, tau1: float,
                   prior_logp: Callable[[jax.Array], jax.Array], *,
                   probe: jax.Array | None = None, context: jax.Array | None = None,
                   rtol: float = 1e-5, atol: float = 1e-5,
                   max_steps: int = 4096) -> tuple[jax.Array, jax.Array]:
  """(log p_τ0(x) [N], the solver's steps [N]): each example of x [N, ...] at level τ0 carried
  to τ1 by its own adaptive Runge-Kutta solve (Tsit5, PID step control at `rtol`, `atol`) of x
  and ∫ ∇·f, then scored by `prior_logp` (x(τ1) [N, ...] -> [N]). `probe` as `divergence`'s;
  `context` [N, ...] (e.g. class labels), when given, is each example's third argument of f.

  The solves are vmapped: each example's steps are chosen for its own error, so its result
  does not depend on the others in the batch (a joint solve's step control would average
  the errors of the batch)."""
  diffrax = _diffrax()

  def one(xi, probe_i, context_i):
    field = f if context_i is None else lambda y, tau: f(y, tau, context_i[None])

    def rhs(tau, state, args):
      out, div = divergence(field, state[0][None], jnp.full((1,), tau, jnp.float32),
                            None if probe_i is None else probe_i[None])
      return out[0], div[0]

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(rhs), diffrax.Tsit5(), t0=float(tau0), t1=float(tau1), dt0=None,
        y0=(xi, jnp.zeros((), jnp.float32)), saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps)
    return sol.ys[0][0], sol.ys[1][0], sol.stats["num_steps"]

  y1, integral, steps = jax.vmap(one)(x, probe, context)
  return prior_logp(y1) + integral, steps


def gaussian_logp(x: jax.Array, scale: float) -> jax.Array:
  """log N(x; 0, scale² I) per example [N] of x [N, ...]."""
  flat = x.reshape(x.shape[0], -1).astype(jnp.float32)
  d = flat.shape[1]
  return (-0.5 * jnp.sum(flat ** 2, axis=1) / scale ** 2 - d * jnp.log(scale)
          - 0.5 * d * jnp.log(2 * jnp.pi))
