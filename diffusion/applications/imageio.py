"""Reading the images the applications work on, checked against the model's input."""

import os

import numpy as np

from diffusion import paths
from diffusion.images import list_images, open_image


def read_image(path: str | os.PathLike, shape: tuple[int, int, int],
               argument: str = "--image") -> np.ndarray:
  """uint8 [H, W, C] from a PNG/JPEG, which must have the model's size and channels."""
  file = paths.resolve(path, argument)
  if not file.exists():
    raise FileNotFoundError(f"{argument} {os.fspath(path)!r} does not exist")
  try:
    array = np.asarray(open_image(file))
  except Exception as e:  # PIL raises many types for a broken file
    raise ValueError(f"{argument} {os.fspath(path)!r} is not a readable image: {e}") from None
  if array.ndim == 2:
    array = array[..., None]
  if array.shape != tuple(shape):
    raise ValueError(f"{argument} {os.fspath(path)!r} has shape {array.shape} (H, W, C); the "
                     f"model takes {tuple(shape)}")
  return array.astype(np.uint8)


def read_images(path: str, shape: tuple[int, int, int]) -> tuple[list[str], np.ndarray, np.ndarray | None]:
  """(names, uint8 [N, H, W, C], labels or None) from a folder or an .npz.

  A folder may hold `normal/` and `anomalous/` subfolders (labels 0 and 1);
  an .npz holds `images` (or `arr_0`) and optionally `labels`.
  """
  source = paths.resolve(path, "--images")
  if path.endswith(".npz"):
    data = paths.load_npz(source, "--images")
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
  if not source.is_dir():
    raise FileNotFoundError(f"--images {path!r} is neither a folder nor an .npz file")
  files = list_images(source)
  if not files:
    raise ValueError(f"--images {path!r} holds no images")
  names = [os.fspath(f)[len(os.fspath(source)):].lstrip("/") for f in files]
  images = np.stack([read_image(f, shape, "--images file") for f in files])
  groups = [n.split("/")[0] if "/" in n else "" for n in names]
  labels = None
  if set(groups) == {"normal", "anomalous"}:
    labels = np.array([g == "anomalous" for g in groups], int)
  return names, images, labels
