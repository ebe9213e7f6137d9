"""Random-access sources: `len(source)` and `source[i]` -> {"x": array, "label": int[, "cond"]}.

The contract a user's own source meets too: "x" a NumPy array of
config.data.shape (uint8 or float), "label" an int (optional), "cond" a
conditioning input (optional); `num_classes` an attribute if labels mean
classes. Built in: the digits, image folders, paired folders and degraded
images (uint8 [H, W, C] at the configured resolution and channels), NumPy
arrays (.npy memory-mapped, .npz, or a folder of x.npy/label.npy/cond.npy),
any TFDS feature by name, and the synthetic data of the worked examples
(`synthetic.py`). Each checks what it can before training starts (a missing
folder, a dataset TFDS does not know) and raises with a clear message; an
image folder opens no file before it is read (`folders.py`).
"""

import os

import numpy as np
from PIL import Image, ImageFilter

from diffusion import paths
from diffusion.images import resize_and_crop, with_channels
from diffusion.data.folders import ImageFolderSource, PairedFolderSource
from diffusion.dataspec import from_data_config



DIGITS_SPLITS = ("train", "test", "all")
DIGITS_TEST_SIZE = 297  # held out from a fixed permutation: 1,500 train, 297 test


def digits_split_indices(split: str) -> np.ndarray:
  """Indices into scikit-learn's digits of `split`: "train" (1,500), "test" (297) or "all".

  The split is a fixed random permutation (seed 0), so train and test are
  drawn from the same writers; both keep scikit-learn's order.
  """
  if split not in DIGITS_SPLITS:
    raise ValueError(f"config.data.split must be one of {', '.join(DIGITS_SPLITS)} for the "
                     f"digits; got {split!r}")
  order = np.random.default_rng(0).permutation(1797)
  if split == "all":
    return np.arange(1797)
  return np.sort(order[DIGITS_TEST_SIZE:] if split == "train" else order[:DIGITS_TEST_SIZE])


class DigitsSource:
  """scikit-learn's 1,797 handwritten digits (8×8, 17 grey levels), shipped inside the package.

  Pixel values 0..16 are mapped onto 0..255; labels are the digits 0-9.
  `split` is "train" (1,500 images), "test" (the other 297) or "all".
  """
  num_classes = 10

  def __init__(self, image_size: int = 8, channels: int = 1, split: str = "train"):
    from sklearn.datasets import load_digits
    index = digits_split_indices(split)
    digits = load_digits()
    images = np.round(digits.images[index] * (255 / 16)).astype(np.uint8)[..., None]
    self.images = np.stack([with_channels(resize_and_crop(im, image_size), channels)
                            for im in images])
    self.labels = digits.target[index].astype(np.int64)

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict:
    return {"x": self.images[index], "label": int(self.labels[index])}

  def read_batch(self, indices) -> dict:
    return {"x": self.images[indices], "label": self.labels[indices]}


class TfdsSource:
  """A TFDS dataset through `tfds.data_source` (ArrayRecord files, no TensorFlow at run time).

  `data_dir` may be a local folder or a bucket where the dataset was
  prepared beforehand (`tfds build` elsewhere); nothing is downloaded here.
  `image_key` names the feature that becomes "x": an image is resized and
  cropped to `image_size` with `channels` channels; with `image_size` None
  the feature is taken as it is (a volume, a sequence, coordinates).
  """

  def __init__(self, name: str, split: str, image_size: int | None, channels: int,
               data_dir: str | None = None, image_key: str = "image", label_key: str = "label"):
    import tensorflow_datasets as tfds
    try:
      self.source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except tfds.core.registered.DatasetNotFoundError:
      raise ValueError(f"config.data.name {name!r}: TFDS knows no such dataset") from None
    except Exception as e:  # TFDS raises several kinds for an unprepared dataset
      raise FileNotFoundError(
          f"config.data.name {name!r} is not prepared as ArrayRecord under data_dir "
          f"{data_dir!r}: prepare it with `tfds build {name} --file_format=array_record` "
          f"where the network is reachable ({type(e).__name__}: {str(e)[:200]})") from None
    features = self.source.dataset_info.features
    if image_key not in features:
      raise ValueError(f"dataset {name!r} has no feature {image_key!r} (it has {list(features)})")
    self.image_key, self.label_key = image_key, label_key
    label = features[label_key] if label_key in features else None
    self.num_classes = getattr(label, "num_classes", 0) or 0
    self.image_size, self.channels = image_size, channels
    if len(self.source) == 0:
      raise ValueError(f"split {split!r} of {name!r} is empty")

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    example = self.source[int(index)]
    label = int(example[self.label_key]) if self.label_key in example else 0
    x = np.asarray(example[self.image_key])
    if self.image_size is not None:
      x = resize_and_crop(with_channels(x, self.channels), self.image_size)
    return {"x": x, "label": label}


DEGRADATIONS = ("blur", "colour_cast", "low_light", "downscale")


def degrade(image: np.ndarray, kinds: tuple[str, ...], rng: np.random.Generator) -> np.ndarray:
  """A synthetic degradation of uint8 [H, W, C]: Gaussian blur, a colour cast (the red
  loss of underwater images), low light (dimmed, noisy), downscaling by 2 and back."""
  x = image.astype(np.float32)
  for kind in kinds:
    if kind == "blur":
      pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
      pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5) * image.shape[0] / 32))
      x = np.asarray(pil, np.float32).reshape(image.shape)
    elif kind == "colour_cast":
      gains = rng.uniform([0.4, 0.8, 0.9], [0.7, 1.0, 1.1])[:image.shape[-1]]
      x = x * gains if image.shape[-1] == 3 else x * gains[1]
    elif kind == "low_light":
      x = x * rng.uniform(0.2, 0.5) + rng.normal(0, 4, x.shape)
    elif kind == "downscale":
      size = image.shape[:2]
      small = np.clip(x, 0, 255).astype(np.uint8)
      pil = Image.fromarray(small[..., 0] if image.shape[-1] == 1 else small)
      pil = pil.resize((size[1] // 2, size[0] // 2), Image.BICUBIC).resize(size[::-1], Image.BICUBIC)
      x = np.asarray(pil, np.float32).reshape(image.shape)
    else:
      raise ValueError(f"config.data.degradations: unknown {kind!r} (known: {', '.join(DEGRADATIONS)})")
    image = np.clip(np.round(x), 0, 255).astype(np.uint8)
  return image


class DegradedSource:
  """(image, label, degraded image) from another source: a degradation seeded by the index."""

  def __init__(self, source, kinds: tuple[str, ...], seed: int = 0):
    unknown = [k for k in kinds if k not in DEGRADATIONS]
    if not kinds or unknown:
      raise ValueError(f"config.data.degradations must name some of {', '.join(DEGRADATIONS)}; "
                       f"got {','.join(kinds)!r}")
    self.source, self.kinds, self.seed = source, kinds, seed
    self.num_classes = source.num_classes

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    example = self.source[index]
    image = example["x"]
    return {"x": image, "label": example.get("label", 0),
            "cond": degrade(image, self.kinds, np.random.default_rng([self.seed, index]))}


class NumpySource:
  """Examples from NumPy arrays: a .npy file (memory-mapped: only the rows read are loaded), an
  .npz file with "x" and optionally "label" and "cond" (loaded whole), or a folder holding
  x.npy and optionally label.npy and cond.npy (each memory-mapped). Rows are examples."""

  def __init__(self, path: str):
    root = paths.resolve(path, "config.data.path")
    local = os.fspath(root)
    if not root.exists():
      raise FileNotFoundError(f"config.data.path {path!r} does not exist")
    try:
      load = lambda p: np.load(p, mmap_mode="r") if "://" not in local else np.load(p.open("rb"))
      if root.is_dir():
        if not (root / "x.npy").exists():
          raise FileNotFoundError(f"config.data.path {path!r}: a folder of arrays needs x.npy "
                                  "(and optionally label.npy, cond.npy)")
        arrays = {name: load(root / f"{name}.npy") for name in ("x", "label", "cond")
                  if (root / f"{name}.npy").exists()}
      elif local.endswith(".npy"):
        arrays = {"x": load(root)}
      elif local.endswith(".npz"):
        with root.open("rb") as f, np.load(f) as npz:
          if "x" not in npz:
            raise ValueError(f"config.data.path {path!r}: the .npz has no array 'x' (it has "
                             f"{list(npz.keys())})")
          arrays = {name: npz[name] for name in ("x", "label", "cond") if name in npz}
      else:
        raise ValueError(f"config.data.path {path!r} must be a .npy or .npz file or a folder "
                         "holding x.npy")
    except Exception as e:  # NumPy's and zipfile's errors of a truncated or broken file
      if str(e).startswith("config.data.path"):
        raise
      raise ValueError(f"config.data.path {path!r} cannot be read as NumPy arrays (a truncated "
                       f"or broken file?): {type(e).__name__}: {e}") from None
    n = len(arrays["x"])
    if n == 0:
      raise ValueError(f"config.data.path {path!r} holds no examples")
    for name, array in arrays.items():
      if len(array) != n:
        raise ValueError(f"config.data.path {path!r}: {name} has {len(array)} rows, x has {n}")
    self.arrays = arrays
    labels = arrays.get("label")
    self.num_classes = int(np.max(labels)) + 1 if labels is not None else 0

  def __len__(self) -> int:
    return len(self.arrays["x"])

  def __getitem__(self, index: int) -> dict:
    example = {"x": np.asarray(self.arrays["x"][index])}
    if "label" in self.arrays:
      example["label"] = int(self.arrays["label"][index])
    if "cond" in self.arrays:
      example["cond"] = np.asarray(self.arrays["cond"][index])
    return example

  def read_batch(self, indices) -> dict:
    return {name: np.asarray(array[np.asarray(indices)]) for name, array in self.arrays.items()}


CONDITIONS = ("", "pairs", "degrade")


def make_source(config):
  """The source of a config's `data` section.

  name: "digits", "folder" (image files under `path`), "numpy" (arrays at
  `path`), "arrayrecord" (shards `ddpm prepare-data` wrote to `path`), a synthetic set of `synthetic.SOURCES` ("phantoms", "backbones",
  "sinusoids") or a TFDS name (its feature `feature`, default "image").
  condition: "" (none), "pairs" (`path/input/` and `path/target/`) or
  "degrade" (the named source with `degradations`, e.g. "blur,low_light").
  Images come out at the shape's resolution and channels.
  """
  from diffusion.data import synthetic
  spec = from_data_config(config)
  image = spec.kind == "image"
  size, channels = (spec.shape[0], spec.shape[-1]) if image else (None, spec.shape[-1])
  if image and spec.shape[0] != spec.shape[1]:
    raise ValueError(f"config.data.shape {spec.shape}: image sources make square images")
  condition = config.get("condition", "")
  if condition not in CONDITIONS:
    raise ValueError(f"config.data.condition must be one of {CONDITIONS}; got {condition!r}")
  name = config.name
  needs_image = name in ("digits", "folder") or condition in ("pairs", "degrade")
  if needs_image and not image:
    raise ValueError(f"config.data.name {name!r} (condition {condition!r}) gives images; "
                     f"config.data.shape {spec.shape} is {spec.kind} data")
  if condition == "pairs":
    return PairedFolderSource(config.path, size, channels)
  if name == "digits":
    source = DigitsSource(size, channels, config.get("split", "train"))
  elif name == "folder":
    source = ImageFolderSource(config.path, size, channels)
  elif name == "numpy":
    source = NumpySource(config.path)
  elif name == "arrayrecord":
    from diffusion.data.arrayrecord import ArrayRecordSource
    source = ArrayRecordSource(config.path)
  elif name in synthetic.SOURCES:
    source = synthetic.SOURCES[name](spec, split=config.get("split", "train"),
                                     size=config.get("size", 0) or None)
  else:
    source = TfdsSource(name, config.get("split", "train"), size, channels,
                        data_dir=config.get("data_dir") or None,
                        image_key=config.get("feature", "") or "image")
  if condition == "degrade":
    kinds = tuple(k.strip() for k in config.get("degradations", "").split(",") if k.strip())
    source = DegradedSource(source, kinds)
  return source
