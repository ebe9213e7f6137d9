"""Fixed-step solvers of a probability-flow ODE dx/dτ = f(x, τ) over a grid of noise levels τ
(flow matching's t, EDM's σ), each one `lax.scan`: Euler (one evaluation a step) and Heun's
second-order method (EDM's Algorithm 1: two a step, the last step Euler, 2N − 1 in all).

x [N, ...]; `grid` a 1-D array of levels, from x's level down to the end (its last entry, e.g.
0: the data); f(x, τ) with τ float32 [N]. The result keeps x's dtype.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Field = Callable[[jax.Array, jax.Array], jax.Array]


def check_grid(grid) -> np.ndarray:
  """`grid` as a float64 host array after checking it: 1-D, at least 2 levels, finite,
  strictly decreasing (a ValueError naming `grid` otherwise)."""
  grid = np.asarray(grid, np.float64)
  if grid.ndim != 1 or len(grid) < 2 or not np.all(np.isfinite(grid)) or np.any(
      np.diff(grid) >= 0):
    raise ValueError(f"`grid` must be at least 2 finite, strictly decreasing noise levels; got "
                     f"{grid}")
  return grid


def _levels(x, value):
  return jnp.full((x.shape[0],), value, jnp.float32)


def euler(f: Field, x: jax.Array, grid) -> jax.Array:
  """x_{i+1} = x_i + (τ_{i+1} − τ_i) f(x_i, τ_i): len(grid) − 1 evaluations."""
  grid = check_grid(grid)

  def step(x, pair):
    tau, tau_next = pair
    return (x + (tau_next - tau) * f(x, _levels(x, tau))).astype(x.dtype), None

  x, _ = jax.lax.scan(step, x, (jnp.asarray(grid[:-1], jnp.float32),
                                jnp.asarray(grid[1:], jnp.float32)))
  return x


def heun(f: Field, x: jax.Array, grid) -> jax.Array:
  """Heun's method: x' = x_i + h f(x_i, τ_i), x_{i+1} = x_i + h (f(x_i, τ_i) + f(x', τ_{i+1}))
  / 2 with h = τ_{i+1} − τ_i, but a plain Euler step into the last level (where EDM's slope is
  undefined): 2 (len(grid) − 1) − 1 evaluations."""
  grid = check_grid(grid)

  def step(x, pair):
    tau, tau_next = pair
    slope = f(x, _levels(x, tau))
    euler_x = x + (tau_next - tau) * slope
    corrected = x + (tau_next - tau) * 0.5 * (slope + f(euler_x, _levels(x, tau_next)))
    return corrected.astype(x.dtype), None

  if len(grid) > 2:
    x, _ = jax.lax.scan(step, x, (jnp.asarray(grid[:-2], jnp.float32),
                                  jnp.asarray(grid[1:-1], jnp.float32)))
  return euler(f, x, grid[-2:])


def evaluations(solver: str, levels: int) -> int:
  """Network evaluations of `solver` ("euler" or "heun") over a grid of `levels` levels."""
  return {"euler": levels - 1, "heun": 2 * (levels - 1) - 1}[solver]
