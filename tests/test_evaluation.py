"""Sample-quality measures: the Fréchet distance, KID and IS against independent computations,
and the digits classifier's measures on real and fake digits."""

import numpy as np
import pytest
import scipy.linalg
from scipy.stats import entropy

from diffusion.data import DigitsSource
from diffusion.evaluation import (
    DigitsEvaluator, Statistics, digits_metrics, fid_from_features, frechet_distance,
    inception_score, kernel_inception_distance, load_statistics, save_statistics, statistics,
    train_classifier)


def random_cov(rng, d, rank=None):
  a = rng.normal(size=(d, rank or d))
  return a @ a.T / d


def scipy_frechet(mu1, s1, mu2, s2):
  """The textbook formula with SciPy's general matrix square root."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  return np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean.real)


def test_frechet_distance_equals_scipy_on_full_rank_covariances(rng):
  d = 24
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = random_cov(rng, d), random_cov(rng, d)
  np.testing.assert_allclose(frechet_distance(mu1, s1, mu2, s2), scipy_frechet(mu1, s1, mu2, s2),
                             rtol=1e-9)
  assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_on_singular_and_near_singular_covariances(rng):
  """Shared eigenvectors make the closed form |Δμ|² + Σ (√a - √b)²; most eigenvalues are 0 or
  1e-14, as with fewer samples than feature dimensions."""
  d = 64
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  a, b = np.zeros(d), np.full(d, 1e-14)
  a[:10], b[:7] = rng.uniform(0.5, 2, 10), rng.uniform(0.5, 2, 7)
  s1, s2 = (q * a) @ q.T, (q * b) @ q.T
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  value = frechet_distance(mu1, s1, mu2, s2)
  assert np.isfinite(value)
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  # Covariances of 20 feature vectors in 64 dimensions, identical sets: distance 0, not NaN.
  x = rng.normal(size=(20, d))
  assert fid_from_features(x, x) == pytest.approx(0, abs=1e-8)
  # Two different rank-deficient sets against the general sqrtm where that one is well defined.
  y = rng.normal(size=(20, d)) + 0.3
  (m1, c1), (m2, c2) = statistics(x), statistics(y)
  value = frechet_distance(m1, c1, m2, c2)
  # sqrt of c1 c2 via the eigenvalues of the product (a third route): its nonzero spectrum is real.
  eig = np.clip(np.linalg.eigvals(c1 @ c2).real, 0, None)
  reference = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.sqrt(eig).sum()
  np.testing.assert_allclose(value, reference, rtol=1e-6)


def test_statistics_accumulate_in_float64_like_numpy(rng):
  x = rng.normal(size=(300, 8)) * 0.01 + 1e6  # large offset: naive sums of squares lose it all
  stats = Statistics()
  for part in np.array_split(x, 7):
    stats.update(part.astype(np.float64))
  np.testing.assert_allclose(stats.mu, x.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-6, atol=1e-12)
  with pytest.raises(ValueError, match="dimensions"):
    stats.update(np.zeros((2, 9)))
  with pytest.raises(ValueError, match="features"):
    statistics(np.zeros((4, 3), np.int32))


def test_statistics_files_round_trip(tmp_path, rng):
  mu, sigma = rng.normal(size=5), random_cov(rng, 5)
  save_statistics(str(tmp_path / "ref.npz"), mu, sigma)
  loaded = load_statistics(str(tmp_path / "ref.npz"))
  np.testing.assert_array_equal(loaded[0], mu)
  np.testing.assert_array_equal(loaded[1], sigma)
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    load_statistics(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "bad.npz", mean=mu)
  with pytest.raises(ValueError, match="'mu' and 'sigma'"):
    load_statistics(str(tmp_path / "bad.npz"))


def naive_mmd2(x, y):
  """Unbiased MMD² with the cubic polynomial kernel, pair by pair."""
  d = x.shape[1]
  k = lambda a, b: (a @ b / d + 1) ** 3
  m = len(x)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
  return xx + yy - 2 * xy


def test_kid_equals_the_pairwise_formula_and_is_unbiased(rng):
  x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 5)) + 0.5
  # One subset of every row: the subset's order does not matter.
  value, _ = kernel_inception_distance(x, y, subsets=1, subset_size=12)
  np.testing.assert_allclose(value, naive_mmd2(x, y), rtol=1e-10)
  same = kernel_inception_distance(rng.normal(size=(400, 5)), rng.normal(size=(400, 5)),
                                   subsets=20, subset_size=200)
  shifted = kernel_inception_distance(rng.normal(size=(400, 5)), rng.normal(size=(400, 5)) + 0.5,
                                      subsets=20, subset_size=200)
  assert abs(same[0]) < 3 * same[1] + 1e-3 and shifted[0] > 10 * same[1]


def test_inception_score_limits_and_formula(rng):
  assert inception_score(np.full((100, 10), 0.1))[0] == pytest.approx(1)
  assert inception_score(np.eye(10)[np.arange(100) % 10])[0] == pytest.approx(10)
  p = rng.dirichlet(np.ones(6) * 0.3, size=50)
  expected = np.exp(np.mean([entropy(row, p.mean(axis=0)) for row in p]))
  assert inception_score(p, splits=1)[0] == pytest.approx(expected, rel=1e-9)
  with pytest.raises(ValueError, match="probs"):
    inception_score(p * 2)
  # Parts with their own marginals: the first half all class 0, the second half all class 1.
  # Each part is one class (score 1), though together they hold two (score 2).
  ordered = np.eye(2)[np.repeat([0, 1], 50)]
  assert inception_score(ordered, splits=2)[0] == pytest.approx(1)
  assert inception_score(ordered, splits=1)[0] == pytest.approx(2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def evaluator(cache):
  return DigitsEvaluator.load(cache)


def test_the_digits_classifier_and_its_cache(evaluator, cache, monkeypatch):
  assert evaluator.test_accuracy > 0.95
  # The second load reads the cached file: the same parameters, no training.
  from diffusion.evaluation import digits
  def no_training(**kwargs):
    raise AssertionError("trained again instead of reading the cache")
  monkeypatch.setattr(digits, "train_classifier", no_training)
  again = DigitsEvaluator.load(cache)
  np.testing.assert_array_equal(again.params["Dense_1"]["kernel"],
                                evaluator.params["Dense_1"]["kernel"])


def test_classifier_training_is_deterministic():
  a, _ = train_classifier(epochs=1)
  b, _ = train_classifier(epochs=1)
  np.testing.assert_array_equal(a["Conv_0"]["kernel"], b["Conv_0"]["kernel"])
  np.testing.assert_array_equal(a["Dense_1"]["bias"], b["Dense_1"]["bias"])


def test_digits_measures_tell_digits_from_noise(evaluator, rng):
  held_out = digits_metrics(DigitsSource(split="test").images, evaluator)
  noise = digits_metrics(rng.integers(0, 256, (297, 8, 8, 1)).astype(np.uint8), evaluator)
  blurred = DigitsSource(split="test").images.astype(np.float64)
  blurred = (blurred + np.roll(blurred, 1, 1) + np.roll(blurred, 1, 2)) / 3
  blurred = digits_metrics(np.round(blurred).astype(np.uint8), evaluator)
  print("held out:", held_out, "\nblurred:", blurred, "\nnoise:", noise)
  assert held_out["fid"] < 0.1 * noise["fid"] and held_out["fid"] < blurred["fid"]
  assert held_out["is"] > 7 and noise["is"] < held_out["is"]
  assert held_out["kid"] < blurred["kid"] < noise["kid"]
  # Precision and recall tell fidelity from diversity: noise has neither, the held-out digits
  # both, and the held-out 0s and 1s alone (a collapse onto two modes) fidelity only.
  test = DigitsSource(split="test")
  collapsed = digits_metrics(test.images[test.labels < 2], evaluator)
  assert held_out["precision"] > 0.7 and held_out["recall"] > 0.7
  assert noise["precision"] < 0.05
  assert collapsed["precision"] > 0.7 and collapsed["recall"] < 0.5


def test_digits_measures_refuse_other_images(evaluator):
  with pytest.raises(ValueError, match="samples must be uint8"):
    digits_metrics(np.zeros((4, 8, 8, 1), np.float32), evaluator)
  with pytest.raises(ValueError, match=r"samples must be digits of shape \[N, 8, 8, 1\]"):
    digits_metrics(np.zeros((4, 16, 16, 1), np.uint8), evaluator)
  with pytest.raises(ValueError, match=r"samples must be digits"):
    digits_metrics(np.zeros((4, 8, 8, 3), np.uint8), evaluator)
