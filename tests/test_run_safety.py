"""A run's workdir under stress: a second run on it, a resume with another config, a damaged
checkpoint, a full disk, and a preemption notice between log steps of a two-process run."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from etils import epath

from _tiny import CONFIGS, tiny_overrides
from diffusion import cli
from diffusion.training import Checkpoints, lock as lock_module
from diffusion.training.lock import WorkdirLock

DIGITS = os.path.join(CONFIGS, "digits.py")


def train(workdir, *overrides, **train_overrides):
  """A tiny `ddpm train` in this process, without a sample grid (its sampler costs a compile)."""
  return cli.main(["train", "--config", DIGITS, "--workdir", str(workdir),
                   *tiny_overrides(**{"num_samples": 0, **train_overrides}), *overrides])


def steps_of(workdir):
  checkpoints = Checkpoints(str(workdir), read_only=True)
  try:
    return checkpoints.all_steps()
  finally:
    checkpoints.manager.close()


def error_line(err: str, command: str = "train") -> str:
  """The one line a bad input prints."""
  lines = [line for line in err.splitlines() if line.startswith(f"ddpm {command}: error: ")]
  assert len(lines) == 1, err
  return lines[0]


def wait_for(condition, process, timeout=300):
  start = time.monotonic()
  while not condition():
    assert process.poll() is None, process.communicate()
    assert time.monotonic() - start < timeout
    time.sleep(0.05)


HOLDER = """
import sys, time
from etils import epath
from diffusion.training.lock import WorkdirLock
WorkdirLock(epath.Path(sys.argv[1])).acquire()
print("holding", flush=True)
time.sleep(600)
"""


def test_a_busy_workdir_is_refused_and_a_dead_run_frees_it(tmp_path, capsys):
  """Another process holds the workdir as `ddpm train` does before it compiles: a second run
  is refused, naming it; once it is killed (kill -9: no chance to release), the lock is free."""
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "holding"
    assert train(tmp_path, num_steps=4) == 2
    assert f"--workdir {str(tmp_path)!r} is in use by a run on host {socket.gethostname()!r}, " \
           f"pid {holder.pid}" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "checkpoints").exists()  # the refused run wrote nothing
  finally:
    holder.kill()
    holder.wait()
  assert json.loads((tmp_path / "lock.json").read_text())["pid"] == holder.pid
  assert train(tmp_path, num_steps=2) == 0  # its process is gone: the lock is free
  assert not (tmp_path / "lock.json").exists()  # released at the end


def test_a_lock_from_another_host_holds_until_its_heartbeat_is_stale(tmp_path, monkeypatch):
  workdir = epath.Path(tmp_path)
  stranger = lambda age: (workdir / "lock.json").write_text(json.dumps(
      {"host": "elsewhere", "pid": 1, "run": "theirs", "heartbeat": time.time() - age}))
  stranger(10)
  with pytest.raises(ValueError, match=r"in use by a run on host 'elsewhere', pid 1 \(its last "
                                       r"sign of life 1\d s ago\)"):
    WorkdirLock(workdir).acquire()
  stranger(lock_module.STALE_SECONDS + 1)
  monkeypatch.setattr(lock_module, "HEARTBEAT_SECONDS", 0.05)
  lock = WorkdirLock(workdir)
  lock.acquire()
  written = json.loads((workdir / "lock.json").read_text())
  assert written["run"] == lock.me["run"] and written["pid"] == os.getpid()
  time.sleep(0.3)
  assert json.loads((workdir / "lock.json").read_text())["heartbeat"] > written["heartbeat"]
  with pytest.raises(ValueError, match=f"pid {os.getpid()}"):  # this very process holds it
    WorkdirLock(workdir).acquire()
  lock.release()
  assert not (workdir / "lock.json").exists()
  (workdir / "lock.json").write_text("{half a lock")  # a run died while writing it
  lock = WorkdirLock(workdir)
  lock.acquire()
  lock.release()


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory):
  """A tiny run with checkpoints at steps 1 (Orbax saves the first), 3 and 6, copied by each
  test that changes it."""
  workdir = tmp_path_factory.mktemp("six")
  assert train(workdir) == 0
  assert steps_of(workdir) == [1, 3, 6]
  return workdir


def copy_of(run, tmp_path):
  import shutil
  shutil.copytree(run, tmp_path / "run")
  return tmp_path / "run"


def test_resuming_with_another_config_names_what_differs(six_steps, tmp_path, capsys):
  workdir = copy_of(six_steps, tmp_path)
  listing = sorted(os.listdir(workdir / "checkpoints"))
  assert train(workdir, "--config.model.ch=32", "--config.diffusion.num_steps=50") == 2
  assert "holds a run with another config (diffusion.num_steps: 20 -> 50; model.ch: 16 -> 32)" \
      in error_line(capsys.readouterr().err)
  assert sorted(os.listdir(workdir / "checkpoints")) == listing
  # How a run executes may change: more steps, other intervals, fewer checkpoints kept.
  assert train(workdir, num_steps=8, log_every=4, checkpoint_every=4, keep_checkpoints=2) == 0
  assert steps_of(workdir)[-2:] == [6, 8]


def damage(workdir, step):
  """Deletes the array data of checkpoint `step`, leaving its metadata: complete but unreadable."""
  removed = 0
  for root, _, files in os.walk(workdir / "checkpoints" / str(step) / "state"):
    if os.sep + "d" in root:
      for name in files:
        os.remove(os.path.join(root, name))
        removed += 1
  assert removed


def test_a_damaged_newest_checkpoint_is_passed_over_by_sample_and_resume(six_steps, tmp_path,
                                                                         caplog, capsys):
  workdir = copy_of(six_steps, tmp_path)
  damage(workdir, 6)
  damaged = str(workdir / "checkpoints" / "6")
  sample = lambda *extra: cli.main(["sample", "--workdir", str(workdir), "--num", "8", "--out",
                                    str(tmp_path / "s.npz"), "--sampler", "ddim", "--steps", "3",
                                    *extra])
  # A process of its own, as a user runs it: the warning is all it says (Orbax's abandoned
  # reads once printed thousands of lines of tracebacks after it).
  run = subprocess.run([sys.executable, "-m", "diffusion", "sample", "--workdir", str(workdir),
                        "--num", "8", "--out", str(tmp_path / "s.npz"), "--sampler", "ddim",
                        "--steps", "3"], capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  said = [line for line in run.stderr.splitlines() if line.strip() and "sample ddim" not in line]
  assert len(said) == 1 and f"checkpoint {damaged} is damaged and is passed over" in said[0], (
      run.stderr[:3000])
  newest = np.load(tmp_path / "s.npz")["arr_0"]
  assert sample("--step", "3") == 0
  np.testing.assert_array_equal(np.load(tmp_path / "s.npz")["arr_0"], newest)
  assert sample("--step", "6") == 2
  assert f"--step 6: checkpoint {damaged} is damaged" in error_line(capsys.readouterr().err,
                                                                     "sample")
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert train(workdir) == 0  # resumes from step 3, trains steps 4-6 again
  assert f"checkpoint {damaged} is damaged and is passed over" in caplog.text
  assert os.listdir(workdir / "damaged_checkpoints") == ["6"]  # set aside, not deleted
  assert steps_of(workdir) == [1, 3, 6]
  assert sample() == 0


def test_a_full_disk_stops_the_run_with_one_line_and_loses_nothing(six_steps, tmp_path,
                                                                    monkeypatch, capsys):
  """The error TensorStore raised when a real disk filled up during a save (tmpfs), injected
  into the save of step 9: the run stops with one line, and the earlier steps stay usable."""
  import orbax.checkpoint as ocp
  workdir = copy_of(six_steps, tmp_path)
  original = ocp.PyTreeCheckpointHandler.async_save

  class Full:
    def result(self, timeout=None):
      raise ValueError(
          'RESOURCE_EXHAUSTED: Error writing "params/0.0" in OCDBT database at local file '
          f'"{workdir}/checkpoints/9.orbax-checkpoint-tmp/state/": Failed to write 364594 bytes '
          "to file 4: No space left on device [os_error_code='28']")

  async def async_save(self, *args, **kwargs):
    return list(await original(self, *args, **kwargs) or []) + [Full()]

  monkeypatch.setattr(ocp.PyTreeCheckpointHandler, "async_save", async_save)
  assert train(workdir, num_steps=9) == 2
  line = error_line(capsys.readouterr().err)
  assert line.startswith(f"ddpm train: error: the storage of --workdir {str(workdir)!r} is "
                         "full (RESOURCE_EXHAUSTED: Error writing") and "free space" in line
  monkeypatch.undo()
  assert steps_of(workdir) == [1, 3, 6]
  assert cli.main(["sample", "--workdir", str(workdir), "--num", "8", "--out",
                   str(tmp_path / "s.npz"), "--sampler", "ddim", "--steps", "3"]) == 0
  assert train(workdir, num_steps=9) == 0
  assert steps_of(workdir)[-1] == 9


def test_full_storage_is_recognised_in_its_disguises():
  import errno
  from diffusion.paths import is_disk_full
  assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
  tensorstore = ValueError("RESOURCE_EXHAUSTED: Error writing \"a/0\": Failed to write 8 bytes "
                           "to file 4: No space left on device [os_error_code='28']")
  try:
    try:
      raise tensorstore
    except ValueError as e:
      raise RuntimeError("the background save failed") from e
  except RuntimeError as e:
    assert is_disk_full(e)
  assert is_disk_full(ExceptionGroup("saves", [KeyError("x"), OSError(errno.EDQUOT, "quota")]))
  assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
  assert not is_disk_full(ValueError("RESOURCE_EXHAUSTED: out of memory"))


def test_a_preemption_notice_between_log_steps_stops_both_processes_at_one_step(tmp_path):
  """SIGTERM to process 1 only, with no log step in sight, sent as Orbax finalises the first
  save (when Orbax reports its own step to JAX's preemption sync point, which once made a
  notice land on a point both processes had passed): both processes save the same step and
  exit cleanly, long before the next log step."""
  port = 20000 + os.getpid() % 20000
  env = dict(os.environ, XLA_FLAGS=os.environ["XLA_FLAGS"].replace(
      "device_count=8", "device_count=2"), JAX_PLATFORMS="cpu",
      DDPM_COORDINATOR_ADDRESS=f"localhost:{port}", DDPM_NUM_PROCESSES="2")
  command = [sys.executable, "-m", "diffusion", "train", "--config", DIGITS, "--workdir",
             str(tmp_path / "run"), *tiny_overrides(num_steps=100000, log_every=100000,
                                                    checkpoint_every=10, sample_every=100000)]
  logs = [open(tmp_path / f"process_{i}.log", "w+") for i in range(2)]
  processes = [subprocess.Popen(command, env=dict(env, DDPM_PROCESS_ID=str(i)),
                                stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
  tails = lambda: "\n".join(f"process {i}: ...{(tmp_path / f'process_{i}.log').read_text()[-1500:]}"
                            for i in range(2))
  try:
    # Orbax saves the first step: training is under way.
    wait_for(lambda: (tmp_path / "run" / "checkpoints" / "1").exists(), processes[0],
             timeout=400)
    processes[1].send_signal(signal.SIGTERM)
    for p in processes:
      try:
        p.wait(timeout=180)
      except subprocess.TimeoutExpired:
        raise AssertionError(f"no clean stop:\n{tails()}") from None
  finally:
    for p in processes:
      p.kill()
  assert [p.returncode for p in processes] == [0, 0], tails()
  saved = [int(re.search(r"preempted: saved step (\d+);", (tmp_path / f"process_{i}.log")
                         .read_text()).group(1)) for i in range(2)]
  assert saved[0] == saved[1] > 1, saved
  assert steps_of(tmp_path / "run")[-1] == saved[0]
  assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""  # no log step came


def test_a_whole_file_write_that_fails_leaves_no_temporary_and_names_the_file(tmp_path,
                                                                              monkeypatch):
  """A full disk while `ddpm sample` writes its .npz: the old file stays, no .tmp file is left
  on the full disk, and the error names the file."""
  import errno
  from etils import epath
  from diffusion import paths
  target = epath.Path(tmp_path / "s.npz")
  target.write_bytes(b"old")

  def full(self, data):
    open(self, "wb").write(data[:3])  # part of it made it to disk
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(epath.Path, "write_bytes", full)
  with pytest.raises(OSError, match=r"No space left on device: '.*s.npz'") as error:
    paths.write_bytes(target, b"new samples")
  assert paths.is_disk_full(error.value)
  assert sorted(os.listdir(tmp_path)) == ["s.npz"] and (tmp_path / "s.npz").read_bytes() == b"old"


@pytest.mark.parametrize("failing_save, then", [
    (1, "no checkpoint was saved yet; free space and run the same command to start again"),
    (2, "the earlier checkpoints are intact; free space and run the same command to resume")])
def test_a_full_disk_stops_training_in_one_line_that_says_what_is_kept(
    tmp_path, capsys, monkeypatch, failing_save, then):
  import errno
  save, calls = Checkpoints.save, []

  def filling(self, step, *args, force=False, **kwargs):  # the n-th save finds the disk full
    if force or self.manager.should_save(step):
      calls.append(step)
      if len(calls) == failing_save:
        raise OSError(errno.ENOSPC, "No space left on device")
    return save(self, step, *args, force=force, **kwargs)

  monkeypatch.setattr(Checkpoints, "save", filling)
  assert train(tmp_path / "run", num_samples=0) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("ddpm train: error: the storage of --workdir ") and \
      err[-1].endswith(f"is full ([Errno 28] No space left on device): {then}"), err[-1]
