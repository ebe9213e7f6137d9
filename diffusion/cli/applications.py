"""`ddpm inpaint | denoise | enhance | anomaly`: the applications on a trained run."""

import csv
import io
import os

import numpy as np
from etils import epath

from diffusion import paths
from diffusion.applications.anomaly import anomaly_scores, auroc
from diffusion.applications.denoise import denoise
from diffusion.applications.enhance import enhance
from diffusion.applications.imageio import read_example, read_images, read_mask
from diffusion.applications.inpaint import inpaint
from diffusion.dataspec import DataSpec
from diffusion.distributed import make_mesh, replicate
from diffusion.images import save_png, to_uint8
from diffusion.previews import save_preview
from diffusion.runs import base_key, load_run
from diffusion.cli.common import sampler_arguments, seed


def _run(args, *, table: bool = False):
  """(run, spec, replicated variables, mesh, key, output path) of an application
  command; the output path is checked first, so that a bad one fails before anything runs.
  Images are written as PNGs (or an .npz if --out names one), other data as an .npz with a
  preview PNG beside it; `table`: the output is a CSV whatever the data."""
  out = paths.resolve(args.out, "--out")
  if getattr(args, "num_samples", 1) < 1:
    raise ValueError(f"--num-samples must be >= 1; got {args.num_samples}")
  if not table and out.suffix.lower() not in (".png", ".npz"):
    raise ValueError(f"--out {args.out!r} must end in .png (images) or .npz (any data)")
  if table and out.suffix.lower() != ".csv":
    raise ValueError(f"--out {args.out!r} must end in .csv (the scores; the maps go beside it "
                     "in an .npz)")
  run = load_run(args.workdir, args.step)
  model = run.model
  if not run.method.every_timestep and args.command != "enhance":
    raise ValueError(f"--workdir {args.workdir!r} is a few-step model (method "
                     f"{run.method.name!r}), trained at a few noise levels only: "
                     f"ddpm {args.command} needs a model of every timestep, e.g. its teacher's")
  if model.cond_channels and args.command != "enhance":
    raise ValueError(f"--workdir {args.workdir!r}: this model is conditioned on an input "
                     f"(cond_channels = {model.cond_channels}); ddpm {args.command} needs an "
                     "unconditioned one (this one enhances: `ddpm enhance`)")
  spec = run.diffusion.spec
  if not table and spec.kind != "image" and out.suffix != ".npz":
    raise ValueError(f"--out {args.out!r}: this run's data is {spec.kind} data; the output is "
                     "an .npz (with a preview .png beside it)")
  mesh = make_mesh()
  return run, spec, replicate(run.variables, mesh), mesh, base_key(args.seed, "sample"), out


def _write_samples(out: epath.Path, samples: np.ndarray, spec: DataSpec, **extra) -> None:
  """Samples [N, *shape] in the data's units: to an .npz (`arr_0`, as `ddpm sample` writes, and
  `extra`) with a preview PNG beside it, or as PNGs: sample 0 to --out, further ones to
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


def inpaint_command(args) -> None:
  run, spec, variables, mesh, key, out = _run(args)
  data = read_example(args.image, spec)
  mask = read_mask(args.mask, spec.shape[:-1])
  samples = inpaint(run, variables, data, mask, mesh, key, num_samples=args.num_samples,
                    steps=args.steps, jump_length=args.jump_length, resamplings=args.resamplings,
                    class_label=args.class_label)
  _write_samples(out, samples, spec)


def denoise_command(args) -> None:
  run, spec, variables, mesh, key, out = _run(args)
  noisy = read_example(args.image, spec)
  if noisy.shape == spec.shape:
    noisy = np.repeat(noisy[None], args.num_samples, 0)
  elif args.num_samples > 1 or out.suffix != ".npz":
    raise ValueError(f"--image {args.image!r} holds a batch: denoise it into an .npz --out, one "
                     "sample each (several samples are drawn for one example)")
  samples = denoise(run, variables, noisy, args.sigma, mesh, key, sampler=args.sampler,
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
  run, spec, variables, mesh, key, out = _run(args)
  if not run.model.cond_channels:
    raise ValueError(f"--workdir {args.workdir!r}: the model is not conditioned "
                     "(config.model.cond_channels = 0); train it with config.data.condition set")
  degraded = read_example(args.image, spec, channels=run.model.cond_channels)
  if degraded.ndim == len(spec.shape):
    degraded = np.repeat(degraded[None], args.num_samples, 0)
  samples = enhance(run, variables, degraded, mesh, key, sampler=args.sampler,
                    steps=args.steps, class_label=args.class_label)
  _write_samples(out, spec.from_model(samples), spec)


def anomaly_command(args) -> float | None:
  run, spec, variables, mesh, key, out = _run(args, table=True)
  names, images, labels = read_images(args.images, spec)
  scores, maps, _ = anomaly_scores(run, variables, images, mesh, key, at_step=args.at_step,
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
    print(f"no AUROC: --images {args.images!r} is labelled "
          f"{'anomalous' if labels[0] else 'normal'} only; {out.name} holds the scores")
    return None
  value = auroc(scores, labels)
  print(f"AUROC {value:.4f} ({int(labels.sum())} anomalous, {int((1 - labels).sum())} normal)")
  return value



def _writes(args) -> list[tuple[str, str]]:
  """Every file an application writes: --out and the files beside it."""
  out = os.fspath(args.out)
  base, ext = os.path.splitext(out)
  if args.command == "anomaly":
    return [("--out", out), ("the maps beside --out", base + "_maps.npz")]
  files = [("--out", out)]
  if ext.lower() == ".npz":
    files.append(("the preview beside --out", base + ".png"))
  elif args.command == "denoise" and args.num_samples > 1:
    files += [("the mean and std beside --out", base + ".npz"),
              ("the std map beside --out", base + "_std.png")]
  else:
    files += [(f"sample {i} beside --out", f"{base}_{i}{ext}") for i in range(1, args.num_samples)]
  return files


def add_parsers(commands) -> None:
  """The applications' parsers, on the `ddpm` subparsers `commands`."""

  def common(name, help_text, run):
    parser = commands.add_parser(name, help=help_text)
    parser.add_argument("--workdir", required=True, help="a training run")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--class", dest="class_label", type=int,
                        help="class-conditional models: condition on class C (default: the null "
                             "class, if the run was trained with label dropout)")
    parser.set_defaults(run=run, inputs=["workdir", "image", "mask", "images"],
                        outputs=[("out", False)], writes=_writes)
    return parser

  example = "a PNG (images) or an .npy/.npz array of config.data.shape in the data's units"
  out = "a PNG (images) or an .npz (any data; a preview PNG beside it)"
  inpaint = common("inpaint", "fill the unknown region of --mask (RePaint; point sets: motif "
                   "scaffolding)", inpaint_command)
  inpaint.add_argument("--image", required=True, help=example)
  inpaint.add_argument("--mask", required=True,
                       help="PNG: white = keep, black = generate; or an .npy of bools over the "
                            "data's positions (config.data.shape[:-1]), True = keep")
  inpaint.add_argument("--out", required=True, help=out)
  inpaint.add_argument("--steps", type=int,
                       help="chain length, respaced (default: 250 as RePaint, or T if fewer)")
  inpaint.add_argument("--jump-length", type=int, default=10)
  inpaint.add_argument("--resamplings", type=int, default=10)
  inpaint.add_argument("--num-samples", type=int, default=1)

  denoise = common("denoise", "denoise data with Gaussian noise of std --sigma",
                   denoise_command)
  denoise.add_argument("--image", required=True, help=example)
  denoise.add_argument("--sigma", type=float, required=True,
                       help="noise std: uint8 data in units of the [0, 1] range, in (0, 1]; "
                            "float data in its own units")
  denoise.add_argument("--out", required=True, help=out)
  denoise.add_argument("--num-samples", type=int, default=1,
                       help="> 1: also the per-element mean and std (out.npz, out_std.png)")
  sampler_arguments(denoise, guidance=False)

  enhance = common("enhance", "enhance degraded data with a conditioned model",
                   enhance_command)
  enhance.add_argument("--image", required=True,
                       help="the degraded example: " + example + " (cond_channels channels)")
  enhance.add_argument("--out", required=True, help=out)
  enhance.add_argument("--num-samples", type=int, default=1)
  sampler_arguments(enhance, guidance=False)

  anomaly = common("anomaly", "score examples by partial diffusion and reconstruction",
                   anomaly_command)
  anomaly.add_argument("--images", required=True,
                       help="a folder of images (normal/ and anomalous/ subfolders give labels) "
                            "or an .npz (x [N, ...] in the data's units, optional labels)")
  anomaly.add_argument("--out", required=True, help="scores.csv (and scores_maps.npz)")
  anomaly.add_argument("--at-step", type=int, help="diffuse to this step (default T/4)")
  sampler_arguments(anomaly, guidance=False)
