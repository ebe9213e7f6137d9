"""One training run per workdir: `workdir/lock.json` names the run that holds it.

A second `ddpm train` on the same workdir (a requeued job while the old one
still runs) is refused at start, before it writes anything. The lock is
process 0's; the other processes of a multi-host run follow its verdict. A
lock left by a run that died is taken over: at once if it was on this host
and its process is gone, else once its heartbeat, rewritten every
`HEARTBEAT_SECONDS` while the run lives, is older than `STALE_SECONDS` (on an
object store no process can be checked from another host).
"""

import json
import logging
import os
import socket
import threading
import time
import uuid

from etils import epath

from diffusion import paths

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 300.0


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


class WorkdirLock:
  """The lock of `workdir`; `acquire` raises ValueError naming the run that holds it."""

  def __init__(self, workdir: epath.Path):
    self.workdir = workdir
    self.path = workdir / "lock.json"
    self.me = {"host": socket.gethostname(), "pid": os.getpid(), "run": uuid.uuid4().hex}
    self._stop = threading.Event()
    self._thread = None

  def _read(self) -> dict | None:
    try:
      holder = json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (ValueError, OSError):  # a half-written or unreadable lock
      return {}
    return holder if isinstance(holder, dict) else {}

  def _write(self) -> None:
    paths.write_bytes(self.path, self._content())

  def _content(self) -> bytes:
    return json.dumps({**self.me, "heartbeat": time.time()}).encode()

  def _create(self) -> bool:
    """Creates the lock if there is none: atomically on a local disk (a hard link fails if the
    lock exists); on an object store by writing it and reading it back."""
    if paths.is_remote(self.path):
      self._write()
      return (self._read() or {}).get("run") == self.me["run"]
    self.workdir.mkdir(parents=True, exist_ok=True)
    temporary = self.workdir / f".lock.json.{self.me['run']}"
    temporary.write_bytes(self._content())
    try:
      os.link(temporary, self.path)
      return True
    except FileExistsError:
      return False
    finally:
      temporary.unlink(missing_ok=True)

  def holder_alive(self, holder: dict) -> bool:
    """Whether the run that wrote `holder` may still be running."""
    age = time.time() - float(holder.get("heartbeat", 0))
    if age > STALE_SECONDS:
      return False
    if holder.get("host") == self.me["host"]:
      return _alive(int(holder.get("pid", -1)))
    return True

  def acquire(self) -> None:
    for _ in range(2):
      holder = self._read()
      if holder is None:
        if self._create():
          break
        continue  # another run created it this moment: judge that one
      if self.holder_alive(holder):
        age = time.time() - float(holder["heartbeat"])
        raise ValueError(
            f"`workdir` {os.fspath(self.workdir)!r} is in use by a run on host "
            f"{holder.get('host')!r}, pid {holder.get('pid')} (its last sign of life {age:.0f} s "
            f"ago): stop that run first; a run that died elsewhere frees the workdir "
            f"{STALE_SECONDS:.0f} s after its last sign of life")
      log.warning("taking over %s from a run that is gone (host %s, pid %s)", self.path,
                  holder.get("host"), holder.get("pid"))
      self._write()
      break
    else:
      raise ValueError(f"`workdir` {os.fspath(self.workdir)!r} was taken by another run "
                       "starting at the same moment")
    self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="workdir-lock")
    self._thread.start()

  def _heartbeat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        self._write()
      except OSError as e:  # keep training; the next beat tries again
        log.warning("could not renew %s: %s", self.path, e)

  def release(self) -> None:
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    self._thread = None
    if (self._read() or {}).get("run") == self.me["run"]:
      self.path.unlink(missing_ok=True)
