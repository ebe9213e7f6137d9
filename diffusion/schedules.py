"""Noise schedules: the betas of the forward process and the tables built on them.

Conventions (as in the authors' code): timestep index t = 0, ..., T - 1 is the
paper's t + 1, so `alphas_cumprod[t]` is the paper's ᾱ_{t+1}.
"""

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import _checks


def _num_steps(T: int) -> int:
  if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
    raise ValueError(f"T (the number of steps) must be a positive int; got {T!r}")
  return int(T)


def linear_betas(T: int, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> np.ndarray:
  """The DDPM paper's linear schedule (Ho et al. 2020, Sec. 4), float64 [T].

  The paper uses T = 1000. improved DDPM rescales both ends by 1000 / T so
  that other T keep the same overall noise; pass scaled values to get that.
  """
  T = _num_steps(T)
  return np.linspace(beta_start, beta_end, T, dtype=np.float64)


def quadratic_betas(T: int, beta_start: float = 1e-4,
                    beta_end: float = 0.02) -> np.ndarray:
  """Linear in sqrt(beta) (the authors' "quad" schedule), float64 [T]."""
  T = _num_steps(T)
  return np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64)**2


def sigmoid_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02,
                  width: float = 6.0) -> np.ndarray:
  """Sigmoid of linspace(-width, width) mapped onto [beta_start, beta_end], float64 [T]."""
  T = _num_steps(T)
  s = 1.0 / (1.0 + np.exp(-np.linspace(-width, width, T, dtype=np.float64)))
  return beta_start + (beta_end - beta_start) * s


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """improved DDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17), float64 [T].

  ᾱ(t) = f(t) / f(0) with f(t) = cos((t/T + s) / (1 + s) · π/2)², and
  β_t = min(1 - ᾱ(t) / ᾱ(t - 1), max_beta).
  """
  T = _num_steps(T)
  steps = np.arange(T + 1, dtype=np.float64) / T
  f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
  return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


BETA_SCHEDULES = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "quadratic": quadratic_betas,
    "sigmoid": sigmoid_betas,
}


def respace_betas(betas: np.ndarray, timesteps: Sequence[int]) -> np.ndarray:
  """Betas of the chain that visits only `timesteps` (improved DDPM, Sec. 4).

  The new schedule has ᾱ'_i = ᾱ_{timesteps[i]}, so q(x_t | x_0) of every kept
  step is unchanged: β'_i = 1 - ᾱ_{k_i} / ᾱ_{k_{i-1}} with ᾱ_{k_{-1}} = 1.

  Args:
    betas: float64 [T], the original schedule.
    timesteps: strictly increasing 0-based indices into `betas`.
  Returns:
    float64 [len(timesteps)]; model calls at new step i use timesteps[i].
  """
  betas = _checks.concrete(betas, "betas")
  k = np.asarray(timesteps)
  if (k.ndim != 1 or k.size == 0 or not np.issubdtype(k.dtype, np.integer)
      or np.any(np.diff(k) <= 0) or k[0] < 0 or k[-1] >= betas.shape[0]):
    raise ValueError(
        "timesteps must be a non-empty, strictly increasing sequence of ints "
        f"in [0, {betas.shape[0]}); got {timesteps!r}")
  alphas_cumprod = np.cumprod(1.0 - betas)[k]
  return 1.0 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """The tables of a T-step forward process, float32 [T] each.

  An immutable pytree: pass it to jitted functions as an argument; schedules
  of the same T share one compilation. Build it with `from_betas` (or
  `make_schedule`), which does the arithmetic in float64.
  """
  betas: jax.Array
  alphas: jax.Array
  alphas_cumprod: jax.Array                  # ᾱ_t
  alphas_cumprod_prev: jax.Array             # ᾱ_{t-1}, with ᾱ_0 = 1
  log_alphas_cumprod: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  log_one_minus_alphas_cumprod: jax.Array
  sqrt_recip_alphas_cumprod: jax.Array       # 1 / sqrt(ᾱ_t)
  sqrt_recipm1_alphas_cumprod: jax.Array     # sqrt(1 / ᾱ_t - 1)
  posterior_variance: jax.Array              # β̃_t, eq. (7)
  posterior_log_variance_clipped: jax.Array  # log β̃_t with β̃_1 := β̃_2
  posterior_mean_coef1: jax.Array            # of x_0 in μ̃_t, eq. (7)
  posterior_mean_coef2: jax.Array            # of x_t in μ̃_t, eq. (7)

  @property
  def num_steps(self) -> int:
    """T, a static Python int even under jit."""
    return self.betas.shape[0]

  def __repr__(self) -> str:
    return f"Schedule(num_steps={self.num_steps})"

  @classmethod
  def from_betas(cls, betas: jax.typing.ArrayLike) -> "Schedule":
    """Builds every table from betas [T] in float64, then stores float32.

    Raises:
      ValueError: betas not 1-D and non-empty, not finite, outside (0, 1), or
        so small that ᾱ_t does not decrease in float32.
      TypeError: betas is a tracer (build schedules outside jit).
    """
    betas = _checks.concrete(betas, "betas")
    if betas.ndim != 1 or betas.size == 0:
      raise ValueError(f"betas must be a non-empty 1-D array; got shape {betas.shape}")
    if not np.all(np.isfinite(betas)):
      raise ValueError("betas must be finite; got "
                       f"{np.count_nonzero(~np.isfinite(betas))} non-finite values")
    if np.any(betas <= 0) or np.any(betas >= 1):
      bad = np.flatnonzero((betas <= 0) | (betas >= 1))
      raise ValueError(
          "betas must lie in the open interval (0, 1); got "
          f"betas[{bad[0]}] = {betas[bad[0]]!r} ({bad.size} values outside)")

    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    if np.any(np.diff(alphas_cumprod.astype(np.float32)) >= 0):
      bad = np.flatnonzero(np.diff(alphas_cumprod.astype(np.float32)) >= 0)[0]
      raise ValueError(
          "alphas_cumprod must strictly decrease in float32, but "
          f"alphas_cumprod[{bad + 1}] >= alphas_cumprod[{bad}]: betas[{bad + 1}]"
          f" = {betas[bad + 1]!r} is too small to change it")
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    # β̃ at the first step is 0; the authors clip its log to that of the
    # second step (a one-step chain has only β to fall back on).
    first = posterior_variance[1] if betas.size > 1 else betas[0]
    tables = dict(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        log_alphas_cumprod=np.log(alphas_cumprod),
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        log_one_minus_alphas_cumprod=np.log(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=np.log(
            np.append(first, posterior_variance[1:])),
        posterior_mean_coef1=(
            betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)),
        posterior_mean_coef2=(
            (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)),
    )
    return cls(**{k: jnp.asarray(v, jnp.float32) for k, v in tables.items()})

  @classmethod
  def from_alphas_cumprod(cls, alphas_cumprod: jax.typing.ArrayLike) -> "Schedule":
    """Builds the schedule whose ᾱ_t are `alphas_cumprod` [T], strictly decreasing in (0, 1)."""
    ac = _checks.concrete(alphas_cumprod, "alphas_cumprod")
    if ac.ndim != 1 or ac.size == 0 or not np.all(np.isfinite(ac)):
      raise ValueError("alphas_cumprod must be a non-empty, finite 1-D array; "
                       f"got shape {ac.shape}")
    if np.any(ac <= 0) or np.any(ac >= 1):
      raise ValueError("alphas_cumprod must lie in the open interval (0, 1); "
                       f"got range [{ac.min()!r}, {ac.max()!r}]")
    if np.any(np.diff(ac) >= 0):
      bad = np.flatnonzero(np.diff(ac) >= 0)[0]
      raise ValueError(
          "alphas_cumprod must strictly decrease; got alphas_cumprod"
          f"[{bad + 1}] = {ac[bad + 1]!r} >= alphas_cumprod[{bad}] = {ac[bad]!r}")
    return cls.from_betas(1.0 - ac / np.append(1.0, ac[:-1]))


def make_schedule(name: str, T: int, **kwargs) -> Schedule:
  """`Schedule` of the named beta schedule; kwargs go to its `*_betas` function."""
  _checks.choice(name, BETA_SCHEDULES, "name")
  return Schedule.from_betas(BETA_SCHEDULES[name](T, **kwargs))


def extract(table: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
  """table[t] shaped [B, 1, ..., 1] to broadcast against x [B, ...].

  Out-of-range timesteps give NaN instead of a silently clamped value. The
  result has x's floating dtype promoted to at least float32.
  """
  num_steps = table.shape[0]
  valid = (t >= 0) & (t < num_steps)
  values = jnp.where(valid, table[jnp.clip(t, 0, num_steps - 1)], jnp.nan)
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  return values.astype(dtype).reshape(t.shape + (1,) * (x.ndim - 1))
