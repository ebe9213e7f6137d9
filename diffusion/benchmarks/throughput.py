"""How fast the data pipeline alone delivers a config's batches (`ddpm bench-data`).

Not a test: run it on the machine that feeds the accelerator and compare the
total with what the train step consumes there (`ddpm bench`); the slower of
the two bounds training.
"""

import os
import time

from diffusion.config import data_spec
from diffusion.data.loader import Loader, config_options
from diffusion.data.sources import make_source


def bench_data(config, *, workers=(0, 1, 2), threads: int = 8, batches: int = 20,
               warmup: int = 3) -> dict:
  """Images/s of `Loader` over the config's data at its batch size (one process's whole
  batch), for each worker count in `workers` (0: threads in this process): `warmup` batches
  (start-up, the first reads) are left out, `batches` timed. Per worker: the total divided
  by the worker processes (by 1 for threads)."""
  if batches < 1 or warmup < 0 or threads < 1 or any(w < 0 for w in workers):
    raise ValueError("`batches` and `threads` must be positive, `workers` >= 0")
  source = make_source(config.data)
  spec = data_spec(config)
  batch = config.train.batch_size
  result = {"source": type(source).__name__, "examples": len(source), "batch": batch,
            "threads": threads, "cpus": os.cpu_count(), "runs": []}
  for count in workers:
    loader = Loader(source, batch, config.seed, spec=spec, num_threads=threads,
                    **{**config_options(config), "num_workers": count})
    try:
      stream = loader.batches()
      start = time.perf_counter()
      for _ in range(warmup):
        next(stream)
      timed = time.perf_counter()
      for _ in range(batches):
        next(stream)
      end = time.perf_counter()
    finally:
      loader.close()
    rate = batches * batch / (end - timed)
    result["runs"].append({"workers": count, "images_per_s": rate,
                           "images_per_s_per_worker": rate / max(count, 1),
                           "startup_s": timed - start})
  return result


def format_data_table(result: dict, step_images_per_s: float | None = None,
                      step_label: str = "") -> str:
  """The table of `bench_data`, and beside it the train step's consumption: which one bounds
  training."""
  lines = [f"{result['source']}: {result['examples']:,} examples, batch {result['batch']}, "
           f"{result['threads']} threads per process, {result['cpus']} CPUs",
           f"{'workers':>8} {'images/s':>10} {'per worker':>11} {'start s':>8}"]
  for run in result["runs"]:
    lines.append(f"{run['workers']:>8} {run['images_per_s']:>10.0f} "
                 f"{run['images_per_s_per_worker']:>11.0f} {run['startup_s']:>8.2f}")
  if step_images_per_s:
    best = max(run["images_per_s"] for run in result["runs"])
    bound = "the data pipeline" if best < step_images_per_s else "the train step"
    lines.append(f"train step {step_label}: {step_images_per_s:.0f} images/s; the best pipeline "
                 f"gives {best:.0f}: {bound} bounds training")
  return "\n".join(lines)
