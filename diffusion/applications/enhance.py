"""Image-to-image enhancement (SR3 / Palette style): a model conditioned on the degraded image.

The network sees the degraded image as extra input channels (UNet
`cond_channels`); it is trained on (degraded, clean) pairs from a folder or
made by synthetic degradations of a dataset (`config.data.condition`), and
sampling runs the reverse chain with the image as condition.
"""

import numpy as np

from diffusion.config import data_shape
from diffusion.distributed import gather, pad_to_devices
from diffusion.images import to_float
from diffusion.sampling import class_labels, make_sampler


def enhance(model, variables, config, images: np.ndarray, mesh, key, *, sampler: str = "ddpm",
            steps: int | None = None, class_label: int | None = None) -> np.ndarray:
  """An enhanced version of each image: uint8 [N, H, W, C] (or [H, W, C]) -> float32 of the
  same shape in [-1, 1]. Pass an image several times for several samples. A
  class-conditional model is conditioned on `class_label`, else on its null class."""
  if not model.cond_channels:
    raise ValueError("this run's model is not image-conditioned (config.model.cond_channels = 0): "
                     "train it with config.data.condition set")
  single = images.ndim == 3
  images = images[None] if single else images
  if images.shape[-1] != model.cond_channels:
    raise ValueError(f"--image has {images.shape[-1]} channels; the model is conditioned on "
                     f"{model.cond_channels}")
  n = len(images)
  labels = pad_to_devices(class_labels(model, config, n, class_label), mesh)
  sample = make_sampler(model, config, data_shape(config), mesh, sampler=sampler, steps=steps)
  cond = pad_to_devices(to_float(images), mesh)
  out = gather(sample(variables, key, 0, labels, cond=cond))[:n]
  return out[0] if single else out
