"""Every file the library reads or writes goes through `etils.epath`: local paths and object
stores (`gs://`, `s3://`, `az://`) alike.

`resolve` turns a user's path into an `epath.Path`, refusing a scheme that no
installed backend serves before anything is written (a `gs://` path must
never become a local folder named `gs:`), and a bucket that its store does not
serve: no network, no credentials, no such bucket, in one line and seconds
rather than minutes of the client's retries. Object stores have no append and no
rename of folders; `Appender` keeps a growing file (metrics, TensorBoard
events) on either kind of storage, and the helpers below write whole files in
one request.
"""

import contextlib
import errno
import importlib.util
import io
import logging
import os
import socket
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import numpy as np
from etils import epath

# The packages etils.epath needs for each scheme (TensorFlow's gfile serves them too).
BACKENDS = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs"}
# How long the first use of a bucket may take to show that its store answers: a TCP connection
# to the store, then one request (gcsfs's own lookup of credentials alone takes 15 s on a
# machine outside Google Cloud that has none: it asks the metadata server five times).
CONNECT_SECONDS = 5.0
ANSWER_SECONDS = 30.0
# What to do when the store refuses the client, for each scheme.
LOGIN = {"gs": "gcloud auth application-default login, or set GOOGLE_APPLICATION_CREDENTIALS",
         "s3": "aws configure, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"}
# The loggers of the storage clients, silent while a bucket is probed: the probe's failures are
# the message, not the clients' tracebacks.
CLIENT_LOGGERS = ("gcsfs", "fsspec", "aiohttp", "asyncio", "google", "urllib3", "grpc", "s3fs",
                  "botocore", "aiobotocore", "adlfs", "azure")


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
  is installed. Otherwise a ValueError naming `argument` and what to install."""
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
  cause = check_bucket(text)
  if cause:
    raise ValueError(f"{argument} {text!r}: {cause}")
  return epath.Path(text)


# The (scheme, endpoint, bucket) that answered in this process: each is probed once.
_answered: set[tuple[str, str | None, str]] = set()
_probing = threading.Lock()


def check_bucket(uri: str) -> str | None:
  """Why the bucket of an object-store URI cannot be used, in a few words, or None. Probed once
  a process (resolve runs for every path, in loader workers too): without it a dead network
  costs minutes of the client's retries and hundreds of lines of its tracebacks, and a missing
  bucket or credentials surface deep inside a run."""
  scheme, rest = uri.split("://", 1)
  bucket, _, key = rest.partition("/")
  if not bucket:
    return f"names no bucket ({scheme}://BUCKET/...)"
  endpoint = endpoint_of(scheme)
  if (scheme, endpoint, bucket) in _answered:
    return None
  with _probing:
    if (scheme, endpoint, bucket) in _answered:
      return None
    cause = _probe(scheme, endpoint, bucket, key, uri)
    if cause is None:
      _answered.add((scheme, endpoint, bucket))
    return cause


def endpoint_of(scheme: str) -> str | None:
  """The host:port that a scheme's client connects to, where the environment tells it: for gs://
  $STORAGE_EMULATOR_HOST or Google's (as gcsfs chooses), for s3:// $AWS_ENDPOINT_URL(_S3);
  fsspec's configuration first. None where only the client knows (an s3 endpoint in
  ~/.aws/config, Azure's account host): probing a guess could refuse a store that works."""
  import fsspec.config
  configured = {}
  for name in ("gs", "gcs") if scheme == "gs" else (scheme,):
    configured.update(fsspec.config.conf.get(name, {}))
  url = configured.get("endpoint_url") or configured.get("client_kwargs", {}).get("endpoint_url")
  if not url and scheme == "gs":
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    url = emulator if emulator not in ("", "default") else "https://storage." + os.environ.get(
        "GOOGLE_CLOUD_UNIVERSE_DOMAIN", "googleapis.com")
  elif not url and scheme == "s3":
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
  if not url:
    return None
  parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
  return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def _probe(scheme: str, endpoint: str | None, bucket: str, key: str, uri: str) -> str | None:
  """A TCP connection to the endpoint (a dead network fails here, in seconds), then one listing
  of the bucket through the client that epath uses, with its credentials."""
  if endpoint:
    host, port = endpoint.rsplit(":", 1)
    try:
      within(CONNECT_SECONDS, lambda: socket.create_connection(
          (host, int(port)), timeout=CONNECT_SECONDS).close())
    except OSError as e:  # socket.gaierror, ConnectionRefusedError, TimeoutError
      reason = e.strerror or str(e) or f"no connection within {CONNECT_SECONDS:.0f} s"
      return f"cannot reach {endpoint} (no network? {reason})"
  if importlib.util.find_spec(BACKENDS[scheme]) is None or scheme not in ("gs", "s3"):
    return None  # TensorFlow's gfile serves the scheme, or a client that is not probed (adlfs)
  try:
    within(ANSWER_SECONDS, lambda: _list_one(scheme, bucket, key, uri))
  except Exception as e:  # whatever the client raises: each is the user's to mend
    return refusal(e, scheme, bucket, endpoint)
  return None


def _list_one(scheme: str, bucket: str, key: str, uri: str) -> None:
  """Lists at most one object under `key`: what a run does first with its folder, and what
  object-level permissions allow (reading the bucket's own metadata may not be). One try,
  without the client's retries, which would multiply the wait by five."""
  from etils.epath import backend
  from fsspec.asyn import sync
  with _quiet():
    fs = backend.fsspec_backend.fs(uri)  # epath's own instance: its credentials are looked up once
    if scheme == "s3":
      fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1)
      return
    request = type(fs)._request
    request = getattr(request, "__wrapped__", request)  # under gcsfs's retry decorator
    sync(fs.loop, request, fs, "GET", "b/{}/o", bucket, prefix=key, maxResults=1)


def refusal(error: BaseException, scheme: str, bucket: str, endpoint: str | None) -> str:
  """A few words for why a store refused to list a bucket (gcsfs's and s3fs's errors)."""
  text = " ".join(str(error).split())[:200] or type(error).__name__
  code = getattr(error, "code", None)  # gcsfs's HttpError
  module = type(error).__module__
  if isinstance(error, FileNotFoundError):
    return f"no such bucket {bucket!r}"
  if isinstance(error, TimeoutError):
    return f"no answer from {endpoint or scheme + '://' + bucket} within {ANSWER_SECONDS:.0f} s"
  if (isinstance(error, PermissionError) or code in (401, 403) or text.startswith("Forbidden")
      or "credential" in text.lower() or module.startswith("google.auth")):
    return (f"no credentials or no permission for bucket {bucket!r} ({text}; "
            f"{LOGIN.get(scheme, 'log in to the store')})")
  if isinstance(error, OSError) or "connect" in type(error).__name__.lower():
    return f"cannot reach {endpoint or scheme + ' storage'} (no network? {text})"
  return f"the store refused bucket {bucket!r}: {type(error).__name__}: {text}"


def within(seconds: float, function: Callable[[], Any]) -> Any:
  """`function()`, run in a daemon thread; a TimeoutError if it has not returned in `seconds`.
  A client that waits on a dead network cannot hold the command, and its thread ends with the
  process."""
  outcome = {}

  def run():
    try:
      outcome["value"] = function()
    except BaseException as e:  # handed to the caller
      outcome["error"] = e

  thread = threading.Thread(target=run, name="ddpm-storage-probe", daemon=True)
  thread.start()
  thread.join(seconds)
  if thread.is_alive():
    raise TimeoutError(f"no answer within {seconds:.0f} s")
  if "error" in outcome:
    raise outcome["error"]
  return outcome.get("value")


_quiet_lock = threading.Lock()
_quiet_levels: list[tuple[logging.Logger, int]] = []
_quiet_depth = 0


@contextlib.contextmanager
def _quiet():
  """The storage clients' loggers silenced, and restored once the last probe that silenced them
  ends (an abandoned probe may outlive the next one)."""
  global _quiet_depth
  with _quiet_lock:
    if not _quiet_depth:
      _quiet_levels[:] = [(logging.getLogger(n), logging.getLogger(n).level)
                          for n in CLIENT_LOGGERS]
      for logger, _ in _quiet_levels:
        logger.setLevel(logging.CRITICAL + 1)
    _quiet_depth += 1
  try:
    yield
  finally:
    with _quiet_lock:
      _quiet_depth -= 1
      if not _quiet_depth:
        for logger, level in _quiet_levels:
          logger.setLevel(level)


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
                       "would overwrite it; choose another --out")
    if key(path) in seen:
      raise ValueError(f"{what} and {seen[key(path)]} would both be {os.fspath(path)!r}; "
                       "choose another --out")
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
