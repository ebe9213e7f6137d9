"""The `ddpm inpaint | denoise | enhance | anomaly` commands: read PNG/NPZ, run, write PNG/NPZ/CSV
(local paths or object-store URIs)."""

import csv
import io

import numpy as np
from etils import epath

from diffusion.applications.anomaly import anomaly_scores, auroc
from diffusion.applications.denoise import denoise
from diffusion.applications.enhance import enhance
from diffusion.applications.inpaint import inpaint
from diffusion import paths
from diffusion.applications.imageio import read_image, read_images
from diffusion.config import data_shape, data_spec
from diffusion.distributed import make_mesh, replicate
from diffusion.images import open_image, save_png, to_uint8
from diffusion.training.checkpoint import load_run
from diffusion.training.state import base_key


def _run(args):
  """(config, denoiser, replicated variables, mesh, key, output path) of an application
  command; the output path is checked first, so that a bad one fails before anything runs."""
  out = paths.resolve(args.out, "--out")
  config, model, variables, _ = load_run(args.workdir, args.step)
  spec = data_spec(config)
  if spec.kind != "image" or spec.dtype != "uint8":
    raise ValueError(f"--workdir {args.workdir!r}: this command reads and writes images; the "
                     f"run's data is {spec.kind} data ({spec.dtype}): call the Python function "
                     "(diffusion.applications) on arrays instead")
  mesh = make_mesh()
  return config, model, replicate(variables, mesh), mesh, base_key(args.seed, "sample"), out


def _write_samples(out: epath.Path, samples: np.ndarray) -> None:
  """Sample 0 to `out`, further ones to out_1.png, out_2.png, ..."""
  for i, sample in enumerate(samples):
    save_png(out if i == 0 else out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}"), sample)


def read_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
  """bool [H, W] from a black-and-white PNG: white (255) = known, black (0) = to generate."""
  file = paths.resolve(path, "--mask")
  if not file.exists():
    raise FileNotFoundError(f"--mask {path!r} does not exist")
  mask = np.asarray(open_image(file).convert("L"))
  if mask.shape != tuple(shape):
    raise ValueError(f"--mask {path!r} is {mask.shape[0]}×{mask.shape[1]}; the image is "
                     f"{shape[0]}×{shape[1]}")
  values = np.unique(mask)
  if not set(values.tolist()) <= {0, 255}:
    raise ValueError(f"--mask {path!r} must be binary (0 = generate, 255 = keep); it holds "
                     f"{len(values)} grey levels")
  return mask == 255


def inpaint_command(args) -> None:
  config, model, variables, mesh, key, out = _run(args)
  image = read_image(args.image, data_shape(config))
  mask = read_mask(args.mask, image.shape[:2])
  samples = inpaint(model, variables, config, image, mask, mesh, key, num_samples=args.num_samples,
                    steps=args.steps, jump_length=args.jump_length, resamplings=args.resamplings,
                    class_label=args.class_label)
  _write_samples(out, samples)


def denoise_command(args) -> None:
  config, model, variables, mesh, key, out = _run(args)
  noisy = read_image(args.image, data_shape(config))
  samples = denoise(model, variables, config, np.repeat(noisy[None], args.num_samples, 0),
                    args.sigma, mesh, key, sampler=args.sampler, steps=args.steps, seed=args.seed,
                    class_label=args.class_label)
  mean = samples.mean(axis=0)
  save_png(out, to_uint8(mean))
  if args.num_samples > 1:
    std = samples.std(axis=0) / 2  # in units of the [0, 1] pixel range
    paths.save_npz(out.with_suffix(".npz"), mean=(mean + 1) / 2, std=std,
                   samples=to_uint8(samples))
    scale = 255 / max(float(std.max()), 1e-8)
    save_png(out.with_name(f"{out.stem}_std.png"), np.clip(std * scale, 0, 255).astype(np.uint8))


def enhance_command(args) -> None:
  config, model, variables, mesh, key, out = _run(args)
  if not model.cond_channels:
    raise ValueError(f"--workdir {args.workdir!r}: the model is not image-conditioned "
                     "(config.model.cond_channels = 0); train it with config.data.condition set")
  image = read_image(args.image, data_shape(config)[:-1] + (model.cond_channels,))
  samples = enhance(model, variables, config, np.repeat(image[None], args.num_samples, 0), mesh,
                    key, sampler=args.sampler, steps=args.steps, class_label=args.class_label)
  _write_samples(out, to_uint8(samples))


def anomaly_command(args) -> float | None:
  config, model, variables, mesh, key, out = _run(args)
  names, images, labels = read_images(args.images, data_shape(config))
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
  if labels is None:
    return None
  value = auroc(scores, labels)
  print(f"AUROC {value:.4f} ({int(labels.sum())} anomalous, {int((1 - labels).sum())} normal)")
  return value

