"""The measures `ddpm evaluate` reports, on files: FID/KID/IS of image sets (.npz or folders), and
bits/dim of a data split under a run."""

import io
import os

import numpy as np

from diffusion import paths
from diffusion.images import IMAGE_EXTENSIONS, list_images, open_image, pixels, with_channels


def load_image_set(path: str, argument: str) -> np.ndarray:
  """uint8 [N, H, W, C] from an .npz (`arr_0`, as `ddpm sample` and the FID tools write, or
  `images`) or a folder of PNG/JPEG files (searched recursively; all of one size)."""
  source = paths.resolve(path, argument)
  if path.endswith(".npz"):
    data = paths.load_npz(source, argument)
    key = next((k for k in ("arr_0", "images") if k in data), None)
    if key is None:
      raise ValueError(f"{argument} {path!r} holds no 'arr_0' or 'images' array; it holds "
                       f"{list(data)}")
    images = data[key]
  elif source.is_dir():
    files = list_images(source)
    if not files:
      raise ValueError(f"{argument} {path!r} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
    arrays = []
    for file in files:
      try:
        array = pixels(open_image(file))
        array = with_channels(array, 1 if array.shape[-1] == 1 else 3)
      except Exception as e:  # PIL raises many types for a broken file
        raise ValueError(f"{argument}: {os.fspath(file)!r} is not a readable image: {e}") from None
      arrays.append(array[..., None] if array.ndim == 2 else array)
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
      raise ValueError(f"{argument} {path!r} mixes image shapes {shapes[:3]}: resize them first")
    images = np.stack(arrays)
  else:
    raise FileNotFoundError(f"{argument} {path!r} is neither an .npz file nor a folder")
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"{argument} {path!r} holds {images.dtype} {images.shape}; need uint8 images "
                     "[N, H, W, 1 or 3] (0..255)")
  if len(images) < 2:
    raise ValueError(f"{argument} {path!r} holds {len(images)} image(s); the statistics need at "
                     "least 2 (and FID tens of thousands to be comparable with papers)")
  return images


class InceptionMeasure:
  """FID, KID, IS, precision and recall (k = 3, on the pool features, as ADM's suite) of uint8
  sample sets with the FID Inception, against one reference read once: images (.npz with
  arr_0, or a folder) or saved statistics (.npz with mu, sigma: FID only), or None (IS only).
  The network is loaded and the reference checked on construction; the reference's features
  are computed at the first measure (after its samples are checked) and kept."""

  def __init__(self, weights: str, reference: str | None, *, save_reference: str | None = None,
               batch: int = 200, kid_subsets: int = 100):
    from diffusion.evaluation.inception import InceptionFeatures, load_inception
    self.reference, self.save_reference, self.kid_subsets = reference, save_reference, kid_subsets
    self.stats = self.images = self.features = None
    if reference is not None:  # read and checked before anything runs
      self.stats = _saved_statistics(reference)
      if self.stats is not None and save_reference:
        raise ValueError(f"`save_reference`: `reference` {reference!r} already holds statistics")
      if self.stats is None:
        self.images = load_image_set(reference, "`reference`")
    self.inception = InceptionFeatures(load_inception(weights), batch_size=batch)

  def check(self, samples: np.ndarray) -> None:
    """Refuses samples of another resolution than the reference's."""
    if self.stats is not None and self.stats[2] is not None and (
        tuple(self.stats[2]) != samples.shape[1:3]):
      raise ValueError(f"`samples` are {samples.shape[1]}×{samples.shape[2]} but `reference` "
                       f"statistics were computed on {self.stats[2][0]}×{self.stats[2][1]} images")
    if self.images is not None and self.images.shape[1:3] != samples.shape[1:3]:
      raise ValueError(f"`samples` are {samples.shape[1]}×{samples.shape[2]} but `reference` "
                       f"images are {self.images.shape[1]}×{self.images.shape[2]}: compare like "
                       "with like")

  def __call__(self, samples: np.ndarray) -> dict:
    from diffusion.evaluation.frechet import (
        frechet_distance, inception_score, kernel_inception_distance, save_statistics,
        score_splits, statistics)
    from diffusion.evaluation.manifold import precision_recall
    self.check(samples)
    features, logits = self.inception(samples, "`samples`", progress=True)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    score, score_std = inception_score(probs / probs.sum(axis=1, keepdims=True),
                                       splits=score_splits(len(samples)))
    result = {"num_samples": len(samples), "is": score, "is_std": score_std}
    if self.reference is None:
      return result
    if self.stats is not None:
      mu, sigma, _ = self.stats
    else:
      if self.features is None:  # once for every measure of this reference
        self.features, _ = self.inception(self.images, "`reference`", progress=True)
        self.moments = statistics(self.features)
        if self.save_reference:
          save_statistics(self.save_reference, *self.moments,
                          image_shape=np.array(self.images.shape[1:3]))
      mu, sigma = self.moments
      result["kid"], result["kid_std"] = kernel_inception_distance(
          features, self.features, subsets=self.kid_subsets)
      result.update(precision_recall(self.features, features, progress=True))
    result["fid"] = frechet_distance(*statistics(features), mu, sigma)
    return result


def inception_metrics(samples: np.ndarray, weights: str, reference: str | None, *,
                      save_reference: str | None = None, batch: int = 200,
                      kid_subsets: int = 100) -> dict:
  """`InceptionMeasure`'s figures of one set of uint8 samples."""
  return InceptionMeasure(weights, reference, save_reference=save_reference, batch=batch,
                          kid_subsets=kid_subsets)(samples)


def _saved_statistics(path: str):
  """(mu, sigma, image shape or None) if `path` is a statistics .npz, else None."""
  source = paths.resolve(path, "`reference`")
  if not path.endswith(".npz") or not source.exists():
    return None
  data = paths.load_npz(source, "`reference`")
  if "mu" not in data:
    return None
  if "sigma" not in data:
    raise ValueError(f"`reference` {path!r} holds 'mu' but no 'sigma'")
  shape = tuple(int(s) for s in data["image_shape"]) if "image_shape" in data else None
  return data["mu"].astype(np.float64), data["sigma"].astype(np.float64), shape


def workdir_bits_per_dim(workdir: str, *, split: str, num: int | None, batch: int,
                         chunk_size: int, seed: int, step: int | None = None) -> dict:
  """bits/dim of `num` images (default all) of a data split under a run's EMA network."""
  import jax
  from diffusion.evaluation.nll import dataset_bits_per_dim
  from diffusion.distributed import make_mesh, replicate
  from diffusion.runs import base_key, load_run
  from diffusion.sampling import needs_ddpm
  run = load_run(workdir, step)
  _, _, variables, step = run
  needs_ddpm(run, "the variational bound (bits/dim)")
  if not run.method.every_timestep:
    raise ValueError(f"bits/dim sums the bound over every timestep; `workdir` {workdir!r} is a "
                     f"few-step model (method {run.method.name!r}): evaluate its teacher, or "
                     "its samples")
  images, labels = _split_images(run, split, num)
  mesh = make_mesh()
  result = dataset_bits_per_dim(run, replicate(variables, mesh), images, mesh,
                                base_key(seed, "evaluate"), labels=labels, batch=batch,
                                chunk_size=chunk_size)
  result.update(step=step, split=split)
  if jax.process_index() == 0:
    buffer = io.BytesIO()
    np.save(buffer, result["terms"])
    paths.write_bytes(paths.resolve(workdir, "`workdir`") / f"bpd_terms_{split}_step{step}.npy",
                      buffer.getvalue())
  return result


def workdir_ode_bits_per_dim(workdir: str, *, split: str, num: int | None, batch: int,
                             seed: int, step: int | None = None, probes: int = 1,
                             exact: bool = False, decoder: bool = False) -> dict:
  """bits/dim of `num` images (default all) of a data split by the probability-flow ODE of a
  run's EMA network (`evaluation.ode_nll`)."""
  from diffusion.distributed import make_mesh, replicate
  from diffusion.evaluation.ode_nll import dataset_ode_bits_per_dim
  from diffusion.runs import base_key, load_run
  run = load_run(workdir, step)
  run.method.ode_span()  # a method without a probability-flow ODE of its own says so
  images, labels = _split_images(run, split, num)
  mesh = make_mesh()
  result = dataset_ode_bits_per_dim(run, replicate(run.variables, mesh), images, mesh,
                                    base_key(seed, "evaluate"), labels=labels, batch=batch,
                                    probes=probes, exact=exact, decoder=decoder)
  result.update(step=run.step, split=split)
  return result


def _split_images(run, split: str, num: int | None):
  """(uint8 images [n, ...], labels [n] or None) of the first `num` (default all) examples of
  a data split of a run's data, checked for a likelihood (8-bit data, no conditioning image)."""
  from diffusion.data import make_source
  config, model = run.config, run.model
  if run.diffusion.spec.dtype != "uint8":
    raise ValueError("bits/dim is defined on 8-bit data (images, volumes); this run's data is "
                     f"{run.diffusion.spec.dtype}")
  if model.cond_channels:
    raise ValueError("bits/dim evaluates unconditional or class-conditional models; this one is "
                     "image-conditioned")
  if config.data.name == "digits":
    from diffusion.data.sources import DIGITS_SPLITS
    if split not in DIGITS_SPLITS:
      raise ValueError(f"`split` must be one of {', '.join(DIGITS_SPLITS)} for the digits; got "
                       f"{split!r}")
  data = config.data.copy_and_resolve_references()
  with data.unlocked():
    data.split = split
    data.condition = ""
  source = make_source(data)
  count = len(source) if num is None else min(num, len(source))
  if count < 1:
    raise ValueError(f"`num` must be positive; got {num}")
  items = [source[i] for i in range(count)]
  images = np.stack([item["x"] for item in items])
  labels = np.array([item.get("label", 0) for item in items]) if model.num_classes else None
  return images, labels
