"""Power-function EMA and its post-hoc reconstruction (Karras et al. 2024, "Analyzing and
improving the training dynamics of diffusion models", Sec. 3 and App. C), as pure functions.

A power-function EMA of exponent γ averages the training trajectory θ(τ) up to step t with
the weight profile p_{t,γ}(τ) = (γ + 1) τ^γ / t^{γ+1} on [0, t]: its length is relative to
the training time, σ_rel = sqrt((γ + 1) / ((γ + 2)² (γ + 3))) (the profile's std over t). Step
t's update is θ̂_t = β_t θ̂_{t−1} + (1 − β_t) θ_t with β_t = (1 − 1/t)^{γ+1}, t = 1, 2, ...

Snapshots of a few such averages (e.g. σ_rel 0.05 and 0.10), kept through training, span the
averages of other lengths: the profile of any σ_rel at any time is approximated by a
combination Σ_i x_i p_i of the snapshots' profiles, the x minimising the L2 distance between
profiles (a linear least-squares problem in their inner products, all in closed form), and
the same combination of the snapshots' parameters is the reconstructed average.
"""

import numpy as np

MAX_SIGMA_REL = 1 / np.sqrt(12.0)  # σ_rel of γ = 0, the uniform average


def sigma_rel_of(gamma) -> np.ndarray:
  """σ_rel = sqrt((γ + 1) / ((γ + 2)² (γ + 3))) of exponents γ > 0."""
  gamma = np.asarray(gamma, np.float64)
  return np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_of(sigma_rel: float) -> float:
  """The exponent γ > 0 of a relative length σ_rel ∈ (0, 1/sqrt(12)): the largest real root
  of γ³ + 7γ² + (16 − σ⁻²) γ + (12 − σ⁻²) = 0."""
  if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float, np.floating)) or \
      not 0 < sigma_rel < MAX_SIGMA_REL:
    raise ValueError(f"`sigma_rel` must lie in (0, {MAX_SIGMA_REL:.4f}) (1/sqrt(12): the "
                     f"uniform average); got {sigma_rel!r}")
  inv = 1.0 / float(sigma_rel) ** 2
  roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
  return float(max(r.real for r in roots if abs(r.imag) < 1e-9 * max(1.0, abs(r.real))))


def beta(step, gamma: float):
  """β_t = (1 − 1/t)^{γ+1}, the decay of update t = 1, 2, ... (0 at t = 1: the average starts
  at the first parameters). Works on NumPy and JAX arrays alike."""
  return (1.0 - 1.0 / step) ** (gamma + 1.0)


def profile_dot(t1, gamma1, t2, gamma2) -> np.ndarray:
  """<p_{t1,γ1}, p_{t2,γ2}> = ∫ p_{t1,γ1} p_{t2,γ2} dτ = (γ1 + 1)(γ2 + 1) m^{γ1+γ2+1} /
  ((γ1 + γ2 + 1) t1^{γ1+1} t2^{γ2+1}), m = min(t1, t2); broadcasts, float64."""
  t1, g1, t2, g2 = (np.asarray(a, np.float64) for a in (t1, gamma1, t2, gamma2))
  m = np.minimum(t1, t2)
  # In logs: t^γ overflows float64 for γ ~ 17 and t ~ 10^19 (steps counted in images).
  log = (np.log(g1 + 1) + np.log(g2 + 1) + (g1 + g2 + 1) * np.log(m) - np.log(g1 + g2 + 1)
         - (g1 + 1) * np.log(t1) - (g2 + 1) * np.log(t2))
  return np.exp(log)


def coefficients(snapshot_steps, snapshot_gammas, step: float, gamma: float) -> np.ndarray:
  """The combination x [S] of S snapshots (taken at `snapshot_steps` [S], of exponents
  `snapshot_gammas` [S]) whose profile is closest in L2 to p_{step,γ}: the least-squares
  solution of A x = b, A_ij = <p_i, p_j>, b_i = <p_i, p_{step,γ}>. float64 [S]."""
  ts, gs = (np.asarray(a, np.float64).reshape(-1) for a in (snapshot_steps, snapshot_gammas))
  if len(ts) != len(gs) or not len(ts):
    raise ValueError(f"`snapshot_steps` and `snapshot_gammas` must be non-empty and of one "
                     f"length; got {len(ts)} and {len(gs)}")
  if np.any(ts <= 0) or not step > 0:
    raise ValueError("steps must be > 0 (the first update is step 1)")
  a = profile_dot(ts[:, None], gs[:, None], ts[None], gs[None])
  b = profile_dot(ts, gs, step, gamma)
  # Rescaled to unit diagonal, which conditions the solve (profiles of late snapshots have
  # tiny norms when t is counted in images).
  scale = 1 / np.sqrt(np.diag(a))
  x, *_ = np.linalg.lstsq(a * scale[:, None] * scale[None], b * scale, rcond=None)
  return x * scale


def profile_error(snapshot_steps, snapshot_gammas, x, step: float, gamma: float) -> float:
  """‖Σ_i x_i p_i − p_{step,γ}‖ / ‖p_{step,γ}‖: how well the snapshots reach the target."""
  ts, gs = (np.asarray(a, np.float64).reshape(-1) for a in (snapshot_steps, snapshot_gammas))
  a = profile_dot(ts[:, None], gs[:, None], ts[None], gs[None])
  b = profile_dot(ts, gs, step, gamma)
  target = profile_dot(step, gamma, step, gamma)
  return float(np.sqrt(max(x @ a @ x - 2 * x @ b + target, 0.0) / target))
