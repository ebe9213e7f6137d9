"""A deterministic, resumable, process-sharded batch loader over a random-access source: a Grain
pipeline whose elements are whole batches, read by threads or worker processes.

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
import logging
import signal
from collections.abc import Iterator

import numpy as np

from diffusion.dataspec import DataSpec

log = logging.getLogger(__name__)


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


ON_ERROR = ("raise", "skip")


def config_options(config) -> dict:
  """The `Loader` keywords a config's `data` section sets: augmentations, workers, on_error."""
  data = config.data
  return {"random_flip": data.get("random_flip", False),
          "random_rotation": data.get("random_rotation", False),
          "num_workers": data.get("num_workers", 0), "on_error": data.get("on_error", "raise")}


class Examples:
  """Stream sample number -> example: the per-example transform the loader's workers run
  (picklable: it holds the source and the settings, nothing else).

  Augmentations (the data kind's, see `DataSpec`): `random_flip` mirrors x
  (and cond) along the last spatial axis (left-right for images);
  `random_rotation` rotates point sets [N, d] about the origin. An example the
  source cannot read (a broken file) raises, or with on_error="skip" is
  replaced by the next readable one of the epoch's order and reported in
  "errors".
  """

  def __init__(self, source, seed: int, *, random_flip: bool = False,
               random_rotation: bool = False, spec: DataSpec | None = None,
               on_error: str = "raise"):
    if on_error not in ON_ERROR:
      raise ValueError(f"config.data.on_error must be one of {ON_ERROR}; got {on_error!r}")
    self.source, self.seed, self.spec, self.on_error = source, seed, spec, on_error
    self.random_flip, self.random_rotation = random_flip, random_rotation
    self._epochs = collections.OrderedDict()

  def __getstate__(self):
    return {**self.__dict__, "_epochs": collections.OrderedDict()}

  def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The permutation and flip coins of an epoch (a few recent ones are cached)."""
    if epoch not in self._epochs:
      rng = np.random.default_rng([self.seed, epoch])
      n = len(self.source)
      self._epochs[epoch] = (rng.permutation(n), rng.integers(0, 2, n).astype(bool))
      while len(self._epochs) > 3:
        self._epochs.popitem(last=False)
    return self._epochs[epoch]

  def _read(self, perm: np.ndarray, within: int) -> tuple[dict, int, list[str]]:
    """(example, its index, the errors passed over) at `within` of an epoch's order."""
    errors = []
    for attempt in range(len(perm)):
      index = int(perm[(within + attempt) % len(perm)])
      try:
        return self.source[index], index, errors
      except Exception as e:  # noqa: BLE001 (the source's own error names the file)
        if self.on_error == "raise":
          raise
        errors.append(f"example {index}: {type(e).__name__}: {e}")
    raise ValueError(f"no example of the data can be read ({errors[0]})")

  def __call__(self, sample: int) -> dict:
    """Stream sample number `sample`: {"x", "label"[, "cond"], "errors"}, augmented."""
    epoch, within = divmod(int(sample), len(self.source))
    perm, flips = self._epoch(epoch)
    example, index, errors = self._read(perm, within)
    if self.spec is not None:
      example = check_example(example, index, self.spec)
    if self.random_flip and flips[within]:
      example = {k: np.flip(v, axis=-2) if isinstance(v, np.ndarray) else v
                 for k, v in example.items()}
    if self.random_rotation:
      rotation = random_rotation(np.random.default_rng([self.seed, epoch, within, 1]),
                                 example["x"].shape[-1]).astype(np.float32)
      example = {**example, "x": example["x"] @ rotation.T}
    return {**example, "errors": errors}

  def batch(self, samples: np.ndarray) -> dict:
    """Stream samples `samples` (int [n]) as one batch {"x" [n, ...], "label" int32 [n][,
    "cond"], "errors": list of str}: example by example, or for a source with
    `read_batch(indices)` (arrays in memory, ArrayRecord) in one read and vectorised
    augmentations; both give the same batch."""
    read_batch = getattr(self.source, "read_batch", None)
    if read_batch is not None and self.spec is not None and not self.random_rotation:
      epochs, within = np.divmod(np.asarray(samples, np.int64), len(self.source))
      index, flip = np.empty_like(within), np.empty(len(within), bool)
      for epoch in np.unique(epochs):  # a batch spans one epoch, or two at an epoch's end
        rows = epochs == epoch
        perm, flips = self._epoch(int(epoch))
        index[rows], flip[rows] = perm[within[rows]], flips[within[rows]]
      try:
        batch = read_batch(index)
      except Exception:  # noqa: BLE001 (read example by example: the error names the example)
        batch = None
      if batch is not None:
        x = np.asarray(batch["x"])
        if x.shape[1:] == self.spec.shape and (self.spec.dtype != "uint8" or x.dtype == np.uint8):
          out = {"x": x if self.spec.dtype == "uint8" else x.astype(np.float32),
                 "label": np.asarray(batch.get("label", np.zeros(len(x))), np.int32)}
          if batch.get("cond") is not None:
            out["cond"] = np.asarray(batch["cond"])
          if self.random_flip:
            for key in ("x", "cond"):
              if key in out:
                out[key] = out[key].copy()
                out[key][flip] = np.flip(out[key][flip], axis=-2)
          return {**out, "errors": []}
    return collate([self(s) for s in samples])


def collate(examples: list[dict]) -> dict:
  """Stacks examples into a batch {"x", "label" int32[, "cond"], "errors": list of str}."""
  batch = {"x": np.stack([e["x"] for e in examples]),
           "label": np.asarray([e.get("label", 0) for e in examples], np.int32),
           "errors": [error for e in examples for error in e.get("errors", ())]}
  if "cond" in examples[0]:
    batch["cond"] = np.stack([e["cond"] for e in examples])
  return batch


def _ignore_interrupts(index: int, count: int) -> None:
  """A loader worker's first act (Grain's `worker_init_fn`): ignore Ctrl-C.

  A terminal sends SIGINT to the whole process group, workers included. The
  parent owns the shutdown (the training loop saves, then `Loader.close` stops
  the workers, which then release the shared memory of the batches they hold);
  a worker that died of KeyboardInterrupt would print its traceback and leave
  its batch in flight to the resource tracker.
  """
  del index, count
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _out_of_shared_memory(batch: dict) -> dict:
  """`batch` with its arrays copied from Grain's shared memory into this process's own.

  With two or more workers Grain passes each batch in shared-memory blocks, each
  unlinked when the last array over it is deleted (on a thread of Grain's). On CPU
  `jax.device_put` keeps the NumPy array it is given, so the dispatches in flight
  held their blocks until the interpreter's exit, too late to be unlinked, and the
  resource tracker reported them leaked. The copy (one memcpy per batch) releases
  each block as soon as its batch is read.
  """
  return {k: np.array(v) if isinstance(v, np.ndarray) and type(v) is not np.ndarray else v
          for k, v in batch.items()}


class Loader:
  """Batches {"x": [B/P, *shape], "label": int32 [B/P]} from a source, and "cond" when the
  source gives conditioning inputs: a Grain pipeline over the stream's sample numbers.

  The examples are read and transformed (`Examples`) by `num_threads`
  threads, or with `num_workers` > 0 by that many worker processes (Grain's
  `mp_prefetch`; the source must then be picklable), `prefetch` batches
  ahead. Neither changes the stream. Examples skipped for errors
  (on_error="skip") are logged with their file and counted in `skipped`.
  """

  def __init__(self, source, global_batch: int, seed: int, *, random_flip: bool = False,
               random_rotation: bool = False, spec: DataSpec | None = None,
               process_index: int = 0, process_count: int = 1, num_threads: int = 8,
               num_workers: int = 0, prefetch: int = 2, on_error: str = "raise"):
    if global_batch % process_count:
      raise ValueError(f"config.train.batch_size {global_batch} must be divisible by the "
                       f"number of processes {process_count}")
    if num_workers < 0:
      raise ValueError(f"config.data.num_workers must be >= 0; got {num_workers}")
    self.examples = Examples(source, seed, random_flip=random_flip,
                             random_rotation=random_rotation, spec=spec, on_error=on_error)
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.offset = process_index * self.local_batch
    self.num_threads, self.num_workers, self.prefetch = num_threads, num_workers, prefetch
    self.skipped = 0
    self._iterators = []

  def example(self, sample: int) -> dict:
    """Stream sample number `sample`: {"x", "label"[, "cond"]}, augmented."""
    example = self.examples(sample)
    example.pop("errors")
    return example

  def dataset(self, start: int = 0, count: int = 2 ** 40):
    """The Grain IterDataset of this process's part of `count` global batches from stream
    position `start` on: row i of its batch n is stream sample start + n B + p b + i, b = B / P
    its rows per batch. Each element is a whole batch (`Examples.batch`): the threads and
    worker processes read batches side by side, with Python's cost per batch, not per
    example."""
    import grain
    from absl import flags
    if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags (their defaults here)
      flags.FLAGS.mark_as_parsed()
    b, local, offset = self.global_batch, self.local_batch, start + self.offset
    rows = np.arange(local)
    examples = self.examples
    batches = grain.MapDataset.range(0, count).map(
        lambda n: examples.batch(n * b + offset + rows))
    # An element is a whole batch, so no more threads than batches in flight can work at once.
    ds = batches.to_iter_dataset(grain.ReadOptions(
        num_threads=min(self.num_threads, self.prefetch), prefetch_buffer_size=self.prefetch))
    if self.num_workers:
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers,
                                                       per_worker_buffer_size=self.prefetch),
                          worker_init_fn=_ignore_interrupts)
    return ds

  def batches(self, start: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """This process's part of the global batches from stream position `start` on."""
    iterator = iter(self.dataset(start))
    self._iterators.append(iterator)
    for batch in iterator:
      batch = _out_of_shared_memory(batch)
      errors = batch.pop("errors")
      for error in errors:
        log.warning("skipped an unreadable example (config.data.on_error='skip'): %s", error)
      self.skipped += len(errors)
      yield batch

  def close(self) -> None:
    """Stops the readers: joins the worker processes, which release the shared memory of
    the batches they hold."""
    for iterator in self._iterators:
      close = getattr(iterator, "close", None)
      if close is not None:
        close()
    self._iterators = []
