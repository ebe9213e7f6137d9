"""Where a run reports: JSON lines, TensorBoard event files and a progress bar (process 0
only), and each process's own throughput and data wait (`HostReport`).

Both files go through `diffusion.paths`, so a workdir in an object store
(gs://...) gets them too (TensorBoard events: `diffusion.training.events`).
"""

import json
import time

import tqdm
from etils import epath

from diffusion import paths
from diffusion.training import events


class MetricWriter:
  """Appends {"step": s, ...} to `workdir/metrics.jsonl` and to TensorBoard events in `workdir/tb/`."""

  def __init__(self, workdir: epath.Path, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self._jsonl = paths.Appender(workdir / "metrics.jsonl")
    self._tb = events.EventWriter(workdir / "tb")

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write((json.dumps({"step": step, **metrics}) + "\n").encode())
    self._tb.scalars(step, metrics)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


class Progress:
  """A tqdm bar over training steps with loss, images/s and (tqdm's) ETA."""

  def __init__(self, start: int, total: int, images_per_step: int, enabled: bool = True):
    self.images_per_step = images_per_step
    self.bar = tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                         disable=not enabled, desc="train")
    self._last = (start, time.perf_counter())

  def update(self, step: int, metrics: dict[str, float]) -> float:
    """Moves the bar to `step`; returns the images/s since the last update."""
    last_step, last_time = self._last
    now = time.perf_counter()
    rate = (step - last_step) * self.images_per_step / max(now - last_time, 1e-9)
    self._last = (step, now)
    shown = {"loss": f"{metrics.get('loss', float('nan')):.4f}", "img_s": f"{rate:.1f}"}
    if "data_wait_frac" in metrics:  # the share of the time spent waiting for data
      shown["data_wait"] = f"{100 * metrics['data_wait_frac']:.0f}%"
    self.bar.set_postfix(shown, refresh=False)
    self.bar.update(step - self.bar.n)
    return rate

  def close(self) -> None:
    self.bar.close()


class HostReport:
  """Each process's own throughput and data wait between reports, so that a starving host
  shows: every process appends its figures to `workdir/hosts/process_{p}.jsonl`, and the
  figures of the run (written by process 0) name the slowest host.

  `waited(seconds)` adds the time the host spent waiting for the next batch;
  `report(step)` returns {"data_wait_s": per step, "data_wait_frac": of the
  wall time} for this process and, with several processes, "slowest_host",
  "slowest_host_images_per_s" and "max_data_wait_frac" over all of them (a
  collective: every process calls it at the same steps).
  """

  def __init__(self, workdir: epath.Path, start: int, local_batch: int, process_index: int = 0,
               process_count: int = 1):
    self.local_batch, self.process_count = local_batch, process_count
    self._file = paths.Appender(workdir / "hosts" / f"process_{process_index}.jsonl")
    self._last, self._wait = (start, time.perf_counter()), 0.0

  def waited(self, seconds: float) -> None:
    self._wait += seconds

  def report(self, step: int) -> dict[str, float]:
    last_step, last_time = self._last
    now = time.perf_counter()
    steps, elapsed = max(step - last_step, 1), max(now - last_time, 1e-9)
    mine = {"images_per_s": (step - last_step) * self.local_batch / elapsed,
            "data_wait_s": self._wait / steps, "data_wait_frac": self._wait / elapsed}
    self._file.write((json.dumps({"step": step, **mine}) + "\n").encode())
    self._last, self._wait = (step, now), 0.0
    out = {"data_wait_s": mine["data_wait_s"], "data_wait_frac": mine["data_wait_frac"]}
    if self.process_count > 1:
      import numpy as np
      from jax.experimental import multihost_utils
      every = np.asarray(multihost_utils.process_allgather(
          np.asarray([mine["images_per_s"], mine["data_wait_frac"]], np.float64)))
      slowest = int(np.argmin(every[:, 0]))
      out.update(slowest_host=float(slowest), slowest_host_images_per_s=float(every[slowest, 0]),
                 max_data_wait_frac=float(every[:, 1].max()))
    return out

  def close(self) -> None:
    self._file.close()
