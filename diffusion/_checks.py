"""Argument checks shared by the public functions.

Every check runs on static properties (shapes, dtypes, option names) so it
fires while a function is traced, before XLA compiles anything, and names the
argument at fault.
"""

from collections.abc import Collection
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned_range", "learned")
LEARNED_VARIANCES = ("learned_range", "learned")


def choice(value: Any, choices: Collection[str], name: str) -> str:
  """Returns `value` if it is one of `choices`, else raises ValueError."""
  if not isinstance(value, str) or value not in choices:
    raise ValueError(
        f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
  return value


def positive(value: Any, name: str) -> Any:
  """Returns `value` if it is a number > 0, else raises ValueError naming it."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0:
    raise ValueError(f"{name} must be > 0; got {value!r}")
  return value


def floating(x: jax.typing.ArrayLike, name: str) -> jax.Array:
  """Returns `x` as an array, raising TypeError unless it has a float dtype."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"{name} must have a floating dtype; got {dtype}")
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(
        f"{name} must have a batch dimension and at least one data dimension "
        f"([B, ..., C]); got shape {x.shape}")
  return x


def same_shape(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
  if a.shape != b.shape:
    raise ValueError(
        f"{name_b} must have the shape of {name_a} {a.shape}; got {b.shape}")


def timesteps(t: jax.typing.ArrayLike, batch: int, name: str = "t",
              like: str = "x") -> jax.Array:
  """Checks that `t` is an integer array of shape [batch]."""
  dtype = jnp.result_type(t)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(
        f"{name} must be an integer array of timesteps; got dtype {dtype}")
  t = jnp.asarray(t)
  if t.shape != (batch,):
    raise ValueError(
        f"{name} must have shape [B] = ({batch},), B being the batch size of "
        f"{like}; got shape {t.shape}")
  return t


def model_output(output: jax.Array, x_t: jax.Array, variance: str) -> None:
  """Checks the model output's shape against the variance type."""
  channels = x_t.shape[-1]
  want = 2 * channels if variance in LEARNED_VARIANCES else channels
  if output.shape[:-1] != x_t.shape[:-1] or output.shape[-1] != want:
    expected = x_t.shape[:-1] + (want,)
    extra = (" (mean and variance channels)"
             if variance in LEARNED_VARIANCES else "")
    raise ValueError(
        f"model_output must have shape {expected}{extra} for "
        f"variance={variance!r} and x_t of shape {x_t.shape}; got "
        f"{output.shape}")


def concrete(x: jax.typing.ArrayLike, name: str) -> np.ndarray:
  """Returns `x` as a float64 NumPy array; fails on tracers with a message."""
  if isinstance(x, jax.core.Tracer):
    raise TypeError(
        f"{name} must be a concrete array (NumPy or a jax.Array outside jit) "
        "because it is validated when the schedule is built; build the "
        "Schedule outside jit and pass it in as an argument")
  return np.asarray(x, dtype=np.float64)


SEED_LIMIT = 2 ** 63  # jax.random.key takes a C long


def seed(value: Any, name: str = "seed") -> int:
  """`value` if it is an int in [0, 2^63): a seed jax.random.key takes; else a ValueError
  naming `name` and the range."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
      0 <= value < SEED_LIMIT):
    raise ValueError(f"{name} must be an int in [0, 2**63 - 1]; got {value!r}")
  return int(value)

