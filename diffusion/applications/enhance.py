"""Enhancement (SR3 / Palette style): a model conditioned on the degraded data.

The network sees the degraded example as extra input channels (the U-Net's
`cond_channels`, or any network of the registry that takes `cond`); it is
trained on (degraded, clean) pairs from a folder or made by synthetic
degradations of a dataset (`config.data.condition`), or on a source whose
examples carry "cond", and sampling runs the reverse chain with the
degraded example as condition.
"""

import numpy as np

from diffusion.sampling import class_labels, in_batches, make_sampler


def enhance(run, variables, degraded: np.ndarray, mesh, key, *, sampler: str = "ddpm",
            steps: int | None = None, class_label: int | None = None, batch: int = 256,
            progress: bool = True) -> np.ndarray:
  """An enhanced version of each degraded example.

  degraded: [N, *shape[:-1], cond_channels] in the data's units and dtype (as
  the training source's "cond"), or one example without N; returns float32
  [N, *shape] (or [*shape]) in the model's units (`DataSpec.from_model`
  gives the data's). Pass an example several times for several samples. A
  class-conditional model is conditioned on `class_label`, else on its null class. Drawn
  `batch` at a time with a progress bar (`progress`); the result does not depend on `batch`.
  """
  cond_channels = run.model.cond_channels
  if not cond_channels:
    raise ValueError("this run's model is not conditioned (config.model.cond_channels = 0): "
                     "train it with config.data.condition set or a source that gives 'cond'")
  spec = run.diffusion.spec
  degraded, single = spec.batch(degraded, "the degraded data", channels=cond_channels)
  labels = class_labels(run, len(degraded), class_label)
  sample = make_sampler(run, mesh, sampler=sampler, steps=steps)
  cond = spec.to_model(degraded).astype(np.float32)
  out = in_batches(lambda first, rows: sample(variables, key, first, labels[rows],
                                              cond=cond[rows]),
                   len(degraded), batch, mesh, desc="enhance", progress=progress)
  return out[0] if single else out
