"""Improved precision and recall against an independent k-NN (SciPy's k-d tree) and the cases
whose answer is known; the sharded float32 computation against the float64 one where float32
alone decides wrongly."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from diffusion.evaluation.manifold import precision_recall, precision_recall_float64


def reference(real, fake, k=3):
  """The paper's definition, written with a k-d tree: a point's radius is the distance to its
  k-th nearest neighbour in its own set (the query's first hit is the point itself)."""
  def radii(x):
    return cKDTree(x).query(x, k + 1)[0][:, k]

  def covered(query, points, r):
    d = np.sqrt(np.sum((query[:, None] - points[None]) ** 2, axis=-1))
    return np.mean(np.any(d <= r[None], axis=1))

  return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def test_identical_and_disjoint_clouds():
  x = np.random.default_rng(0).normal(size=(300, 8))
  assert precision_recall(x, x.copy()) == {"precision": 1.0, "recall": 1.0}
  assert precision_recall(x, x + 100.0) == {"precision": 0.0, "recall": 0.0}


def test_a_subset_has_full_precision_and_partial_recall():
  x = np.random.default_rng(1).normal(size=(400, 4))
  subset = x[:100]
  result = precision_recall(x, subset)
  assert result["precision"] == 1.0  # every point of the subset is a real point
  expected = reference(x, subset)[1]
  assert result["recall"] == pytest.approx(expected, abs=1e-12) and 0.5 < expected < 1.0
  # The other way round: the full set covers its subset, and precision drops.
  swapped = precision_recall(subset, x)
  assert swapped["recall"] == 1.0 and swapped["precision"] < 1.0


@pytest.mark.parametrize("k", [1, 3, 5])
def test_equal_to_an_independent_nearest_neighbour_search(k):
  rng = np.random.default_rng(k)
  real = rng.normal(size=(500, 8)) + 3.0  # off the origin: the centring is exercised
  fake = 1.2 * rng.normal(size=(350, 8)) + 3.0
  fake[:, 0] += 1.0
  precision, recall = reference(real, fake, k)
  for result in (precision_recall(real, fake, k=k, block=8),  # 8 devices, several blocks each
                 precision_recall_float64(real, fake, k=k, block=64)):
    assert result["precision"] == pytest.approx(precision, abs=1e-12)
    assert result["recall"] == pytest.approx(recall, abs=1e-12)
  assert 0.3 < precision < 0.8 and 0.6 < recall < 0.99  # neither trivially 0 nor 1


def test_float32_decisions_too_close_to_call_are_taken_again_in_float64():
  # Two clusters 2,000 apart with points about 1 apart inside each: after centring, ‖a‖² is
  # 10⁶, and float32's ‖a‖² + ‖b‖² − 2 a·b errs by a good fraction of a ball's radius.
  rng = np.random.default_rng(7)
  offset = np.zeros(4)
  offset[0] = 1000.0
  cluster = lambda n, s: s * rng.normal(size=(n, 4))
  real = np.concatenate([cluster(150, 1.0) + offset, cluster(150, 1.0) - offset])
  fake = np.concatenate([cluster(120, 1.3) + offset, cluster(120, 1.3) - offset])
  precision, recall = reference(real, fake)
  float32 = precision_recall(real, fake, tolerance=0.0)
  assert (float32["precision"], float32["recall"]) != pytest.approx((precision, recall),
                                                                     abs=1e-12)
  result = precision_recall(real, fake)
  assert result["precision"] == pytest.approx(precision, abs=1e-12)
  assert result["recall"] == pytest.approx(recall, abs=1e-12)


def test_bad_input_is_named():
  x = np.zeros((10, 4))
  with pytest.raises(ValueError, match="`k` must be an int in \\[1, 9\\]"):
    precision_recall(x, x, k=10)
  with pytest.raises(ValueError, match="differ in dimension: 4 and 3"):
    precision_recall(x, np.zeros((10, 3)))
  with pytest.raises(ValueError, match="fake features must be a non-empty float array"):
    precision_recall(x, np.zeros((0, 4)))
  with pytest.raises(ValueError, match="differ in dimension: 4 and 3"):
    precision_recall_float64(x, np.zeros((10, 3)))


def test_the_float64_radii_from_the_listed_neighbours_equal_the_full_search():
  from diffusion.distributed import make_mesh
  from diffusion.evaluation import manifold
  points = np.random.default_rng(3).normal(size=(200, 6))
  mesh = make_mesh()
  nearest, neighbours = manifold._run(manifold._programs(mesh, 3)[0], (
      points.astype(np.float32), np.sum(points ** 2, axis=1).astype(np.float32)),
      points.astype(np.float32), mesh, 16, "radii", False)
  exact = manifold._ExactRadii(points, 3, nearest[:, 3], neighbours, nearest[:, -1], 1e-4)
  listed = nearest[:, -1] > nearest[:, 3] + 2e-4  # settled by the listed neighbours alone
  assert listed.mean() > 0.9
  np.testing.assert_allclose([exact(j) for j in range(200)],
                             manifold.kth_neighbour_radii(points), rtol=1e-12)
