"""A deterministic, resumable, process-sharded batch loader over a random-access source.

A source is anything with `len(source)` and `source[i]` -> {"x": NumPy array
of the data's shape, "label": int (optional), "cond": array (optional)}.

The training stream is a pure function of (seed, sample position): sample s
of the stream is example perm_e[s mod N] of epoch e = s // N, perm_e a
permutation seeded by (seed, e), augmented by draws seeded the same way (a
flip coin per example of the epoch; a rotation seeded by (seed, e, s mod N)).
Global batch n holds stream samples [n B, (n + 1) B); process p of P reads
rows [p B/P, (p + 1) B/P) of it. So the stream does not depend on the number
of processes or devices, and the position to checkpoint is one integer, the
number of samples consumed.
"""

import collections
import concurrent.futures
from collections.abc import Iterator

import numpy as np

from diffusion.dataspec import DataSpec


def random_rotation(rng: np.random.Generator, dims: int = 3) -> np.ndarray:
  """A rotation matrix [dims, dims] drawn uniformly (Haar) from SO(dims)."""
  q, r = np.linalg.qr(rng.normal(size=(dims, dims)))
  q = q * np.sign(np.diag(r))
  if np.linalg.det(q) < 0:
    q[:, 0] = -q[:, 0]
  return q


def check_example(example, index: int, spec: DataSpec) -> dict:
  """`source[index]` as {"x", "label"[, "cond"]}, or a ValueError that says what is wrong."""
  if not isinstance(example, dict) or "x" not in example:
    raise ValueError(f"source[{index}] must be a dict with an 'x' array (and optionally "
                     f"'label' and 'cond'); got {type(example).__name__}")
  x = np.asarray(example["x"])
  if x.shape != spec.shape:
    raise ValueError(f"source[{index}]['x'] has shape {x.shape}; config.data.shape is "
                     f"{spec.shape}")
  if spec.dtype == "uint8" and x.dtype != np.uint8:
    raise ValueError(f"source[{index}]['x'] has dtype {x.dtype}; config.data.dtype is uint8 "
                     "(set config.data.dtype = 'float32' for float data)")
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise ValueError(f"source[{index}]['x'] has dtype {x.dtype}, not a number")
  out = {"x": x if spec.dtype == "uint8" else x.astype(np.float32),
         "label": int(example.get("label", 0))}
  if example.get("cond") is not None:
    out["cond"] = np.asarray(example["cond"])
  return out


class Loader:
  """Batches {"x": [B/P, *shape], "label": int32 [B/P]} from a source, and "cond" when the
  source gives conditioning inputs.

  Augmentations (the data kind's, see `DataSpec`): `random_flip` mirrors x
  (and cond) along the last spatial axis (left-right for images);
  `random_rotation` rotates point sets [N, d] about the origin.
  """

  def __init__(self, source, global_batch: int, seed: int, *, random_flip: bool = False,
               random_rotation: bool = False, spec: DataSpec | None = None,
               process_index: int = 0, process_count: int = 1, num_threads: int = 8,
               prefetch: int = 2):
    if global_batch % process_count:
      raise ValueError(f"config.train.batch_size {global_batch} must be divisible by the "
                       f"number of processes {process_count}")
    self.source, self.global_batch, self.seed = source, global_batch, seed
    self.random_flip, self.random_rotation = random_flip, random_rotation
    self.spec = spec
    self.local_batch = global_batch // process_count
    self.offset = process_index * self.local_batch
    self.prefetch = prefetch
    self._pool = concurrent.futures.ThreadPoolExecutor(num_threads)
    self._epochs = collections.OrderedDict()

  def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The permutation and flip coins of an epoch (a few recent ones are cached)."""
    if epoch not in self._epochs:
      rng = np.random.default_rng([self.seed, epoch])
      n = len(self.source)
      self._epochs[epoch] = (rng.permutation(n), rng.integers(0, 2, n).astype(bool))
      while len(self._epochs) > 3:
        self._epochs.popitem(last=False)
    return self._epochs[epoch]

  def example(self, sample: int) -> dict:
    """Stream sample number `sample`: {"x", "label"[, "cond"]}, augmented."""
    epoch, within = divmod(sample, len(self.source))
    perm, flips = self._epoch(epoch)
    index = int(perm[within])
    example = self.source[index]
    if self.spec is not None:
      example = check_example(example, index, self.spec)
    if self.random_flip and flips[within]:
      example = {k: np.flip(v, axis=-2) if isinstance(v, np.ndarray) else v
                 for k, v in example.items()}
    if self.random_rotation:
      rotation = random_rotation(np.random.default_rng([self.seed, epoch, within, 1]),
                                 example["x"].shape[-1]).astype(np.float32)
      example = {**example, "x": example["x"] @ rotation.T}
    return example

  def _submit(self, start: int) -> list[concurrent.futures.Future]:
    first = start + self.offset
    return [self._pool.submit(self.example, s) for s in range(first, first + self.local_batch)]

  def batches(self, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's part of the global batches from stream position `start` on."""
    pending = collections.deque()
    position = start
    while True:
      while len(pending) < self.prefetch:
        pending.append(self._submit(position + len(pending) * self.global_batch))
      examples = [f.result() for f in pending.popleft()]
      position += self.global_batch
      batch = {"x": np.stack([e["x"] for e in examples]),
               "label": np.asarray([e.get("label", 0) for e in examples], np.int32)}
      if "cond" in examples[0]:
        batch["cond"] = np.stack([e["cond"] for e in examples])
      yield batch

  def close(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)
