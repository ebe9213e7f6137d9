"""Where a run reports: JSON lines, TensorBoard event files and a progress bar (process 0 only)."""

import json
import os
import time

import tqdm


class MetricWriter:
  """Appends {"step": s, ...} to `workdir/metrics.jsonl` and to TensorBoard events in `workdir/tb/`."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self._jsonl.flush()
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
