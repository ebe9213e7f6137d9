"""Anomaly detection by partial diffusion and reconstruction (AnoDDPM, Wyatt et al. 2022).

An example is noised to step k with the forward process and brought back by
the reverse chain; a model that knows only normal data restores normal
examples and changes anomalous ones. The map is |x - x̂| per element (mean
over the last axis: an image's channels, a point's coordinates), the score
its mean square, both in the units of `DataSpec.difference` (the [0, 1]
range for uint8 data, the data's own for float data).
"""

import numpy as np

from diffusion.sampling import class_labels, in_batches, make_sampler, needs_ddpm


def anomaly_scores(run, variables, data: np.ndarray, mesh, key, *, at_step: int | None = None,
                   sampler: str = "ddpm", steps: int | None = None, batch: int = 256,
                   seed: int = 0, class_label: int | None = None, progress: bool = True
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(scores [N], maps [N, *shape[:-1]], reconstructions float32 [N, *shape] in the model's units).

  data: [N, *shape] in the data's units and dtype (uint8 images or volumes,
  float sequences or point sets); at_step: k, the step the data is diffused to
  (default T/4). A class-conditional model reconstructs under `class_label`,
  else under its null class (unconditional). Point sets are compared after
  centring both.
  """
  needs_ddpm(run, "anomaly scoring")
  spec = run.diffusion.spec
  data, _ = spec.batch(data, "the data to score")
  schedule = run.diffusion.schedule
  num_steps = schedule.num_steps
  step = num_steps // 4 if at_step is None else at_step
  if not 0 <= step < num_steps:
    raise ValueError(f"`at_step` must lie in [0, {num_steps}) (the model's T); got {step}")
  labels = class_labels(run, len(data), class_label)
  ac = float(schedule.alphas_cumprod[step])
  if isinstance(steps, int) and steps > step + 1:
    raise ValueError(f"`steps` {steps}: the chain from `at_step` {step} has at most "
                     f"{step + 1} steps")
  sample = make_sampler(run, mesh, sampler=sampler, steps=steps, start=step)
  rng = np.random.default_rng(seed)
  x0 = spec.project(spec.to_model(data))
  x_k = (np.sqrt(ac) * x0 + np.sqrt(1 - ac) * spec.project(rng.standard_normal(x0.shape))
         ).astype(np.float32)
  recon = in_batches(lambda first, rows: sample(variables, key, first, labels[rows],
                                                x_start=x_k[rows]),
                     len(data), batch, mesh, desc="anomaly", progress=progress)
  difference = spec.difference(x0 - recon)
  maps = np.abs(difference).mean(axis=-1)
  scores = np.mean(difference ** 2, axis=tuple(range(1, difference.ndim)))
  return scores, maps, recon


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve of `scores` for labels 1 (anomalous) against 0: the
  probability that an anomalous example scores above a normal one (ties count half)."""
  labels = np.asarray(labels).astype(bool)
  if labels.all() or not labels.any():
    raise ValueError("AUROC needs both normal (0) and anomalous (1) labels")
  from sklearn.metrics import roc_auc_score  # a second to import: only when asked
  return float(roc_auc_score(labels, np.asarray(scores, np.float64)))
