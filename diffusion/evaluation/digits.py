"""Sample quality on the built-in digits, offline and on a CPU: digits-FID, digits-IS, digits-KID.

The FID literature's Inception-v3 has never seen 8×8 grey digits. The project
instead trains a small convolutional classifier on the digits' train split
(deterministically, once: about half a minute on a CPU, then cached) and uses
its 64 penultimate features for the Fréchet and kernel distances and its class
probabilities for the Inception Score:

  evaluator = DigitsEvaluator.load()      # trains and caches on first use
  digits_metrics(samples_uint8, evaluator)  # {"fid": ..., "is": ..., "kid": ...}

The reference statistics are those of the train split (1,500 images). The
held-out test split (297) scores what fresh digits from the data distribution
score with as many samples (`digits_metrics(DigitsSource(split="test").images)`);
a model that reproduces its training images can score lower still, so look at
the samples too.
"""

import dataclasses
import os
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from diffusion.evaluation.frechet import (
    fid_from_features, inception_score, kernel_inception_distance, score_splits, statistics)
from diffusion.evaluation.manifold import precision_recall
from diffusion.paths import cache_dir

VERSION = 1  # bump when the network or its training changes: old caches are then retrained
IMAGE_SHAPE = (8, 8, 1)


class DigitClassifier(nn.Module):
  """A small CNN for 8×8 grey digits: images [B, 8, 8, 1] in [-1, 1] → (logits [B, 10], features [B, 64])."""
  features: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.relu(nn.Conv(64, (3, 3), strides=(2, 2))(x))
    x = nn.relu(nn.Conv(64, (3, 3))(x))
    features = nn.relu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(features), features


def _shifted(images: np.ndarray) -> np.ndarray:
  """The 9 translations by -1, 0, +1 pixels of uint8 images [N, 8, 8, 1] → [9, N, 8, 8, 1]."""
  padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return np.stack([padded[:, 1 + dy:9 + dy, 1 + dx:9 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def _to_input(images) -> jax.Array:
  return jnp.asarray(images, jnp.float32) / 127.5 - 1


def train_classifier(*, seed: int = 0, epochs: int = 40, batch_size: int = 100):
  """Trains DigitClassifier on the digits' train split with shifts of ±1 pixel, on the CPU and
  deterministically (the same parameters on a given machine and JAX version; other CPUs may differ
  in the last bits). Returns (params, accuracy on the test split)."""
  from diffusion.data import DigitsSource
  train, test = DigitsSource(split="train"), DigitsSource(split="test")
  model = DigitClassifier()
  cpu = jax.devices("cpu")[0]
  with jax.default_device(cpu):
    params = jax.jit(model.init)(jax.random.key(seed), _to_input(train.images[:1]))["params"]
    optimizer = optax.adamw(1e-3, weight_decay=1e-4)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, images, labels):
      def loss(params):
        logits, _ = model.apply({"params": params}, _to_input(images))
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      grads = jax.grad(loss)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    shifted = _shifted(train.images)
    rng = np.random.default_rng(seed)
    n = len(train) - len(train) % batch_size
    for _ in range(epochs):
      order, shift = rng.permutation(len(train)), rng.integers(0, 9, len(train))
      for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        params, opt_state = step(params, opt_state, shifted[shift[index], index],
                                 train.labels[index])
    logits, _ = jax.jit(model.apply)({"params": params}, _to_input(test.images))
    accuracy = float(np.mean(np.argmax(np.asarray(logits), axis=1) == test.labels))
  return jax.device_get(params), accuracy


# One jitted function for every evaluator and call: it compiles once per batch shape.
_classify = jax.jit(lambda params, x: DigitClassifier().apply({"params": params}, _to_input(x)))


@dataclasses.dataclass
class DigitsEvaluator:
  """A trained DigitClassifier: `features`, `probs` and the reference statistics of a split."""
  params: dict
  test_accuracy: float
  _reference: dict = dataclasses.field(default_factory=dict, repr=False)  # split -> features

  @classmethod
  def load(cls, directory: str | None = None) -> "DigitsEvaluator":
    """The classifier cached in `directory` (default `cache_dir()`), trained and saved there first
    if it is missing or stale."""
    path = os.path.join(directory or cache_dir(), f"digits-classifier-v{VERSION}.npz")
    expected = jax.eval_shape(DigitClassifier().init, jax.random.key(0),
                              jnp.zeros((1, *IMAGE_SHAPE)))["params"]
    expected = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(expected).items()}
    if os.path.isfile(path):
      with np.load(path) as data:
        flat = {k: data[k] for k in data.files if k != "test_accuracy"}
        if {k: v.shape for k, v in flat.items()} == expected:
          params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
          return cls(params, float(data["test_accuracy"]))
    params, accuracy = train_classifier()
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Written beside the target and renamed: a reader never sees half a file.
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=os.path.dirname(path))
    with os.fdopen(fd, "wb") as f:
      np.savez(f, test_accuracy=accuracy, **flat)
    os.replace(tmp, path)
    return cls(params, accuracy)

  def _apply(self, images, name: str, batch_size: int = 512):
    images = check_images(images, name)
    logits, features = [], []
    for start in range(0, len(images), batch_size):
      chunk = images[start:start + batch_size]
      n = len(chunk)
      if len(images) > batch_size:  # the last batch padded: one compiled shape
        chunk = np.concatenate([chunk, np.zeros((batch_size - n, *IMAGE_SHAPE), np.uint8)])
      lo, fe = _classify(self.params, chunk)
      logits.append(np.asarray(lo, np.float64)[:n])
      features.append(np.asarray(fe, np.float64)[:n])
    return np.concatenate(logits), np.concatenate(features)

  def features(self, images, name: str = "images") -> np.ndarray:
    """Penultimate features float64 [N, 64] of uint8 digits [N, 8, 8, 1]."""
    return self._apply(images, name)[1]

  def probs(self, images, name: str = "images") -> np.ndarray:
    """Class probabilities float64 [N, 10] of uint8 digits [N, 8, 8, 1]."""
    return _softmax(self._apply(images, name)[0])

  def reference_features(self, split: str = "train") -> np.ndarray:
    """Features of a digits split, computed once per evaluator."""
    if split not in self._reference:
      from diffusion.data import DigitsSource
      self._reference[split] = self.features(DigitsSource(split=split).images, "reference")
    return self._reference[split]

  def reference_statistics(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the features of a digits split."""
    return statistics(self.reference_features(split))


def _softmax(logits: np.ndarray) -> np.ndarray:
  """float64 softmax over the last axis."""
  z = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def check_images(images, name: str = "images") -> np.ndarray:
  """uint8 digits [N, 8, 8, 1] (the format `ddpm sample` writes), else a ValueError naming `name`."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"{name} must be uint8 images (0..255, as `ddpm sample` writes); got {images.dtype}")
  if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE or len(images) < 2:
    raise ValueError(f"{name} must be digits of shape [N, 8, 8, 1] (the digits measures work at "
                     f"the digits' own resolution); got {images.shape}")
  return images


def digits_metrics(samples, evaluator: DigitsEvaluator | None = None, *,
                   reference: str = "train", kid_subsets: int = 100) -> dict[str, float]:
  """digits-FID, digits-KID and digits-IS of uint8 samples [N, 8, 8, 1] against a digits split.

  Returns {"fid", "kid", "kid_std", "is", "is_std", "precision", "recall", "num_samples"};
  the IS uses 10 parts, or fewer of at least 50 samples each for fewer than 500 samples;
  precision and recall (`manifold.precision_recall`, k = 3) are on the classifier's features.
  """
  samples = check_images(samples, "samples")
  evaluator = evaluator or DigitsEvaluator.load()
  logits, features = evaluator._apply(samples, "samples")
  reference_features = evaluator.reference_features(reference)
  kid, kid_std = kernel_inception_distance(features, reference_features, subsets=kid_subsets)
  score, score_std = inception_score(_softmax(logits), splits=score_splits(len(samples)))
  return {"fid": fid_from_features(features, reference_features), "kid": kid, "kid_std": kid_std,
          "is": score, "is_std": score_std,
          **precision_recall(reference_features, features), "num_samples": len(samples)}

