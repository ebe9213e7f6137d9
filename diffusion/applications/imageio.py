"""Reading what the applications work on (images, or arrays of any data kind), checked against
the model's input."""

import io
import os

import numpy as np

from diffusion import paths
from diffusion.dataspec import DataSpec
from diffusion.images import list_images, open_image, pixels, with_channels

ARRAY_KEYS = ("x", "images", "arr_0")


def is_array_file(path: str | os.PathLike) -> bool:
  return os.fspath(path).endswith((".npy", ".npz"))


def read_array(path: str | os.PathLike, argument: str, keys: tuple[str, ...] = ARRAY_KEYS
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(the array, the whole archive) of an .npy file, or of an .npz: its first array named in
  `keys`, else its only one."""
  file = paths.resolve(path, argument)
  if not file.exists():
    raise FileNotFoundError(f"{argument} {os.fspath(path)!r} does not exist")
  if os.fspath(path).endswith(".npy"):
    try:
      array = np.load(io.BytesIO(paths.read_bytes(file, argument)), allow_pickle=False)
    except Exception as e:  # format errors of a broken file
      raise ValueError(f"{argument} {os.fspath(path)!r} cannot be read as .npy: {e}") from None
    return array, {}
  archive = paths.load_npz(file, argument)
  name = next((k for k in keys if k in archive), None)
  if name is None and len(archive) == 1:
    name = next(iter(archive))
  if name is None:
    raise ValueError(f"{argument} {os.fspath(path)!r} holds {sorted(archive)}; need an array "
                     f"named {' or '.join(map(repr, keys))}")
  return archive[name], archive


def read_example(path: str | os.PathLike, spec: DataSpec, argument: str = "`image`",
                 channels: int | None = None) -> np.ndarray:
  """One example [*shape] or a batch [N, *shape] in the data's units: from an .npy/.npz for
  any data, or from a PNG/JPEG for images (`channels` replaces the last axis of the shape:
  a conditioning input)."""
  if is_array_file(path):
    array, _ = read_array(path, argument)
    spec.batch(array, f"{argument} {os.fspath(path)!r}", channels)  # checks shape and dtype
    return array
  if spec.kind != "image":
    raise ValueError(f"{argument} {os.fspath(path)!r}: this run's data is {spec.kind} data of "
                     f"shape {spec.shape}; give an .npy or .npz array")
  return read_image(path, spec.shape if channels is None else spec.shape[:-1] + (channels,),
                    argument)


def read_image(path: str | os.PathLike, shape: tuple[int, int, int],
               argument: str = "`image`") -> np.ndarray:
  """uint8 [H, W, C] from a PNG/JPEG, which must have the model's size and channels."""
  file = paths.resolve(path, argument)
  if not file.exists():
    raise FileNotFoundError(f"{argument} {os.fspath(path)!r} does not exist")
  try:
    array = pixels(open_image(file))
  except Exception as e:  # PIL raises many types for a broken file
    raise ValueError(f"{argument} {os.fspath(path)!r} is not a readable image: {e}") from None
  if array.shape != tuple(shape):
    raise ValueError(f"{argument} {os.fspath(path)!r} has shape {array.shape} (H, W, C); the "
                     f"model takes {tuple(shape)}")
  return array


def read_images(path: str, spec: DataSpec) -> tuple[list[str], np.ndarray, np.ndarray | None]:
  """(names, data [N, *shape], labels or None) from a folder of images or an .npz/.npy.

  A folder may hold `normal/` and `anomalous/` subfolders (labels 0 and 1);
  an .npz holds `x` (or `images`, `arr_0`) and optionally `labels`.
  """
  if is_array_file(path):
    array, archive = read_array(path, "`images`")
    if spec.kind == "image" and array.ndim == len(spec.shape) and spec.shape[-1] == 1:
      array = array[..., None]  # greyscale images stored without a channel axis
    data, _ = spec.batch(array, f"`images` {path!r}")
    if array.shape == spec.shape:
      raise ValueError(f"`images` {path!r} holds one example {array.shape}; need a batch "
                       f"[N, {', '.join(map(str, spec.shape))}]")
    labels = archive["labels"].astype(int) if "labels" in archive else None
    if labels is not None and labels.shape != (len(data),):
      raise ValueError(f"`images` {path!r}: labels has shape {labels.shape}; need ({len(data)},)")
    return [f"{i}" for i in range(len(data))], data, labels
  source = paths.resolve(path, "`images`")
  if spec.kind != "image":
    raise ValueError(f"`images` {path!r}: this run's data is {spec.kind} data; give an .npz "
                     "with x [N, ...] (and optionally labels)")
  if not source.is_dir():
    raise FileNotFoundError(f"`images` {path!r} is neither a folder nor an .npz file")
  files = list_images(source)
  if not files:
    raise ValueError(f"`images` {path!r} holds no images")
  names = [os.fspath(f)[len(os.fspath(source)):].lstrip("/") for f in files]
  images = np.stack([read_image(f, spec.shape, "`images` file") for f in files])
  groups = [n.split("/")[0] if "/" in n else "" for n in names]
  labels = None
  if set(groups) == {"normal", "anomalous"}:
    labels = np.array([g == "anomalous" for g in groups], int)
  return names, images, labels


def read_mask(path: str, shape: tuple[int, ...]) -> np.ndarray:
  """bool [*shape] (the data's positions: shape[:-1] of an example): from a black-and-white PNG
  (images; white (255) = known, black (0) = to generate) or an .npy/.npz of bools or 0/1
  (1 = known)."""
  file = paths.resolve(path, "`mask`")
  if not file.exists():
    raise FileNotFoundError(f"`mask` {path!r} does not exist")
  if is_array_file(path):
    mask, _ = read_array(path, "`mask`", ("mask", "x", "arr_0"))
    if mask.shape != tuple(shape):
      raise ValueError(f"`mask` {path!r} has shape {mask.shape}; the data's positions are "
                       f"{tuple(shape)}")
    if mask.dtype != bool and not set(np.unique(mask).tolist()) <= {0, 1}:
      raise ValueError(f"`mask` {path!r} must hold bools or 0/1 (1 = keep)")
    return mask.astype(bool)
  if len(shape) != 2:
    raise ValueError(f"`mask` {path!r}: a PNG mask is for images; this data's positions are "
                     f"{tuple(shape)}: give an .npy of bools")
  try:
    mask = with_channels(pixels(open_image(file)), 1)[..., 0]
  except Exception as e:  # PIL raises many types for a broken file
    raise ValueError(f"`mask` {path!r} is not a readable image: {e}") from None
  if mask.shape != tuple(shape):
    raise ValueError(f"`mask` {path!r} is {mask.shape[0]}×{mask.shape[1]}; the image is "
                     f"{shape[0]}×{shape[1]}")
  values = np.unique(mask)
  if not set(values.tolist()) <= {0, 255}:
    raise ValueError(f"`mask` {path!r} must be binary (0 = generate, 255 = keep); it holds "
                     f"{len(values)} grey levels")
  return mask == 255
