"""Whether an object store serves a bucket, found out once a process and in seconds.

Without this a dead network costs minutes of the storage client's retries and hundreds
of lines of its tracebacks, and a missing bucket or missing credentials surface deep
inside a run. `check` (which `paths.resolve` calls for every remote path) opens a TCP
connection to the store, then lists at most one object through the client that
`etils.epath` uses, and says in a few words what failed: no network, no credentials or
no permission, no such bucket.
"""

import contextlib
import importlib.util
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

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


# The (scheme, endpoint, bucket) that answered in this process: each is probed once.
_answered: set[tuple[str, str | None, str]] = set()
_probing = threading.Lock()


def check(uri: str) -> str | None:
  """Why the bucket of an object-store URI cannot be used, in a few words, or None. A bucket
  that answered is not probed again in this process (`paths.resolve` runs for every path,
  in loader workers too)."""
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
