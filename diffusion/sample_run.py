"""`ddpm sample`: samples of a trained run as .npz (arr_0: uint8 NHWC, labels) or per-class PNG folders."""

import jax
import numpy as np
import tqdm

from diffusion import images, paths
from diffusion.config import data_shape
from diffusion.distributed import gather, make_mesh, replicate
from diffusion.images import to_uint8
from diffusion.sampling import class_labels, make_sampler
from diffusion.training.checkpoint import load_run
from diffusion.training.state import base_key

LAYOUTS = ("npz", "folders")


def batch_size(requested: int) -> int:
  """`requested` rounded down to a multiple of the device count (at least one per device)."""
  devices = jax.device_count()
  return max(devices, requested - requested % devices)


def sample_to_files(workdir: str, num: int, out: str, *, seed: int = 0, batch: int = 256,
                    step: int | None = None, sampler: str = "ddpm", steps: int | None = None,
                    eta: float = 0.0, spacing: str | None = None, guidance: float | None = None,
                    class_label: int | None = None, layout: str = "npz") -> np.ndarray:
  """Draws `num` samples from a run; writes them in `layout` and returns uint8 [num, H, W, C].

  "npz": `out` gets arr_0 (uint8 NHWC, the FID evaluators' format) and labels,
  and a PNG grid beside it. "folders": `out/` gets one PNG per sample, in a
  subfolder per class for a class-conditional model, the layout `config.data.name
  = "folder"` reads back (data augmentation).
  """
  if num < 1 or batch < 1:
    raise ValueError(f"--num and --batch must be positive; got {num} and {batch}")
  if layout not in LAYOUTS:
    raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
  paths.resolve(out, "--out")  # a scheme no backend serves fails before sampling
  config, model, params, step = load_run(workdir, step)
  labels = class_labels(model, config, num, class_label, default="cycle")
  samples = draw_samples(config, model, params, labels, seed=seed, batch=batch, sampler=sampler,
                         steps=steps, eta=eta, spacing=spacing, guidance=guidance,
                         desc=f"sample {sampler} (step {step})")
  if jax.process_index() == 0:
    write_samples(out, samples, labels, model.num_classes, layout)
  return samples


def draw_samples(config, model, params, labels: np.ndarray, *, seed: int = 0, batch: int = 256,
                 sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0,
                 spacing: str | None = None, guidance: float | None = None,
                 desc: str = "sample") -> np.ndarray:
  """uint8 samples [len(labels), H, W, C] of a run's network (labels: classes, ignored by an
  unconditional model), drawn `batch` at a time over every device with a progress bar."""
  num = len(labels)
  mesh = make_mesh()
  sample = make_sampler(model, config, data_shape(config), mesh, sampler=sampler, steps=steps,
                        eta=eta, spacing=spacing, guidance=guidance)
  params, key, batch = replicate(params, mesh), base_key(seed, "sample"), batch_size(batch)
  chunks = []
  for first in tqdm.tqdm(range(0, num, batch), desc=desc, unit="batch",
                         disable=jax.process_index() != 0):
    n = min(batch, num - first)
    padded = np.resize(labels[first:first + n], n + (-n) % jax.device_count())
    chunks.append(to_uint8(gather(sample(params, key, first, padded)))[:n])
  return np.concatenate(chunks)


def write_samples(out: str, samples: np.ndarray, labels: np.ndarray, num_classes: int,
                  layout: str) -> None:
  path = paths.resolve(out, "--out")
  if layout == "npz":
    paths.save_npz(path, arr_0=samples, labels=labels)
    images.save_grid(path.with_suffix(".png"), samples[:64])
    return
  width = len(str(max(num_classes - 1, 0)))
  for i, (image, label) in enumerate(zip(samples, labels)):
    folder = path / f"{label:0{width}d}" if num_classes else path
    images.save_png(folder / f"{i:06d}.png", image)
