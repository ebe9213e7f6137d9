"""Where a run reports: JSON lines, TensorBoard event files and a progress bar (process 0 only).

Both files go through `diffusion.paths`, so a workdir in an object store
(gs://...) gets them too: TensorBoard events through a writer that
tensorboardX is given for those schemes (its own GCS writer is broken).
"""

import json
import os
import time

import tqdm
from etils import epath

from diffusion import paths

EVENTS_PART_BYTES = 4 << 20  # an object-store event file is continued in a new one past this


class _EventFile:
  """A TensorBoard event file on an object store, for tensorboardX's RecordWriter."""

  def __init__(self, path: str):
    self._file = paths.Appender(epath.Path(path), flush_seconds=60.0,
                                rotate_bytes=EVENTS_PART_BYTES)

  def write(self, data: bytes) -> None:
    self._file.write(data)

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class _EventFiles:
  """tensorboardX's writer factory for the object-store schemes."""

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)

  def open(self, path: str) -> _EventFile:
    return _EventFile(path)


def _tensorboard_writer(directory: epath.Path):
  """tensorboardX's SummaryWriter, imported only when a run writes (it imports PyTorch when
  present: seconds at start-up), with the object-store schemes sent through `_EventFiles`."""
  from tensorboardX import SummaryWriter, record_writer
  for scheme in paths.BACKENDS:
    record_writer.register_writer_factory(scheme, _EventFiles())
  return SummaryWriter(os.fspath(directory))


class MetricWriter:
  """Appends {"step": s, ...} to `workdir/metrics.jsonl` and to TensorBoard events in `workdir/tb/`."""

  def __init__(self, workdir: epath.Path, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self._jsonl = paths.Appender(workdir / "metrics.jsonl")
    self._tb = _tensorboard_writer(workdir / "tb")

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write((json.dumps({"step": step, **metrics}) + "\n").encode())
    for name, value in metrics.items():
      self._tb.add_scalar(name, value, step)

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
    self.bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}",
                         img_s=f"{rate:.1f}", refresh=False)
    self.bar.update(step - self.bar.n)
    return rate

  def close(self) -> None:
    self.bar.close()
