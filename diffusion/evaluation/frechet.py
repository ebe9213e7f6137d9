"""Sample-quality statistics on features: Fréchet distance (FID), kernel inception distance (KID)
and Inception Score, all in float64 NumPy.

The features come from any network (Inception-v3 for the FID literature, the
digits classifier for the CPU measures); these functions only see arrays.
"""

import numpy as np

from diffusion import paths


def _features(x, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating) or not len(x):
    raise ValueError(f"{name} must be a non-empty float array of features [N, D]; "
                     f"got {x.dtype} {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} holds non-finite features")
  return x.astype(np.float64)


class Statistics:
  """Mean and covariance of features, accumulated batch by batch in float64.

  `update(features [B, D])` any number of times; `mu` [D] and `sigma` [D, D]
  are then those of every row seen (covariance with N - 1, as pytorch-fid's).
  """

  def __init__(self):
    self.count, self._sum, self._outer = 0, None, None

  def update(self, features) -> "Statistics":
    x = _features(features, "features")
    if self._sum is None:
      self._sum, self._outer = np.zeros(x.shape[1]), np.zeros((x.shape[1],) * 2)
    elif x.shape[1] != self._sum.shape[0]:
      raise ValueError(f"features have {x.shape[1]} dimensions; earlier ones had "
                       f"{self._sum.shape[0]}")
    # Shifted by the first batch's mean, so the sums do not lose precision for features far
    # from zero.
    if self.count == 0:
      self._shift = x.mean(axis=0)
    x = x - self._shift
    self.count += len(x)
    self._sum += x.sum(axis=0)
    self._outer += x.T @ x
    return self

  @property
  def mu(self) -> np.ndarray:
    if not self.count:
      raise ValueError("no features yet: call update() first")
    return self._shift + self._sum / self.count

  @property
  def sigma(self) -> np.ndarray:
    if self.count < 2:
      raise ValueError("a covariance needs at least two feature vectors")
    mean = self._sum / self.count
    return (self._outer - self.count * np.outer(mean, mean)) / (self.count - 1)


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """(mu [D], sigma [D, D]) of features [N, D], in float64."""
  stats = Statistics().update(features)
  return stats.mu, stats.sigma


def save_statistics(path: str, mu: np.ndarray, sigma: np.ndarray, **extra) -> None:
  """Writes `mu` and `sigma` (and any `extra` arrays) to an .npz, with the keys pytorch-fid's
  reference files use."""
  paths.save_npz(paths.resolve(path, "`save_reference`"), mu=np.asarray(mu, np.float64),
                 sigma=np.asarray(sigma, np.float64), **extra)


def load_statistics(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from an .npz with keys "mu" and "sigma"."""
  data = paths.load_npz(paths.resolve(path, "reference statistics"), "reference statistics")
  if "mu" not in data or "sigma" not in data:
    raise ValueError(f"{path!r} must hold arrays 'mu' and 'sigma'; it holds {list(data)}")
  return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues < 0 from
  rounding are taken as 0)."""
  w, v = np.linalg.eigh((sigma + sigma.T) / 2)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """d² = |mu1 - mu2|² + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^½), the FID of Heusel et al. 2017.

  tr (sigma1 sigma2)^½ is computed as the sum of the square roots of the
  eigenvalues of the symmetric matrix sigma1^½ sigma2 sigma1^½ (which has the
  same eigenvalues as sigma1 sigma2): it stays real and finite for singular or
  near-singular covariances (fewer samples than feature dimensions), where a
  general matrix square root of sigma1 sigma2 turns complex or NaN.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  d = mu1.shape[-1] if mu1.ndim == 1 else None
  if d is None or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f"need mu1, mu2 of shape [D] and sigma1, sigma2 of shape [D, D]; got "
                     f"{mu1.shape}, {mu2.shape}, {sigma1.shape}, {sigma2.shape}")
  for name, a in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f"{name} is not finite")
  root1 = _psd_sqrt(sigma1)
  inner = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
  trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
  distance = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
  return float(max(distance, 0.0))


def fid_from_features(features1, features2) -> float:
  """The Fréchet distance between the Gaussians fitted to two sets of features [N, D]."""
  return frechet_distance(*statistics(features1), *statistics(features2))


def kernel_inception_distance(features1, features2, *, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
  """KID (Bińkowski et al. 2018): the unbiased MMD² with the kernel k(x, y) = (x·y / D + 1)³.

  Averaged over `subsets` random subsets of min(subset_size, N1, N2) rows of
  each set (without replacement within a subset); returns (mean, std) over the
  subsets.
  """
  x, y = _features(features1, "features1"), _features(features2, "features2")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"features1 and features2 differ in dimension: {x.shape[1]} and {y.shape[1]}")
  m = min(subset_size, len(x), len(y))
  if m < 2:
    raise ValueError("KID needs at least two feature vectors in each set")
  dim = x.shape[1]
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(subsets):
    a = x[rng.choice(len(x), m, replace=False)]
    b = y[rng.choice(len(y), m, replace=False)]
    kxx, kyy, kxy = ((a @ a.T / dim + 1) ** 3, (b @ b.T / dim + 1) ** 3, (a @ b.T / dim + 1) ** 3)
    off = m * (m - 1)
    values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off
                  - 2 * kxy.mean())
  return float(np.mean(values)), float(np.std(values))


def score_splits(n: int) -> int:
  """Parts of an Inception Score of n samples: 10 (the standard, for 50,000 samples), fewer for
  fewer samples so that each part holds at least 50."""
  return max(1, min(10, n // 50))


def inception_score(probs, *, splits: int = 10) -> tuple[float, float]:
  """IS = exp E_x KL(p(y|x) ‖ p(y)) (Salimans et al. 2016) of class probabilities [N, K].

  Computed on `splits` consecutive parts, as the original code does; returns
  (mean, std) over the parts. Lies in [1, K].
  """
  p = np.asarray(probs, np.float64)
  if p.ndim != 2 or len(p) < splits or splits < 1:
    raise ValueError(f"probs must be [N, K] with N >= splits = {splits}; got shape {p.shape}")
  if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1, atol=1e-3):
    raise ValueError("probs must be class probabilities: non-negative rows that sum to 1")
  scores = []
  for part in np.array_split(p, splits):
    marginal = part.mean(axis=0, keepdims=True)
    kl = np.sum(part * (np.log(np.clip(part, 1e-30, None)) - np.log(np.clip(marginal, 1e-30, None))),
                axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))
