"""Images on the host: pixels to and from the model's [-1, 1] range, image files (local or in
an object store), a batch as one PNG grid, and any image as [size, size, channels] uint8."""

import io
import math

import numpy as np
from etils import epath
from PIL import Image

from diffusion import paths

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def to_uint8(x) -> np.ndarray:
  """[-1, 1] floats -> uint8 pixels, rounding to the nearest of the 256 levels."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [-1, 1]."""
  return np.asarray(images, np.float32) / 127.5 - 1.0


def grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 [rows·(H+pad)+pad, cols·(W+pad)+pad, C] image."""
  n, h, w, c = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = image
  return out


def save_grid(path: epath.Path, images: np.ndarray, *, scale: int | None = None,
              columns: int | None = None) -> None:
  """Writes `images` (uint8 [N, H, W, C]) as a PNG grid (`columns` wide, default square);
  small images are enlarged (nearest)."""
  columns = columns or math.ceil(math.sqrt(len(images)))
  array = grid(images, columns)
  scale = scale or max(1, 256 // (images.shape[1] * columns))
  if scale > 1:
    array = array.repeat(scale, axis=0).repeat(scale, axis=1)
  save_png(path, array)


def png_bytes(image: np.ndarray) -> bytes:
  """uint8 [H, W, C] (C = 1: grey) as the bytes of a PNG file."""
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
  return buffer.getvalue()


def save_png(path: epath.Path, image: np.ndarray) -> None:
  """Writes uint8 [H, W, C] as a PNG file (local or in an object store)."""
  paths.write_bytes(path, png_bytes(image))


def list_images(folder: epath.Path) -> list[epath.Path]:
  """The PNG/JPEG files under `folder`, recursively, sorted."""
  return [f for f in paths.files_under(folder) if f.suffix.lower() in IMAGE_EXTENSIONS]


def open_image(path: epath.Path) -> Image.Image:
  """A PIL image of a file (local or in an object store), its pixels read."""
  with path.open("rb") as f:
    data = f.read()
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except (OSError, ValueError, SyntaxError) as e:  # PIL's errors of a broken or foreign file
    raise ValueError(str(e).split(" <_io.BytesIO")[0]) from None  # not the buffer's repr
  return image


def resize_and_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Resizes the shorter side to `size` (bicubic, antialiased) and center-crops to size × size.

  image: uint8 [H, W, C]; returns uint8 [size, size, C].
  """
  height, width = image.shape[:2]
  if (height, width) == (size, size):
    return image
  scale = size / min(height, width)
  new = (max(size, round(width * scale)), max(size, round(height * scale)))
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  array = np.asarray(pil.resize(new, Image.BICUBIC, reducing_gap=None))
  array = array.reshape(array.shape[:2] + (image.shape[-1],))
  top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
  return array[top:top + size, left:left + size]


def with_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """uint8 [H, W] or [H, W, C] as [H, W, `channels`]: grey repeated, RGB(A) to grey, alpha dropped."""
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == channels:
    return image
  if image.shape[-1] == 1 and channels == 3:
    return np.repeat(image, 3, axis=-1)
  if image.shape[-1] in (3, 4) and channels == 1:
    return np.asarray(Image.fromarray(image[..., :3]).convert("L"))[..., None]
  if image.shape[-1] == 4 and channels == 3:
    return image[..., :3]
  raise ValueError(f"cannot turn an image of {image.shape[-1]} channels into {channels}")


def pixels(image: Image.Image) -> np.ndarray:
  """A PIL image's pixels as uint8 [H, W, C]: C = 1 for grey (bilevel, 8- and 16-bit), 4 for
  RGBA and palettes with transparency, 3 for every other colour mode. 16-bit grey is scaled
  to 8 bits (v / 257, rounded: PIL's own conversion clips it to 255); a mode of no known range
  (32-bit integers outside a PNG, floats) is a ValueError."""
  mode = image.mode
  if mode.startswith("I;16") or (mode == "I" and image.format == "PNG"):  # PNG's 16-bit grey
    wide = np.asarray(image).astype(np.float64)
    return np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8)[..., None]
  if mode in ("I", "F"):
    raise ValueError(f"its pixels are {'32-bit integers' if mode == 'I' else 'floats'} (PIL "
                     f"mode {mode}) of no known range: save it as an 8- or 16-bit PNG")
  if mode in ("1", "L", "LA", "La"):
    return np.asarray(image.convert("L"))[..., None]
  alpha = mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info)
  return np.asarray(image.convert("RGBA" if alpha else "RGB"))


def image_array(image, channels: int, size: int) -> np.ndarray:
  """A PIL image as uint8 [size, size, channels]: converted, resized and center-cropped."""
  return resize_and_crop(with_channels(pixels(image), channels), size)
