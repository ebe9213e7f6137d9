"""Reading the images the applications work on, checked against the model's input."""

import os

import numpy as np
from PIL import Image

from diffusion.data.sources import IMAGE_EXTENSIONS


def read_image(path: str, shape: tuple[int, int, int], argument: str = "--image") -> np.ndarray:
  """uint8 [H, W, C] from a PNG/JPEG, which must have the model's size and channels."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{argument} {path!r} does not exist")
  try:
    with Image.open(path) as image:
      array = np.asarray(image)
  except Exception as e:  # PIL raises many types for a broken file
    raise ValueError(f"{argument} {path!r} is not a readable image: {e}") from None
  if array.ndim == 2:
    array = array[..., None]
  if array.shape != tuple(shape):
    raise ValueError(f"{argument} {path!r} has shape {array.shape} (H, W, C); the model takes "
                     f"{tuple(shape)}")
  return array.astype(np.uint8)


def write_image(path: str, image: np.ndarray) -> None:
  """Writes uint8 [H, W, C] as PNG (grey for one channel)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def read_images(path: str, shape: tuple[int, int, int]) -> tuple[list[str], np.ndarray, np.ndarray | None]:
  """(names, uint8 [N, H, W, C], labels or None) from a folder or an .npz.

  A folder may hold `normal/` and `anomalous/` subfolders (labels 0 and 1);
  an .npz holds `images` (or `arr_0`) and optionally `labels`.
  """
  if path.endswith(".npz"):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--images {path!r} does not exist")
    data = np.load(path)
    key = "images" if "images" in data else "arr_0"
    if key not in data:
      raise ValueError(f"--images {path!r} holds no 'images' or 'arr_0' array")
    images = data[key]
    if images.ndim == 3:
      images = images[..., None]
    if images.dtype != np.uint8 or images.shape[1:] != tuple(shape):
      raise ValueError(f"--images {path!r} holds {images.dtype} {images.shape}; the model takes "
                       f"uint8 [N, {', '.join(map(str, shape))}]")
    labels = data["labels"].astype(int) if "labels" in data else None
    return [f"{i}" for i in range(len(images))], images, labels
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--images {path!r} is neither a folder nor an .npz file")
  names = sorted(os.path.relpath(os.path.join(root, f), path)
                 for root, _, files in os.walk(path) for f in files
                 if f.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise ValueError(f"--images {path!r} holds no images")
  images = np.stack([read_image(os.path.join(path, n), shape, "--images file") for n in names])
  groups = [n.split(os.sep)[0] if os.sep in n else "" for n in names]
  labels = None
  if set(groups) == {"normal", "anomalous"}:
    labels = np.array([g == "anomalous" for g in groups], int)
  return names, images, labels
