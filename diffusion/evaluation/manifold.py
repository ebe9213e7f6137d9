"""Improved precision and recall (Kynkäänniemi et al. 2019) on features, sharded over devices
with every decision exact in float64.

Each set of features stands for a manifold: the union of balls around its points, each ball's
radius the distance to the point's k-th nearest neighbour within the set (k = 3, the paper's).
Precision is the fraction of generated points inside the real manifold (fidelity); recall the
fraction of real points inside the generated one (diversity). The paper used VGG-16 features;
ADM's evaluation suite uses Inception's pool features, as `ddpm evaluate` does for images (the
digits classifier's for the digits).

`precision_recall` splits the query points over the devices of a mesh (each device holds the
other set whole) and computes the squared distances ‖a‖² + ‖b‖² − 2 a·b in float32 after
centring both sets on the real set's mean; a point whose decision lies within float32's
rounding of a ball's boundary (|d − r| ≤ 4 (D + 1) 2⁻²⁴ max(‖a‖² + ‖b‖²)) is decided again
on the host in float64 from the few nearest balls and neighbours the device lists, so that the
result equals the float64 computation (`precision_recall_float64`, blocked NumPy, kept as the
reference) at a cost of O(k D) a re-decided point. Memory: the other set on each device, and
[block, N] distances.

Shapes: real [N, D], fake [M, D].
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusion.distributed import make_mesh
from diffusion.evaluation.frechet import _features
from diffusion.sampling import in_batches, over_samples

K = 3
# A float32 squared distance ‖a‖² + ‖b‖² − 2 a·b errs by at most about 2 (D + 1) 2⁻²⁴ (‖a‖² +
# ‖b‖²) (a dot product of length D summed in any order, and the inputs' rounding); a decision
# compares two such figures (the distance and the ball's radius), hence twice that.
TOLERANCE = 4 * 2.0 ** -24


def _squared_distances(a: np.ndarray, b: np.ndarray, b_norms: np.ndarray) -> np.ndarray:
  """‖a_i − b_j‖² [len(a), len(b)], clipped at 0 (rounding)."""
  return np.maximum(np.sum(a * a, axis=1)[:, None] + b_norms[None] - 2 * a @ b.T, 0.0)


def kth_neighbour_radii(x: np.ndarray, k: int = K, block: int = 1024,
                        rows: np.ndarray | None = None) -> np.ndarray:
  """The squared distance of each row of x [N, D] (or of the rows numbered `rows`) to its k-th
  nearest other row, float64 (a duplicate of a row counts as a neighbour at distance 0)."""
  norms = np.sum(x * x, axis=1)
  rows = np.arange(len(x)) if rows is None else np.asarray(rows)
  radii = np.empty(len(rows))
  for start in range(0, len(rows), block):
    chunk = rows[start:start + block]
    d = _squared_distances(x[chunk], x, norms)
    d[np.arange(len(chunk)), chunk] = -1.0  # the row itself comes first
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


def _checked(real, fake, k):
  real, fake = _features(real, "real features"), _features(fake, "fake features")
  if real.shape[1] != fake.shape[1]:
    raise ValueError(f"real and fake features differ in dimension: {real.shape[1]} and "
                     f"{fake.shape[1]}")
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < min(len(real), len(fake)):
    raise ValueError(f"`k` must be an int in [1, {min(len(real), len(fake)) - 1}] (fewer than "
                     f"the points of either set); got {k!r}")
  centre = real.mean(axis=0)
  return real - centre, fake - centre


def precision_recall_float64(real, fake, *, k: int = K, block: int = 1024) -> dict[str, float]:
  """`precision_recall` on the host, all of it in float64 NumPy (O(N² D) on one CPU)."""
  real, fake = _checked(real, fake, k)
  precision = coverage(fake, real, kth_neighbour_radii(real, k, block), block).mean()
  recall = coverage(real, fake, kth_neighbour_radii(fake, k, block), block).mean()
  return {"precision": float(precision), "recall": float(recall)}


def _device_distances(points, norms, q):
  """float32 ‖q_i − p_j‖² [len(q), len(points)] on a device, at full float32 precision."""
  dots = jnp.dot(q, points.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(jnp.sum(q * q, axis=1)[:, None] + norms[None] - 2 * dots, 0.0)


LISTED = 8  # near neighbours (beyond k) and nearest balls each point brings back to the host


@functools.lru_cache(maxsize=8)
def _programs(mesh, k: int):
  """(radii, coverage) sharded over `mesh`, in the `over_samples` calling convention: for
  each query point, the smallest float32 squared distances to the other points (the query's
  own as −1) or margins d − r to their balls, [b, L], and whose they are [b, L]. (Whole: XLA:CPU
  turns a top_k whose values are sliced on the device into a full sort, 5x slower.)"""
  def radii(variables, key, index, q):
    points, norms = variables
    d = _device_distances(points, norms, q)
    d = jnp.where(jnp.arange(points.shape[0])[None] == index[:, None], -1.0, d)
    nearest, listed = jax.lax.top_k(-d, min(k + 1 + LISTED, points.shape[0]))
    return -nearest, listed

  def covered(variables, key, index, q):
    points, norms, r = variables
    closest, listed = jax.lax.top_k(r[None] - _device_distances(points, norms, q),
                                    min(LISTED + 1, points.shape[0]))
    return -closest, listed

  return over_samples(radii, mesh, 1), over_samples(covered, mesh, 1)


def _run(program, variables, query, mesh, block, desc, progress):
  variables = jax.device_put(variables, NamedSharding(mesh, P()))  # a no-op where placed
  key = jax.random.key(0)  # unused: the programs draw nothing
  return in_batches(lambda first, rows: program(variables, key, first, query[rows]),
                    len(query), block * mesh.size, mesh, desc=desc, unit="point",
                    progress=progress)


class _ExactRadii:
  """float64 radii of the points' balls, each from the near neighbours the device listed when
  they settle it (O(k D)), else from all the points (O(N D))."""

  def __init__(self, points, k, radii, listed, last, slack):
    self.points, self.k, self.radii, self.listed, self.last = points, k, radii, listed, last
    self.slack, self.done = slack, {}

  def __call__(self, j: int) -> float:
    if j not in self.done:
      if self.last[j] > self.radii[j] + 2 * self.slack:  # the true k nearest are all listed
        others = self.listed[j][self.listed[j] != j]
        d = np.sort(np.sum((self.points[others] - self.points[j]) ** 2, axis=1))
        self.done[j] = float(d[self.k - 1])
      else:
        self.done[j] = float(kth_neighbour_radii(self.points, self.k, rows=np.array([j]))[0])
    return self.done[j]


def _covered(query, points, k, mesh, block, tolerance, progress, desc):
  """Whether each row of `query` lies in the k-NN manifold of `points` (both float64, centred),
  decided in float32 on the devices and again in float64 where float32 cannot tell; with the
  number decided again."""
  radii_program, cover_program = _programs(mesh, k)
  q32, p32 = query.astype(np.float32), points.astype(np.float32)
  norms = np.sum(points ** 2, axis=1)
  variables = jax.device_put((p32, norms.astype(np.float32)), NamedSharding(mesh, P()))
  scale = float(norms.max() + np.sum(query ** 2, axis=1).max())
  slack = np.float32(tolerance * (query.shape[1] + 1) * scale)
  nearest, neighbours = _run(radii_program, variables, p32, mesh, block, f"{desc} radii",
                             progress)
  radii = nearest[:, k]
  margins, balls = _run(cover_program, (*variables, radii), q32, mesh, block, desc, progress)
  inside = margins[:, 0] <= 0
  unsure = (margins[:, 0] >= -slack) & (margins[:, 0] <= slack)  # and none surely inside
  more = (len(points) > LISTED) & (margins[:, -1] <= slack)  # not every ball near is listed
  balls = balls[:, :LISTED]
  exact = _ExactRadii(points, k, radii, neighbours, nearest[:, -1], float(slack))
  for i in np.flatnonzero(unsure):
    if more[i]:  # more balls near the boundary than listed: all of them, in float64
      d = np.sum((points - query[i]) ** 2, axis=1)
      candidates = np.flatnonzero(d <= radii + 2 * slack)
    else:
      candidates = balls[i]
      d = dict(zip(candidates, np.sum((points[candidates] - query[i]) ** 2, axis=1)))
    inside[i] = any(d[j] <= exact(j) for j in candidates)
  return inside, int(unsure.sum())


def precision_recall(real, fake, *, k: int = K, mesh=None, block: int = 256,
                     tolerance: float = TOLERANCE,
                     progress: bool = False) -> dict[str, float]:
  """{"precision", "recall"} of generated features `fake` [M, D] against `real` [N, D], each in
  [0, 1], with the k-nearest-neighbour manifolds of both sets (k < N and k < M).

  Sharded over `mesh` (default: every device), `block` query points a device at a time; the
  decisions within `tolerance` · (D + 1) · max(‖a‖² + ‖b‖²) of a ball's boundary are taken again in
  float64 on the host (`tolerance` = 0 keeps float32's)."""
  real, fake = _checked(real, fake, k)
  mesh = make_mesh() if mesh is None else mesh
  precision, _ = _covered(fake, real, k, mesh, block, tolerance, progress, "precision")
  recall, _ = _covered(real, fake, k, mesh, block, tolerance, progress, "recall")
  return {"precision": float(precision.mean()), "recall": float(recall.mean())}
