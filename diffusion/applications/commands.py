"""The `ddpm inpaint | denoise | enhance | anomaly` commands: read PNG/NPY/NPZ, run, write
PNG/NPZ/CSV (local paths or object-store URIs); images as PNGs, data of other kinds as arrays."""

import csv
import io
import os

import numpy as np
from etils import epath

from diffusion.applications.anomaly import anomaly_scores, auroc
from diffusion.applications.denoise import denoise
from diffusion.applications.enhance import enhance
from diffusion.applications.inpaint import inpaint
from diffusion import paths
from diffusion.applications.imageio import is_array_file, read_array, read_example, read_images
from diffusion.config import data_spec, distill_method
from diffusion.dataspec import DataSpec
from diffusion.distributed import make_mesh, replicate
from diffusion.images import open_image, pixels, save_png, to_uint8, with_channels
from diffusion.previews import save_preview
from diffusion.training.checkpoint import load_run
from diffusion.training.state import base_key


def _run(args, *, table: bool = False):
  """(config, spec, denoiser, replicated variables, mesh, key, output path) of an application
  command; the output path is checked first, so that a bad one fails before anything runs.
  Images are written as PNGs (or an .npz if --out names one), other data as an .npz with a
  preview PNG beside it; `table`: the output is a CSV whatever the data."""
  out = paths.resolve(args.out, "`out`")
  if getattr(args, "num_samples", 1) < 1:
    raise ValueError(f"`num_samples` must be >= 1; got {args.num_samples}")
  if not table and out.suffix.lower() not in (".png", ".npz"):
    raise ValueError(f"`out` {args.out!r} must end in .png (images) or .npz (any data)")
  if table and out.suffix.lower() != ".csv":
    raise ValueError(f"`out` {args.out!r} must end in .csv (the scores; the maps go beside it "
                     "in an .npz)")
  config, model, variables, _ = load_run(args.workdir, args.step)
  if distill_method(config) and args.command != "enhance":
    raise ValueError(f"`workdir` {args.workdir!r} is a few-step model (config.distill.method "
                     f"{distill_method(config)!r}), trained at a few noise levels only: "
                     f"ddpm {args.command} needs a model of every timestep, e.g. its teacher's")
  if model.cond_channels and args.command != "enhance":
    raise ValueError(f"`workdir` {args.workdir!r}: this model is conditioned on an input "
                     f"(cond_channels = {model.cond_channels}); ddpm {args.command} needs an "
                     "unconditioned one (this one enhances: `ddpm enhance`)")
  spec = data_spec(config)
  if not table and spec.kind != "image" and out.suffix != ".npz":
    raise ValueError(f"`out` {args.out!r}: this run's data is {spec.kind} data; the output is "
                     "an .npz (with a preview .png beside it)")
  mesh = make_mesh()
  return config, spec, model, replicate(variables, mesh), mesh, base_key(args.seed, "sample"), out


def _write_samples(out: epath.Path, samples: np.ndarray, spec: DataSpec, **extra) -> None:
  """Samples [N, *shape] in the data's units: to an .npz (`arr_0`, as `ddpm sample` writes, and
  `extra`) with a preview PNG beside it, or as PNGs: sample 0 to `out`, further ones to
  out_1.png, out_2.png, ..."""
  if out.suffix == ".npz":
    paths.save_npz(out, arr_0=samples, **extra)
    save_preview(out.with_suffix(".png"), samples, spec)
    print(f"{os.fspath(out)}: {len(samples)} samples (preview {out.with_suffix('.png').name})")
    return
  for i, sample in enumerate(samples):
    save_png(out if i == 0 else out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}"), sample)
  more = f" and {out.stem}_1{out.suffix} ... _{len(samples) - 1}" if len(samples) > 1 else ""
  print(f"{os.fspath(out)}{more}: {len(samples)} samples")


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


def inpaint_command(args) -> None:
  config, spec, model, variables, mesh, key, out = _run(args)
  data = read_example(args.image, spec)
  mask = read_mask(args.mask, spec.shape[:-1])
  samples = inpaint(model, variables, config, data, mask, mesh, key, num_samples=args.num_samples,
                    steps=args.steps, jump_length=args.jump_length, resamplings=args.resamplings,
                    class_label=args.class_label)
  _write_samples(out, samples, spec)


def denoise_command(args) -> None:
  config, spec, model, variables, mesh, key, out = _run(args)
  noisy = read_example(args.image, spec)
  if noisy.shape == spec.shape:
    noisy = np.repeat(noisy[None], args.num_samples, 0)
  elif args.num_samples > 1 or out.suffix != ".npz":
    raise ValueError(f"`image` {args.image!r} holds a batch: denoise it into an .npz `out`, one "
                     "sample each (several samples are drawn for one example)")
  samples = denoise(model, variables, config, noisy, args.sigma, mesh, key, sampler=args.sampler,
                    steps=args.steps, seed=args.seed, class_label=args.class_label)
  if out.suffix == ".npz":
    if args.num_samples > 1:
      _write_samples(out, spec.from_model(samples), spec, mean=spec.from_model(samples.mean(0)),
                     std=spec.difference(samples.std(axis=0)))
    else:
      _write_samples(out, spec.from_model(samples), spec)
    return
  mean = samples.mean(axis=0)
  save_png(out, to_uint8(mean))
  if args.num_samples > 1:
    std = samples.std(axis=0) / 2  # in units of the [0, 1] pixel range
    paths.save_npz(out.with_suffix(".npz"), mean=(mean + 1) / 2, std=std,
                   samples=to_uint8(samples))
    scale = 255 / max(float(std.max()), 1e-8)
    save_png(out.with_name(f"{out.stem}_std.png"), np.clip(std * scale, 0, 255).astype(np.uint8))
  print(f"{os.fspath(out)}: the mean of {len(samples)} samples" + (
      f" (and {out.with_suffix('.npz').name}, {out.stem}_std.png)" if args.num_samples > 1
      else ""))


def enhance_command(args) -> None:
  config, spec, model, variables, mesh, key, out = _run(args)
  if not model.cond_channels:
    raise ValueError(f"`workdir` {args.workdir!r}: the model is not conditioned "
                     "(config.model.cond_channels = 0); train it with config.data.condition set")
  degraded = read_example(args.image, spec, channels=model.cond_channels)
  if degraded.ndim == len(spec.shape):
    degraded = np.repeat(degraded[None], args.num_samples, 0)
  samples = enhance(model, variables, config, degraded, mesh, key, sampler=args.sampler,
                    steps=args.steps, class_label=args.class_label)
  _write_samples(out, spec.from_model(samples), spec)


def anomaly_command(args) -> float | None:
  config, spec, model, variables, mesh, key, out = _run(args, table=True)
  names, images, labels = read_images(args.images, spec)
  scores, maps, _ = anomaly_scores(model, variables, config, images, mesh, key, step=args.at_step,
                                   sampler=args.sampler, steps=args.steps, seed=args.seed,
                                   class_label=args.class_label)
  table = io.StringIO(newline="")
  writer = csv.writer(table)
  writer.writerow(["image", "score"] + (["label"] if labels is not None else []))
  for i, name in enumerate(names):
    writer.writerow([name, f"{scores[i]:.6g}"] + ([int(labels[i])] if labels is not None else []))
  paths.write_bytes(out, table.getvalue().encode())
  paths.save_npz(out.with_name(f"{out.stem}_maps.npz"), maps=maps, scores=scores)
  print(f"{os.fspath(out)}: the scores of {len(names)} examples (maps: {out.stem}_maps.npz)")
  if labels is None:
    return None
  if len(set(np.asarray(labels).tolist())) < 2:
    print(f"no AUROC: `images` {args.images!r} is labelled "
          f"{'anomalous' if labels[0] else 'normal'} only; {out.name} holds the scores")
    return None
  value = auroc(scores, labels)
  print(f"AUROC {value:.4f} ({int(labels.sum())} anomalous, {int((1 - labels).sum())} normal)")
  return value

