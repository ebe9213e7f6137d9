"""What one example of the data is: its shape, its kind, its dtype and units.

`DataSpec` turns data into the model's units and back:

  uint8 data (images, volumes): pixels 0..255 <-> [-1, 1], as in DDPM;
  float data: x / scale <-> x · scale (e.g. Å for coordinates with scale 10,
    so a protein fragment spans a few model units).

Kinds, and what belongs to each: "image" ([H, W, C]; left-right flips),
"volume" ([D, H, W, C]; flips of the last spatial axis), "sequence"
([L, C]; none unless asked) and "points" ([N, 3]; random rotations, and the
diffusion runs in the subspace of zero centre of mass: data, noise and
predictions are centred, so the process is translation-invariant).
"""

import dataclasses
import math
import numbers

import jax.numpy as jnp
import numpy as np

KINDS = ("image", "volume", "sequence", "points")
DTYPES = ("uint8", "float32")


@dataclasses.dataclass(frozen=True)
class DataSpec:
  shape: tuple[int, ...]
  kind: str = "image"
  dtype: str = "uint8"
  scale: float = 1.0

  def to_model(self, x):
    """Data -> the model's units, float32 (NumPy in, NumPy out; JAX in, JAX out)."""
    xp = jnp if not isinstance(x, np.ndarray) else np
    if self.dtype == "uint8":
      return xp.asarray(x, xp.float32) / 127.5 - 1.0
    return xp.asarray(x, xp.float32) / self.scale

  def from_model(self, x) -> np.ndarray:
    """The model's units -> data on the host: uint8 (rounded, clipped) or float32."""
    x = np.asarray(x, np.float32)
    if self.dtype == "uint8":
      return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return x * np.float32(self.scale)

  def noise_std(self, sigma: float, argument: str = "sigma") -> float:
    """The standard deviation of additive Gaussian noise in the model's units, for `sigma` in
    the data's: for uint8 data in units of the [0, 1] range (so in (0, 1]), for float
    data in the data's own units (× scale of the model's)."""
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(sigma):
      raise ValueError(f"{argument} must be a number; got {sigma!r}")
    if self.dtype == "uint8":
      if not 0 < sigma <= 1:
        raise ValueError(f"{argument} must lie in (0, 1] (a standard deviation in units of the "
                         f"[0, 1] pixel range); got {sigma!r}")
      return 2.0 * sigma
    if not sigma > 0:
      raise ValueError(f"{argument} must be > 0 (a standard deviation in the data's units); "
                       f"got {sigma!r}")
    return sigma / self.scale

  def difference(self, d):
    """A difference in the model's units -> the units `noise_std` takes: of the [0, 1]
    range for uint8 data, the data's own for float data."""
    return d / 2.0 if self.dtype == "uint8" else d * self.scale

  def batch(self, x, argument: str, channels: int | None = None) -> tuple[np.ndarray, bool]:
    """(x [N, *shape], whether x was one example) for data given as one example or a batch;
    a ValueError naming `argument` if its shape or dtype is not this data's. `channels`
    replaces the last axis (a conditioning input)."""
    shape = self.shape if channels is None else self.shape[:-1] + (channels,)
    x = np.asarray(x)
    single = x.shape == shape
    if not single and x.shape[1:] != shape:
      raise ValueError(f"{argument} has shape {x.shape}; the model takes {shape} or a batch "
                       f"[N, {', '.join(map(str, shape))}]")
    if (x.dtype == np.uint8) != (self.dtype == "uint8") or not (
        x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
      raise ValueError(f"{argument} is {x.dtype}; this run's data is {self.dtype}")
    return (x[None] if single else x), single

  @property
  def centred(self) -> bool:
    """Whether the diffusion runs in the zero-centre-of-mass subspace (point sets)."""
    return self.kind == "points"

  def project(self, x):
    """x [..., N, d] with its mean over the points removed (point sets); else x."""
    if not self.centred:
      return x
    return x - x.mean(axis=-2, keepdims=True)

  def project_output(self, out, channels: int):
    """A network's output [..., N, channels × (1 or 2)] with its prediction (the first
    `channels` channels; the rest are learned variances) centred for point sets; else out."""
    if not self.centred:
      return out
    if out.shape[-1] == channels:
      return self.project(out)
    return jnp.concatenate([self.project(out[..., :channels]), out[..., channels:]], -1)


def infer_kind(shape: tuple[int, ...]) -> str:
  return {2: "sequence", 3: "image", 4: "volume"}.get(len(shape), "sequence")


def from_data_config(data) -> DataSpec:
  """The spec of a config's `data` section (a ConfigDict or dict).

  `shape` gives the example's shape; without it (configs and workdirs from
  before shapes existed) it is (image_size, image_size, channels) of uint8
  images. `kind` defaults by rank (2: sequence, 3: image, 4: volume); point
  sets must say kind = "points". `dtype` defaults to uint8 for images and
  volumes, float32 otherwise; `scale` (float data only) to 1.
  """
  get = data.get
  shape = get("shape") or None
  if shape is None:
    shape = (get("image_size"), get("image_size"), get("channels", 3))
    if shape[0] is None:
      raise ValueError("config.data needs shape (or image_size and channels)")
  if (not isinstance(shape, (tuple, list)) or not shape
      or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)):
    raise ValueError(f"config.data.shape must be a tuple of positive ints; got {shape!r}")
  shape = tuple(shape)
  kind = get("kind") or infer_kind(shape)
  if kind not in KINDS:
    raise ValueError(f"config.data.kind must be one of {', '.join(KINDS)}; got {kind!r}")
  if kind == "points" and len(shape) != 2:
    raise ValueError(f"config.data.shape {shape}: point sets are (num_points, dims)")
  if kind == "image" and len(shape) != 3:
    raise ValueError(f"config.data.shape {shape}: images are (height, width, channels)")
  if kind == "volume" and len(shape) != 4:
    raise ValueError(f"config.data.shape {shape}: volumes are (depth, height, width, channels)")
  dtype = get("dtype") or ("uint8" if kind in ("image", "volume") else "float32")
  if dtype not in DTYPES:
    raise ValueError(f"config.data.dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
  scale = get("scale", 1.0)
  if scale is None:
    scale = 1.0
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
      math.isfinite(scale) and scale > 0):
    raise ValueError(f"config.data.scale must be a number > 0; got {scale!r}")
  return DataSpec(shape, kind, dtype, float(scale))
