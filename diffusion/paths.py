"""Every file the library reads or writes goes through `etils.epath`: local paths and object
stores (`gs://`, `s3://`, `az://`) alike.

`resolve` turns a user's path into an `epath.Path`, refusing a scheme that no
installed backend serves before anything is written (a `gs://` path must
never become a local folder named `gs:`), and a bucket that its store does not
serve (`buckets.check`). Object stores have no append and no rename of folders;
`Appender` keeps a growing file (metrics, TensorBoard events) on either kind of
storage, and the helpers below write whole files in one request.
"""

import errno
import importlib.util
import io
import os
import tempfile
import threading
import time
from typing import Any

import numpy as np
from etils import epath

from diffusion import buckets
from diffusion.buckets import BACKENDS


def cache_dir() -> str:
  """Where the library keeps what it can rebuild (the digits classifier, compiled programs):
  $DDPM_CACHE_DIR, else ~/.cache/ddpm-jax."""
  return os.environ.get("DDPM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "ddpm-jax")


def is_remote(path: str | os.PathLike) -> bool:
  """True for an object-store URI such as gs://bucket/run."""
  return "://" in os.fspath(path)


def resolve(path: str | os.PathLike, argument: str = "path") -> epath.Path:
  """`path` as an epath.Path: a local path made absolute, or an object-store URI whose backend
  is installed and whose bucket answers. Otherwise a ValueError naming `argument` and what to
  install or mend."""
  text = os.fspath(path)
  if not is_remote(text):
    return epath.Path(os.path.abspath(os.path.expanduser(text)))
  scheme = text.split("://", 1)[0]
  if scheme not in BACKENDS:
    raise ValueError(f"{argument} {text!r}: no storage backend serves {scheme}:// (known: "
                     f"{', '.join(s + '://' for s in BACKENDS)}, or a local path)")
  package = BACKENDS[scheme]
  if importlib.util.find_spec(package) is None and importlib.util.find_spec("tensorflow") is None:
    raise ValueError(f"{argument} {text!r}: reading and writing {scheme}:// needs the {package} "
                     f"package (pip install {package})")
  cause = buckets.check(text)
  if cause:
    raise ValueError(f"{argument} {text!r}: {cause}")
  return epath.Path(text)


def check_output(path: str | os.PathLike, argument: str, *, folder: bool = False) -> None:
  """Refuses, before any work, a local output that could not be written: a folder where a
  file goes, a file where a folder goes or on its way, a folder that takes no new file (read
  only, no permission: probed by writing, which root's permissions do not bypass). An object
  store's path is only resolved (its writes are checked when they happen)."""
  target = resolve(path, argument)
  if is_remote(target):
    return
  text, local = os.fspath(path), os.fspath(target)
  if os.path.isdir(local) and not folder:
    raise ValueError(f"{argument} {text!r} is a folder; give a file name")
  if os.path.exists(local) and not os.path.isdir(local) and folder:
    raise ValueError(f"{argument} {text!r} is a file, not a folder")
  existing = local if folder and os.path.isdir(local) else os.path.dirname(local)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f"{argument} {text!r}: {existing!r} is a file, not a folder")
  try:
    descriptor, probe = tempfile.mkstemp(prefix=".ddpm-write-probe-", dir=existing)
  except OSError as e:
    raise ValueError(f"{argument} {text!r}: the folder {existing!r} takes no new file "
                     f"({e.strerror or e})") from None
  os.close(descriptor)
  os.remove(probe)


def check_input(path: str | os.PathLike, argument: str) -> None:
  """Refuses, before any work, a local input path that does not exist."""
  target = resolve(path, argument)
  if not is_remote(target) and not os.path.exists(target):
    raise FileNotFoundError(f"{argument} {os.fspath(path)!r} does not exist")


def check_distinct(written: list[tuple[str, str]], inputs: list[tuple[str, str]]) -> None:
  """Refuses, before any work, a file to be written (`written`: (what, path) pairs, e.g. an
  output and the preview beside it) that is one of the `inputs` ((argument, path) pairs) or
  another of `written`: it would overwrite the user's data or its own output. Local paths are
  compared after resolving links, object-store URIs as given."""
  key = lambda path: os.fspath(path) if is_remote(path) else os.path.realpath(
      os.path.expanduser(os.fspath(path)))
  read = {key(path): argument for argument, path in inputs if path is not None}
  seen: dict[str, str] = {}
  for what, path in written:
    if key(path) in read:
      raise ValueError(f"{what} {os.fspath(path)!r} is the input {read[key(path)]}: writing it "
                       "would overwrite it; choose another `out`")
    if key(path) in seen:
      raise ValueError(f"{what} and {seen[key(path)]} would both be {os.fspath(path)!r}; "
                       "choose another `out`")
    seen[key(path)] = what


def write_bytes(path: epath.Path, data: bytes) -> None:
  """Writes a whole file, creating its folder: in one request on an object store, through a
  temporary file and a rename on a local disk, so that a reader never sees half of it."""
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    path.write_bytes(data)
    return
  temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    temporary.write_bytes(data)
    os.replace(temporary, path)
  except OSError as e:  # e.g. a full disk: no half-written file is left, and the file is named
    if os.path.exists(temporary):
      os.unlink(temporary)
    raise type(e)(e.errno, e.strerror or str(e), os.fspath(path)) from None


def read_bytes(path: epath.Path, argument: str = "path") -> bytes:
  if not path.exists():
    raise FileNotFoundError(f"{argument} {os.fspath(path)!r} does not exist")
  return path.read_bytes()


def save_npz(path: epath.Path, **arrays: Any) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_bytes(path, buffer.getvalue())


def load_npz(path: epath.Path, argument: str = "path") -> dict[str, np.ndarray]:
  """The arrays of an .npz file, or a ValueError naming `argument` for anything else."""
  data = read_bytes(path, argument)
  if not data.startswith((b"PK", b"\x93NUMPY")):  # a zip archive (.npz) or an .npy array
    raise ValueError(f"{argument} {os.fspath(path)!r} is no .npz archive (nor an .npy array): "
                     "write it with numpy.savez")
  try:
    archive = np.load(io.BytesIO(data), allow_pickle=False)
  except Exception as e:  # zipfile, pickle and format errors of a broken file
    raise ValueError(f"{argument} {os.fspath(path)!r} cannot be read as .npz: {e}") from None
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise ValueError(f"{argument} {os.fspath(path)!r} is a single .npy array, not an .npz archive")
  with archive:
    try:
      return {name: archive[name] for name in archive.files}
    except Exception as e:  # a damaged member
      raise ValueError(f"{argument} {os.fspath(path)!r} cannot be read as .npz: {e}") from None


def files_under(folder: epath.Path) -> list[epath.Path]:
  """Every file under `folder`, recursively, sorted (object stores have no recursive glob)."""
  found = []
  for child in folder.iterdir():
    found.extend(files_under(child) if child.is_dir() else [child])
  return sorted(found)


def move_tree(source: epath.Path, target: epath.Path) -> None:
  """Moves a folder: one rename on a local disk; on an object store, which has no folders to
  rename, a copy of every file followed by the removal of the source."""
  target.parent.mkdir(parents=True, exist_ok=True)
  if not is_remote(source):
    os.replace(source, target)
    return
  for file in files_under(source):
    destination = target / os.fspath(file)[len(os.fspath(source)):].lstrip("/")
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(file.read_bytes())
  source.rmtree()


class Appender:
  """A file that grows by appended bytes: opened for appending on a local disk; on an object
  store (which cannot append) its whole content is uploaded again, at most every
  `flush_seconds` and on `close`. A file that reaches `rotate_bytes` on an object store is
  closed and continued in `name.1`, `name.2`, ... so that no upload grows without bound."""

  def __init__(self, path: epath.Path, *, flush_seconds: float = 30.0,
               rotate_bytes: int | None = None):
    self.path, self.flush_seconds, self.rotate_bytes = path, flush_seconds, rotate_bytes
    self._lock = threading.Lock()
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):
      self._file = None
      self._content = bytearray(path.read_bytes() if path.exists() else b"")
      self._parts, self._uploaded = 0, time.monotonic()
    else:
      self._file = open(path, "ab")

  def write(self, data: bytes) -> None:
    with self._lock:
      if self._file is not None:
        self._file.write(data)
        self._file.flush()
        return
      self._content += data
      if self.rotate_bytes and len(self._content) >= self.rotate_bytes:
        self._upload()
        self._parts += 1
        self._content = bytearray()
      elif time.monotonic() - self._uploaded >= self.flush_seconds:
        self._upload()

  def _current(self) -> epath.Path:
    return self.path if not self._parts else self.path.with_name(f"{self.path.name}.{self._parts}")

  def _upload(self) -> None:
    self._current().write_bytes(bytes(self._content))
    self._uploaded = time.monotonic()

  def flush(self) -> None:
    with self._lock:
      if self._file is None and self._content:
        self._upload()

  def close(self) -> None:
    self.flush()
    if self._file is not None:
      self._file.close()


class StorageFull(OSError):
  """The storage a run writes to is full; what was written before stays usable."""


def first_line(error: BaseException, limit: int = 200) -> str:
  """The first line of an error's message (TensorStore's run to many lines), shortened."""
  lines = str(error).strip().splitlines()
  return (lines[0] if lines else type(error).__name__)[:limit]


def is_disk_full(error: BaseException) -> bool:
  """True if `error`, or an error it was raised from, says the storage is full: ENOSPC, or
  TensorStore's RESOURCE_EXHAUSTED with "No space left on device"."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    text = str(error)
    if "No space left on device" in text or "Disk quota exceeded" in text or (
        "RESOURCE_EXHAUSTED" in text and "os_error_code='28'" in text):
      return True
    nested = getattr(error, "exceptions", None)  # an ExceptionGroup
    if nested and any(is_disk_full(e) for e in nested):
      return True
    error = error.__cause__ or error.__context__
  return False
