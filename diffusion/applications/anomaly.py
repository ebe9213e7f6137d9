"""Anomaly detection by partial diffusion and reconstruction (AnoDDPM, Wyatt et al. 2022).

An image is noised to step k with the forward process and brought back by
the reverse chain; a model that knows only normal data restores normal
images and changes anomalous ones. The per-pixel map is |x - x̂| (mean over
channels), the per-image score its mean square, in units of the [0, 1] range.
"""

import numpy as np

from diffusion.config import schedule_from_config
from diffusion.distributed import gather, pad_to_devices
from diffusion.images import to_float
from diffusion.sampling import class_labels, make_sampler


def anomaly_scores(model, variables, config, images: np.ndarray, mesh, key, *, step: int | None = None,
                   sampler: str = "ddpm", steps: int | None = None, batch: int = 256,
                   seed: int = 0, class_label: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(scores [N], maps [N, H, W], reconstructions uint8-range float [N, H, W, C] in [-1, 1]).

  images: uint8 [N, H, W, C]; step: k, default T/4. A class-conditional model
  reconstructs under `class_label`, else under its null class (unconditional).
  """
  schedule = schedule_from_config(config)
  num_steps = schedule.num_steps
  step = num_steps // 4 if step is None else step
  if not 0 <= step < num_steps:
    raise ValueError(f"--at-step must lie in [0, {num_steps}) (the model's T); got {step}")
  labels = class_labels(model, config, len(images), class_label)
  devices = mesh.size
  batch = max(devices, batch - batch % devices)
  ac = float(schedule.alphas_cumprod[step])
  sample = make_sampler(model, config, images.shape[1:], mesh, sampler=sampler,
                        steps=None if steps is None else min(steps, step + 1), start=step)
  rng = np.random.default_rng(seed)
  x0 = to_float(images)
  recon = []
  for first in range(0, len(images), batch):
    n = len(x0[first:first + batch])
    chunk = pad_to_devices(x0[first:first + batch], mesh)
    x_k = np.sqrt(ac) * chunk + np.sqrt(1 - ac) * rng.standard_normal(chunk.shape)
    chunk_labels = pad_to_devices(labels[first:first + batch], mesh)
    recon.append(gather(sample(variables, key, first, chunk_labels,
                               x_start=x_k.astype(np.float32)))[:n])
  recon = np.concatenate(recon)
  maps = np.abs(x0 - recon).mean(axis=-1) / 2  # [0, 1] units
  scores = np.mean(((x0 - recon) / 2) ** 2, axis=(1, 2, 3))
  return scores, maps, recon


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve of `scores` for labels 1 (anomalous) against 0: the
  probability that an anomalous image scores above a normal one (ties count half)."""
  labels = np.asarray(labels).astype(bool)
  if labels.all() or not labels.any():
    raise ValueError("AUROC needs both normal (0) and anomalous (1) labels")
  from sklearn.metrics import roc_auc_score  # a second to import: only when asked
  return float(roc_auc_score(labels, np.asarray(scores, np.float64)))
