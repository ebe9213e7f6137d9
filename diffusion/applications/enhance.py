"""Image-to-image enhancement (SR3 / Palette style): a model conditioned on the degraded image.

The network sees the degraded image as extra input channels (UNet
`cond_channels`); it is trained on (degraded, clean) pairs from a folder or
made by synthetic degradations of a dataset (`config.data.condition`), and
sampling runs the reverse chain with the image as condition.
"""

import numpy as np

from diffusion.sampling import gather, padded, make_sampler, to_float


def enhance(model, params, config, image: np.ndarray, mesh, key, *, num_samples: int = 1,
            sampler: str = "ddpm", steps: int | None = None) -> np.ndarray:
  """Enhanced versions of `image` (uint8 [H, W, C]): float32 [num_samples, H, W, C] in [-1, 1]."""
  if not model.cond_channels:
    raise ValueError("this run's model is not image-conditioned (config.model.cond_channels = 0): "
                     "train it with config.data.condition set")
  if image.shape[-1] != model.cond_channels:
    raise ValueError(f"--image has {image.shape[-1]} channels; the model is conditioned on "
                     f"{model.cond_channels}")
  shape = (config.data.image_size,) * 2 + (config.data.channels,)
  sample = make_sampler(model, config, shape, mesh, sampler=sampler, steps=steps)
  cond = np.broadcast_to(to_float(image), (padded(num_samples, mesh), *image.shape))
  return gather(sample(params, key, 0, cond=np.ascontiguousarray(cond)))[:num_samples]
