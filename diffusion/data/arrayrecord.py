"""A dataset as ArrayRecord shards: written once by `ddpm prepare-data`, read as a random-access
source (an ArrayRecord reader per shard; a batch costs one read call per shard).

Any source of the library (an image folder, a TFDS split, NumPy arrays, the
digits, the synthetic sets) is written as it comes out of the source: images
already resized and cropped to the config's shape, in their own dtype. A
record is the example's raw bytes: label (int64, little-endian), x, then cond
if any; `dataset.json` beside the shards holds their shapes and dtypes, the
classes and each shard's record count and size. So reading an example is one
seek and a `np.frombuffer`: no file to open, nothing to decode or resize
(see docs/benchmarks.md for the speed against the folder it came from).
`dataset.json` is written last: a preparation that stopped midway is not a
dataset. A missing, truncated or damaged shard is named when the source is
opened, before training.
"""

import json
import os

import numpy as np
import tqdm
from etils import epath

from diffusion import paths

FORMAT = "ddpm-arrayrecord-1"
META = "dataset.json"


def _size(file: epath.Path) -> int:
  stat = file.stat()
  return getattr(stat, "length", None) or getattr(stat, "st_size", 0)


def _fields(example: dict) -> dict:
  fields = {"x": np.asarray(example["x"])}
  if example.get("cond") is not None:
    fields["cond"] = np.asarray(example["cond"])
  return fields


def write(source, out: str, *, shards: int = 8, progress: bool = True) -> dict:
  """Writes every example of `source` to `shards` ArrayRecord files under the local folder
  `out` (created; it must not hold a dataset already); returns the metadata written to
  `out/dataset.json`. Example i goes to shard i * shards // len(source), in order. A write
  that fails (a full disk: `paths.StorageFull`) removes the shards written so far."""
  folder = paths.resolve(out, "`out`")
  if paths.is_remote(folder):
    raise ValueError(f"`out` {out!r}: ArrayRecord shards are written to a local folder (copy "
                     "them to the bucket afterwards)")
  if (folder / META).exists():
    raise ValueError(f"`out` {out!r} holds a dataset already ({META}): choose another folder")
  n = len(source)
  if not 1 <= shards <= n:
    raise ValueError(f"`shards` must be between 1 and the {n} examples; got {shards}")
  created = not folder.exists()
  folder.mkdir(parents=True, exist_ok=True)
  first = _fields(source[0])
  layout = {name: {"shape": list(a.shape), "dtype": a.dtype.str} for name, a in first.items()}
  bounds = [i * n // shards for i in range(shards + 1)]
  names = [f"data-{i:05d}-of-{shards:05d}.array_record" for i in range(shards)]
  bar = tqdm.tqdm(total=n, unit="ex", desc="prepare-data", disable=not progress)
  try:
    for shard, name in enumerate(names):
      _write_shard(source, folder / name, range(bounds[shard], bounds[shard + 1]), layout, bar)
    meta = {"format": FORMAT, "count": n, "num_classes": int(getattr(source, "num_classes", 0)),
            "fields": layout,
            "shards": [{"file": name, "count": bounds[i + 1] - bounds[i],
                        "bytes": _size(folder / name)} for i, name in enumerate(names)]}
    paths.write_bytes(folder / META, json.dumps(meta, indent=1).encode())
  except BaseException as e:  # no partial shard is left behind: a preparation is whole or absent
    for name in names:
      (folder / name).unlink(missing_ok=True)
    if created and not any(folder.iterdir()):
      folder.rmdir()
    if paths.is_disk_full(e):
      raise paths.StorageFull(f"`out` {out!r}: the disk is full ({paths.first_line(e)}); the "
                              "partial shards were removed") from None
    raise
  finally:
    bar.close()
  return meta


def _write_shard(source, file: epath.Path, indices: range, layout: dict, bar) -> None:
  """Examples `indices` of `source` as the records of one ArrayRecord file."""
  from array_record.python.array_record_module import ArrayRecordWriter
  # One record a chunk, uncompressed: a random read is one seek, with nothing to inflate.
  writer = ArrayRecordWriter(os.fspath(file), "group_size:1,uncompressed")
  try:
    for i in indices:
      example = source[i]
      fields = _fields(example)
      for field, spec in layout.items():
        a = fields.get(field)
        if a is None or list(a.shape) != spec["shape"] or a.dtype.str != spec["dtype"]:
          raise ValueError(f"example {i}: {field} is {None if a is None else (a.shape, a.dtype)}"
                           f"; example 0's is {tuple(spec['shape'])} {spec['dtype']}")
      label = np.int64(example.get("label", 0)).astype("<i8").tobytes()
      writer.write(label + b"".join(np.ascontiguousarray(fields[f]).tobytes() for f in layout))
      bar.update()
  finally:
    writer.close()


class ArrayRecordSource:
  """The examples of a folder written by `write` (`ddpm prepare-data`): {"x", "label"[,
  "cond"]}. Every shard is checked when the source opens (present, of the size written,
  readable, of its record count), and a bad one is named in a one-line error."""

  def __init__(self, path: str):
    folder = paths.resolve(path, "config.data.path")
    if not (folder / META).exists():
      raise FileNotFoundError(f"config.data.path {path!r} holds no {META}: not a dataset "
                              "written by `ddpm prepare-data` (or its preparation stopped)")
    try:
      meta = json.loads((folder / META).read_text())
    except ValueError as e:
      raise ValueError(f"config.data.path {path!r}: {META} is not valid JSON ({e}): a damaged "
                       "file; run `ddpm prepare-data` again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
      raise ValueError(f"config.data.path {path!r}: {META} is not of format {FORMAT}")
    self.files = []
    for shard in meta["shards"]:
      file = folder / shard["file"]
      if not file.exists():
        raise FileNotFoundError(f"config.data.path {path!r}: shard {shard['file']} is missing")
      size = _size(file)
      if size != shard["bytes"]:
        raise ValueError(f"config.data.path {path!r}: shard {shard['file']} is damaged ({size} "
                         f"bytes; {shard['bytes']} were written)")
      try:
        count = _open(os.fspath(file)).num_records()
      except Exception as e:  # noqa: BLE001 (the reader's own error, named)
        raise ValueError(f"config.data.path {path!r}: shard {shard['file']} is damaged "
                         f"({paths.first_line(e)})") from None
      if count != shard["count"]:
        raise ValueError(f"config.data.path {path!r}: shard {shard['file']} is damaged (it "
                         f"holds {count} records; {shard['count']} were written)")
      self.files.append(os.fspath(file))
    self.starts = np.cumsum([0] + [shard["count"] for shard in meta["shards"]])
    self.num_classes = meta["num_classes"]
    self.fields = [(name, tuple(spec["shape"]), np.dtype(spec["dtype"]))
                   for name, spec in meta["fields"].items()]
    self._readers = {}

  def __getstate__(self):  # readers are opened again in each worker process
    return {**self.__dict__, "_readers": {}}

  def __len__(self) -> int:
    return int(self.starts[-1])

  def _records(self, indices) -> list[bytes]:
    """The records of `indices`, in their order: one read call per shard."""
    indices = np.asarray(indices, np.int64)
    if np.any((indices < 0) | (indices >= len(self))):
      raise IndexError(f"index out of range for {len(self)} examples")
    shards = np.searchsorted(self.starts, indices, side="right") - 1
    records = [b""] * len(indices)
    for shard in np.unique(shards):
      rows = np.flatnonzero(shards == shard)
      if shard not in self._readers:
        self._readers[shard] = _open(self.files[shard])
      read = self._readers[shard].read([int(i) for i in indices[rows] - self.starts[shard]])
      for row, record in zip(rows, read):
        records[row] = record
    return records

  def __getitem__(self, index: int) -> dict:
    return {k: v[0] if k != "label" else int(v[0])
            for k, v in self.read_batch([index]).items()}

  def read_batch(self, indices) -> dict:
    """The examples `indices` stacked ({"x" [n, ...], "label" [n][, "cond"]}), read at once."""
    records = self._records(indices)
    raw = np.frombuffer(b"".join(records), np.uint8).reshape(len(records), -1)
    batch = {"label": raw[:, :8].copy().view("<i8")[:, 0]}
    offset = 8
    for name, shape, dtype in self.fields:
      size = int(np.prod(shape)) * dtype.itemsize
      batch[name] = raw[:, offset:offset + size].copy().view(dtype).reshape(len(raw), *shape)
      offset += size
    return batch


def _open(file: str):
  from array_record.python.array_record_module import ArrayRecordReader
  return ArrayRecordReader(file, "readahead_buffer_size:0")
