"""Improved precision and recall (Kynkäänniemi et al. 2019) on features, in float64 NumPy.

Each set of features stands for a manifold: the union of balls around its points, each ball's
radius the distance to the point's k-th nearest neighbour within the set (k = 3, the paper's).
Precision is the fraction of generated points inside the real manifold (fidelity); recall the
fraction of real points inside the generated one (diversity). The paper used VGG-16 features;
ADM's evaluation suite uses Inception's pool features, as `ddpm evaluate` does for images (the
digits classifier's for the digits).

Distances are computed in blocks of rows, as ‖a‖² + ‖b‖² − 2 a·b in float64 after centring
both sets on the real set's mean (which keeps the cancellation small): memory stays
O(block · N), time O(N² D).

Shapes: real [N, D], fake [M, D].
"""

import numpy as np

from diffusion.evaluation.frechet import _features

K = 3


def _squared_distances(a: np.ndarray, b: np.ndarray, b_norms: np.ndarray) -> np.ndarray:
  """‖a_i − b_j‖² [len(a), len(b)], clipped at 0 (rounding)."""
  return np.maximum(np.sum(a * a, axis=1)[:, None] + b_norms[None] - 2 * a @ b.T, 0.0)


def kth_neighbour_radii(x: np.ndarray, k: int = K, block: int = 1024) -> np.ndarray:
  """The squared distance of each row of x [N, D] to its k-th nearest other row, float64 [N]
  (a duplicate of a row counts as a neighbour at distance 0)."""
  norms = np.sum(x * x, axis=1)
  radii = np.empty(len(x))
  for start in range(0, len(x), block):
    d = _squared_distances(x[start:start + block], x, norms)
    d[np.arange(len(d)), start + np.arange(len(d))] = -1.0  # the row itself comes first
    radii[start:start + block] = np.partition(d, k, axis=1)[:, k]
  return radii


def coverage(query: np.ndarray, points: np.ndarray, radii: np.ndarray,
             block: int = 1024) -> np.ndarray:
  """Whether each row of `query` [M, D] lies within the ball of some row of `points` [N, D]
  of squared radius `radii` [N]: bool [M]."""
  norms = np.sum(points * points, axis=1)
  inside = np.empty(len(query), bool)
  for start in range(0, len(query), block):
    d = _squared_distances(query[start:start + block], points, norms)
    inside[start:start + block] = np.any(d <= radii[None], axis=1)
  return inside


def precision_recall(real, fake, *, k: int = K, block: int = 1024) -> dict[str, float]:
  """{"precision", "recall"} of generated features `fake` [M, D] against `real` [N, D], each in
  [0, 1], with the k-nearest-neighbour manifolds of both sets (k < N and k < M)."""
  real, fake = _features(real, "real features"), _features(fake, "fake features")
  if real.shape[1] != fake.shape[1]:
    raise ValueError(f"real and fake features differ in dimension: {real.shape[1]} and "
                     f"{fake.shape[1]}")
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < min(len(real), len(fake)):
    raise ValueError(f"`k` must be an int in [1, {min(len(real), len(fake)) - 1}] (fewer than "
                     f"the points of either set); got {k!r}")
  centre = real.mean(axis=0)
  real, fake = real - centre, fake - centre
  precision = coverage(fake, real, kth_neighbour_radii(real, k, block), block).mean()
  recall = coverage(real, fake, kth_neighbour_radii(fake, k, block), block).mean()
  return {"precision": float(precision), "recall": float(recall)}
