"""A deterministic, resumable, process-sharded batch loader over a random-access source.

The training stream is a pure function of (seed, sample position): sample s
of the stream is example perm_e[s mod N] of epoch e = s // N, perm_e a
permutation seeded by (seed, e), flipped left-right by a coin seeded the same
way. Global batch n holds stream samples [n B, (n + 1) B); process p of P
reads rows [p B/P, (p + 1) B/P) of it. So the stream does not depend on the
number of processes or devices, and the position to checkpoint is one
integer, the number of samples consumed.
"""

import collections
import concurrent.futures
from collections.abc import Iterator

import numpy as np


class Loader:
  """Batches {"image": uint8 [B/P, H, W, C], "label": int32 [B/P]} from a source, and
  "cond" (uint8) when the source gives conditioning images."""

  def __init__(self, source, global_batch: int, seed: int, *, random_flip: bool,
               process_index: int = 0, process_count: int = 1, num_threads: int = 8,
               prefetch: int = 2):
    if global_batch % process_count:
      raise ValueError(f"config.train.batch_size {global_batch} must be divisible by the "
                       f"number of processes {process_count}")
    self.source, self.global_batch, self.seed = source, global_batch, seed
    self.random_flip = random_flip
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

  def example(self, sample: int) -> tuple:
    """Stream sample number `sample`: (uint8 image, label[, uint8 conditioning image])."""
    epoch, within = divmod(sample, len(self.source))
    perm, flips = self._epoch(epoch)
    example = self.source[int(perm[within])]
    if self.random_flip and flips[within]:
      example = tuple(a[:, ::-1] if isinstance(a, np.ndarray) else a for a in example)
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
      batch = {"image": np.stack([e[0] for e in examples]),
               "label": np.asarray([e[1] for e in examples], np.int32)}
      if len(examples[0]) > 2:
        batch["cond"] = np.stack([e[2] for e in examples])
      yield batch

  def close(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)
