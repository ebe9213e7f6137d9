"""The `ddpm` command (also `python -m diffusion`)."""

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

import numpy as np

from diffusion.schedules import BETA_SCHEDULES, make_schedule


def _schedule(args: argparse.Namespace) -> None:
  """Prints the tables of a noise schedule at evenly spaced steps."""
  schedule = make_schedule(args.name, args.steps)
  tables = {k: np.asarray(v, np.float64) for k, v in vars(schedule).items()}
  snr_db = 10 * np.log10(tables["alphas_cumprod"] / (1 - tables["alphas_cumprod"]))
  rows = sorted(set(np.linspace(0, args.steps - 1, args.rows).round().astype(int)))
  print(f"{args.name} schedule, T = {args.steps} (t is 0-based: the paper's t + 1)")
  print(f"{'t':>6} {'beta':>11} {'alpha_bar':>11} {'SNR dB':>8} {'sqrt(b~_t)':>11} {'sqrt(b_t)':>11}")
  for t in rows:
    print(f"{t:>6d} {tables['betas'][t]:>11.4e} {tables['alphas_cumprod'][t]:>11.4e} "
          f"{snr_db[t]:>8.2f} {np.sqrt(tables['posterior_variance'][t]):>11.4e} "
          f"{np.sqrt(tables['betas'][t]):>11.4e}")


def _bench_setup(args: argparse.Namespace, steps: int | None = None):
  """(config, model, sampler names) of a bench command: the config's network in --dtype, and
  --samplers checked at `steps`."""
  from diffusion import models
  from diffusion.config import data_shape, load_config
  from diffusion.sampling import check_options
  config = load_config(args.config)
  model_config = dict(config.model)
  if args.dtype:
    model_config["dtype"] = args.dtype
  if getattr(args, "remat", False):
    model_config["remat"] = True
  model = models.build(model_config, data_shape(config))
  names = tuple(n.strip() for n in getattr(args, "samplers", "").split(",") if n.strip())
  for name in names:
    check_options(model, config.diffusion.num_steps, sampler=name, steps=steps, eta=0.0,
                  spacing=None, guidance=None)
  return config, model, names


def _report(args: argparse.Namespace, result: dict, table: str) -> None:
  result["config"] = args.config
  print(table)
  if args.json:
    from diffusion import paths
    paths.write_bytes(paths.resolve(args.json, "--json"), json.dumps(result, indent=2).encode())


def _bench_unet(args: argparse.Namespace) -> None:
  """Times the forward pass and training gradient of a config's network."""
  from diffusion import benchmark
  from diffusion.config import data_shape
  config, model, _ = _bench_setup(args)
  result = benchmark.bench_network(model, args.batch, data_shape(config), steps=args.steps)
  _report(args, result, benchmark.format_table(result))


def _bench_sampling(args: argparse.Namespace) -> None:
  """Times each sampler's whole chain on a config's network (random parameters)."""
  from diffusion import benchmark
  config, model, names = _bench_setup(args, args.steps)
  result = benchmark.bench_sampling(model, config, args.batch, samplers=names, steps=args.steps,
                                    repeats=args.repeats)
  _report(args, result, benchmark.format_sampling_table(result))


def _bench(args: argparse.Namespace) -> None:
  """`ddpm bench`: training and sampling speed against the PyTorch reference."""
  import jax
  from diffusion import benchmark
  config, model, names = _bench_setup(args, args.sample_steps)
  if args.batch < 1 or args.train_steps < 1 or (args.sample_batch is not None
                                                 and args.sample_batch < 1):
    raise ValueError("--batch, --sample-batch and --train-steps must be positive")
  for name, value in (("--batch", args.batch), ("--sample-batch", args.sample_batch)):
    if value is not None and value % jax.device_count():
      raise ValueError(f"{name} must be a multiple of the {jax.device_count()} devices; got {value}")
  torch_reference = not args.no_torch
  if torch_reference:
    try:
      import diffusers  # noqa: F401
      import torch  # noqa: F401
    except ImportError:
      raise ValueError("the PyTorch reference needs torch and diffusers (pip install "
                       "'ddpm-jax[bench]'); or pass --no-torch") from None
    if model.name != "unet":
      raise ValueError(f"the PyTorch reference is diffusers' UNet2DModel, the twin of "
                       f"config.model.name 'unet' only (this is {model.name!r}): pass --no-torch")
    from diffusion.convert import diffusers_config
    diffusers_config(model.module, config.data.image_size, config.data.channels)  # representable?
  result = benchmark.bench(model, config, args.batch, samplers=names,
                           sample_steps=args.sample_steps, sample_batch=args.sample_batch,
                           train_steps=args.train_steps, torch_reference=torch_reference,
                           peak=args.peak_tflops, layers=args.layers)
  _report(args, result, benchmark.format_bench(result))


def _evaluate(args: argparse.Namespace) -> None:
  from diffusion import distributed
  from diffusion.evaluation.commands import evaluate
  distributed.initialize()
  evaluate(args)


def _train(args: argparse.Namespace, overrides: list[str]) -> None:
  """`ddpm train`: trains (or resumes) the run in --workdir."""
  import jax
  from diffusion import distributed
  from diffusion.training import train
  config = _config_with_overrides(args.config, overrides)
  distributed.use_cpu_cores(config.train.batch_size)
  distributed.initialize()
  step = train(config, args.workdir)
  if jax.process_index() == 0:
    print(f"{args.workdir}: step {step} of {config.train.num_steps}")


def _distill(args: argparse.Namespace, overrides: list[str]) -> None:
  """`ddpm distill`: a few-step student of a trained run (or resumes one)."""
  import jax
  from diffusion import distributed
  from diffusion.training.distill import distill
  settings = _config_with_overrides(args.config, overrides)
  distributed.use_cpu_cores(settings.train.batch_size)
  distributed.initialize()
  step = distill(args.workdir, args.out, settings, method=args.method, steps=args.steps,
                 teacher_steps=args.teacher_steps, step=args.step)
  if jax.process_index() == 0:
    print(f"{args.out}: step {step}; sample with `ddpm sample --workdir {args.out}`")


def _prepare_data(args: argparse.Namespace, overrides: list[str]) -> None:
  """`ddpm prepare-data`: the config's data written as ArrayRecord shards."""
  from diffusion.data import arrayrecord, make_source
  config = _config_with_overrides(args.config, overrides)
  meta = arrayrecord.write(make_source(config.data), args.out, shards=args.shards)
  print(f"{args.out}: {meta['count']:,} examples in {len(meta['shards'])} shards; train on them "
        f"with --config.data.name=arrayrecord --config.data.path={args.out}")


def _bench_data(args: argparse.Namespace, overrides: list[str]) -> None:
  """`ddpm bench-data`: images/s of the data pipeline alone, beside the train step's."""
  from diffusion.data import throughput
  config = _config_with_overrides(args.config, overrides)
  try:
    workers = tuple(int(w) for w in args.workers.split(","))
  except ValueError:
    raise ValueError(f"--workers must be comma-separated ints; got {args.workers!r}") from None
  result = throughput.bench_data(config, workers=workers, threads=args.threads,
                                 batches=args.batches)
  step, label = args.step_images_per_s, "(--step-images-per-s)"
  if args.step:
    from diffusion import benchmark, models
    from diffusion.config import data_shape
    shape = data_shape(config)
    timed = benchmark.bench_network(models.build(config.model, shape), config.train.batch_size,
                                    shape, steps=3)
    step, label = timed["train_step"]["images_per_s"], f"on this {timed['platform']}"
    result["train_step"] = timed["train_step"]
  _report(args, result, throughput.format_data_table(result, step, label))


def _config_with_overrides(path: str, overrides: list[str]):
  """The config file with `--config.a.b=value` overrides applied (ml_collections syntax)."""
  from absl import flags
  from ml_collections import config_flags
  if not os.path.isfile(path):
    raise SystemExit(f"ddpm: error: --config {path!r} does not exist")
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    raise SystemExit(f"ddpm: error: unrecognized arguments: {' '.join(bad)}")
  values = flags.FlagValues()
  argv = ["ddpm", f"--config={path}", *overrides]
  config_flags.DEFINE_config_file("config", path, "experiment config", flag_values=values,
                                  lock_config=True, sys_argv=argv)
  try:
    values(argv)
  except flags.Error as e:
    raise SystemExit(f"ddpm: error: {e}") from None
  except (KeyError, AttributeError) as e:  # ml_collections, for a key the config lacks
    message = e.args[0] if e.args else e
    raise SystemExit(f"ddpm: error: the config has no such key: {message}") from None
  return values.config


def _sample(args: argparse.Namespace) -> None:
  """`ddpm sample`: N samples from the EMA parameters of the newest checkpoint."""
  from diffusion import distributed, sample_run
  distributed.use_cpu_cores()
  distributed.initialize()
  sample_run.sample_to_files(
      args.workdir, args.num, args.out, seed=args.seed, batch=args.batch, step=args.step,
      sampler=args.sampler, steps=args.steps, eta=args.eta, spacing=args.spacing,
      guidance=args.guidance, class_label=args.class_label, layout=args.layout, churn=args.churn)


def _sampler_arguments(parser: argparse.ArgumentParser, guidance: bool = True) -> None:
  parser.add_argument("--sampler",
                      help="ddpm (ancestral), ddim, dpm++, heun or edm-sde (EDM's samplers); "
                           "default: ddpm, or a few-step model's own (ddim for a progressive "
                           "student, consistency for a consistency model)")
  parser.add_argument("--steps", type=int,
                      help="timesteps visited (default: all for ddpm, 50 for ddim, 20 for dpm++, "
                           "18 for heun, 40 for edm-sde; heun and edm-sde evaluate the network "
                           "2 steps - 1 times)")
  if not guidance:
    return
  parser.add_argument("--eta", type=float, default=0.0, help="DDIM's η in [0, 1]")
  parser.add_argument("--spacing", help="uniform, quadratic, logsnr or karras (default: logsnr "
                                        "for dpm++, karras for heun/edm-sde, else uniform)")
  parser.add_argument("--churn", type=float,
                      help="edm-sde's S_churn (default 30, EDM's for VP models)")
  parser.add_argument("--guidance", type=float,
                      help="classifier-free guidance scale w (class-conditional models)")


def _application_parsers(commands) -> None:
  """`ddpm inpaint | denoise | enhance | anomaly`: the applications on a trained run."""
  from diffusion.applications import commands as apps

  def common(name, help_text, run):
    parser = commands.add_parser(name, help=help_text)
    parser.add_argument("--workdir", required=True, help="a training run")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class", dest="class_label", type=int,
                        help="class-conditional models: condition on class C (default: the null "
                             "class, if the run was trained with label dropout)")
    parser.set_defaults(run=run)
    return parser

  example = "a PNG (images) or an .npy/.npz array of config.data.shape in the data's units"
  out = "a PNG (images) or an .npz (any data; a preview PNG beside it)"
  inpaint = common("inpaint", "fill the unknown region of --mask (RePaint; point sets: motif "
                   "scaffolding)", apps.inpaint_command)
  inpaint.add_argument("--image", required=True, help=example)
  inpaint.add_argument("--mask", required=True,
                       help="PNG: white = keep, black = generate; or an .npy of bools over the "
                            "data's positions (config.data.shape[:-1]), True = keep")
  inpaint.add_argument("--out", required=True, help=out)
  inpaint.add_argument("--steps", type=int, default=250, help="chain length (respaced)")
  inpaint.add_argument("--jump-length", type=int, default=10)
  inpaint.add_argument("--resamplings", type=int, default=10)
  inpaint.add_argument("--num-samples", type=int, default=1)

  denoise = common("denoise", "denoise data with Gaussian noise of std --sigma",
                   apps.denoise_command)
  denoise.add_argument("--image", required=True, help=example)
  denoise.add_argument("--sigma", type=float, required=True,
                       help="noise std: uint8 data in units of the [0, 1] range, in (0, 1]; "
                            "float data in its own units")
  denoise.add_argument("--out", required=True, help=out)
  denoise.add_argument("--num-samples", type=int, default=1,
                       help="> 1: also the per-element mean and std (out.npz, out_std.png)")
  _sampler_arguments(denoise, guidance=False)

  enhance = common("enhance", "enhance degraded data with a conditioned model",
                   apps.enhance_command)
  enhance.add_argument("--image", required=True,
                       help="the degraded example: " + example + " (cond_channels channels)")
  enhance.add_argument("--out", required=True, help=out)
  enhance.add_argument("--num-samples", type=int, default=1)
  _sampler_arguments(enhance, guidance=False)

  anomaly = common("anomaly", "score examples by partial diffusion and reconstruction",
                   apps.anomaly_command)
  anomaly.add_argument("--images", required=True,
                       help="a folder of images (normal/ and anomalous/ subfolders give labels) "
                            "or an .npz (x [N, ...] in the data's units, optional labels)")
  anomaly.add_argument("--out", required=True, help="scores.csv (and scores_maps.npz)")
  anomaly.add_argument("--at-step", type=int, help="diffuse to this step (default T/4)")
  _sampler_arguments(anomaly, guidance=False)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="ddpm", description="Denoising diffusion probabilistic models in JAX.")
  commands = parser.add_subparsers(dest="command", required=True)
  schedule = commands.add_parser(
      "schedule", help="print the tables of a noise schedule")
  schedule.add_argument("name", choices=sorted(BETA_SCHEDULES))
  schedule.add_argument("--steps", type=int, default=1000, help="T (default 1000)")
  schedule.add_argument("--rows", type=int, default=11,
                        help="how many evenly spaced steps to print")
  schedule.set_defaults(run=_schedule)

  bench = commands.add_parser(
      "bench-unet", help="time the network's forward pass and training gradient")
  bench.add_argument("--config", required=True, help="an experiments/configs/*.py file")
  bench.add_argument("--batch", type=int, default=8)
  bench.add_argument("--dtype", choices=["float32", "bfloat16"],
                     help="computation dtype (default: the config's)")
  bench.add_argument("--steps", type=int, default=5, help="timed steps after a warm-up")
  bench.add_argument("--json", help="also write the figures to this file")
  bench.set_defaults(run=_bench_unet)

  bench = commands.add_parser(
      "bench", help="training and sampling speed, memory and FLOP utilisation, beside PyTorch")
  bench.add_argument("--config", required=True, help="an experiments/configs/*.py file")
  bench.add_argument("--batch", type=int, default=64, help="global training batch")
  bench.add_argument("--dtype", choices=["float32", "bfloat16"],
                     help="computation dtype (default: the config's)")
  bench.add_argument("--train-steps", type=int, default=5, help="timed training steps")
  bench.add_argument("--samplers", default="ddpm,ddim,dpm++", help="comma-separated")
  bench.add_argument("--sample-steps", type=int, help="steps for every sampler (default: theirs)")
  bench.add_argument("--sample-batch", type=int, help="samples per chain (default: --batch)")
  bench.add_argument("--peak-tflops", type=float,
                     help="the device's peak TFLOP/s for the FLOP utilisation (known for "
                          "H100/H200/A100/TPUs)")
  bench.add_argument("--remat", action="store_true",
                     help="rematerialise the network's blocks (memory for compute; the table "
                          "shows the memory each choice takes)")
  bench.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
  bench.add_argument("--layers", action="store_true",
                     help="also time conv/GroupNorm/swish at each level's shape, JAX vs PyTorch")
  bench.add_argument("--json", help="also write the figures to this file")
  bench.set_defaults(run=_bench)

  bench = commands.add_parser(
      "bench-sampling", help="samples/s of each sampler on a config's network")
  bench.add_argument("--config", required=True, help="an experiments/configs/*.py file")
  bench.add_argument("--batch", type=int, default=64, help="samples per chain (all devices)")
  bench.add_argument("--samplers", default="ddpm,ddim,dpm++",
                     help="comma-separated (default: all three, each at its default steps)")
  bench.add_argument("--steps", type=int, help="steps for every sampler (default: theirs)")
  bench.add_argument("--dtype", choices=["float32", "bfloat16"],
                     help="computation dtype (default: the config's)")
  bench.add_argument("--repeats", type=int, default=1, help="timed chains after the first")
  bench.add_argument("--json", help="also write the figures to this file")
  bench.set_defaults(run=_bench_sampling)

  train = commands.add_parser(
      "train", help="train (or resume) a run; --config.KEY=VALUE overrides the config",
      usage="ddpm train --config FILE --workdir DIR [--config.KEY=VALUE ...]")
  train.add_argument("--config", required=True, help="an experiments/configs/*.py file")
  train.add_argument("--workdir", required=True, help="where checkpoints, metrics and samples go")

  distill = commands.add_parser(
      "distill", help="distil a trained run into a few-step student (progressive or consistency)",
      usage="ddpm distill --config FILE --workdir TEACHER --out STUDENT --method "
            "progressive|consistency [--steps K] [--teacher-steps K0] [--config.KEY=VALUE ...]")
  distill.add_argument("--config", required=True,
                       help="a distillation config (experiments/configs/distill_digits.py, "
                            "consistency_digits.py, ...): its optim, train and distill sections; "
                            "the rest is the teacher's")
  distill.add_argument("--workdir", required=True, help="the teacher: a trained run")
  distill.add_argument("--out", required=True, help="the student's run folder (resumed if there)")
  distill.add_argument("--method", required=True, help="progressive or consistency")
  distill.add_argument("--steps", type=int,
                       help="progressive: the student's steps K (teacher steps / 2^m); "
                            "consistency: the steps of its sample grids")
  distill.add_argument("--teacher-steps", type=int,
                       help="progressive: the teacher's DDIM steps K0 (default: the config's)")
  distill.add_argument("--step", type=int, help="the teacher's checkpoint (default: the newest)")

  prepare = commands.add_parser(
      "prepare-data", help="write a config's data as ArrayRecord shards (the fastest source)",
      usage="ddpm prepare-data --config FILE --out DIR [--shards N] [--config.KEY=VALUE ...]")
  prepare.add_argument("--config", required=True, help="the config whose data to write")
  prepare.add_argument("--out", required=True, help="a new local folder for the shards")
  prepare.add_argument("--shards", type=int, default=8, help="number of shard files")

  bench = commands.add_parser(
      "bench-data", help="images/s of the data pipeline alone, per worker and in total",
      usage="ddpm bench-data --config FILE [--workers 0,1,2] [--config.KEY=VALUE ...]")
  bench.add_argument("--config", required=True, help="an experiments/configs/*.py file")
  bench.add_argument("--workers", default="0,1,2",
                     help="worker process counts to time, comma-separated (0: threads only)")
  bench.add_argument("--threads", type=int, default=8, help="reading threads per process")
  bench.add_argument("--batches", type=int, default=20, help="timed batches per setting")
  bench.add_argument("--step", action="store_true",
                     help="also time the config's train step on this machine, for comparison")
  bench.add_argument("--step-images-per-s", type=float, default=2700.0,
                     help="the train step's consumption to compare with (default: the paper's "
                          "2,700 images/s on a TPU v3-8)")
  bench.add_argument("--json", help="also write the figures to this file")

  sample = commands.add_parser("sample", help="draw samples from a trained run")
  sample.add_argument("--workdir", required=True)
  sample.add_argument("--num", type=int, required=True, help="number of samples N")
  sample.add_argument("--out", required=True, help="an .npz file (arr_0: uint8 NHWC)")
  sample.add_argument("--seed", type=int, default=0)
  sample.add_argument("--batch", type=int, default=256, help="samples per compiled call")
  sample.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
  _sampler_arguments(sample)
  sample.add_argument("--class", dest="class_label", type=int,
                      help="draw this class only (class-conditional models; default: all in turn)")
  sample.add_argument("--layout", default="npz",
                      help="npz (arr_0 and labels, plus a PNG grid) or folders (a PNG per sample "
                           "in per-class folders, for data augmentation)")
  sample.set_defaults(run=_sample)

  _application_parsers(commands)

  evaluate = commands.add_parser(
      "evaluate", help="FID/KID/IS of samples, the digits measures, bits/dim of a data split",
      description="ddpm evaluate --samples S.npz --inception W --reference R | --samples S.npz "
                  "--digits | --workdir DIR --bpd")
  evaluate.add_argument("--samples", help="samples: an .npz (arr_0 uint8 NHWC) or a folder of images")
  evaluate.add_argument("--inception", help="the FID Inception's weights (pytorch-fid's "
                        "pt_inception-2015-12-05-6726825d.pth or its .npz conversion)")
  evaluate.add_argument("--reference", help="reference images (.npz or folder) or their saved "
                        "statistics (.npz with mu, sigma)")
  evaluate.add_argument("--save-reference", help="write the reference images' statistics here")
  evaluate.add_argument("--digits", action="store_true",
                        help="digits-FID/KID/IS with the project's digit classifier (8×8 digits)")
  evaluate.add_argument("--digits-reference", default="train", help="digits split to compare with")
  evaluate.add_argument("--synthetic", help="compare --samples (an .npz in the data's units) "
                        "with a synthetic set's held-out split: phantoms, backbones or sinusoids")
  evaluate.add_argument("--workdir", help="a training run (for --bpd)")
  evaluate.add_argument("--bpd", action="store_true",
                        help="NLL bound in bits/dim of a data split under the run's EMA network")
  evaluate.add_argument("--split", default="test", help="data split for --bpd (default: test)")
  evaluate.add_argument("--num", type=int, help="evaluate the first N images of the split")
  evaluate.add_argument("--batch", type=int, default=64, help="images per compiled call")
  evaluate.add_argument("--chunk", type=int, default=10, help="timesteps per network call (--bpd)")
  evaluate.add_argument("--seed", type=int, default=0)
  evaluate.add_argument("--out", help="also write the figures as JSON")
  evaluate.set_defaults(run=_evaluate)

  args, extra = parser.parse_known_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  with_overrides = {"train": _train, "prepare-data": _prepare_data, "bench-data": _bench_data,
                    "distill": _distill}
  if args.command not in with_overrides and extra:
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  if args.command == "schedule" and (args.steps < 1 or args.rows < 1):
    parser.error("--steps and --rows must be positive")
  if args.command == "bench-unet" and (args.batch < 1 or args.steps < 1):
    parser.error("--batch and --steps must be positive")
  if args.command == "bench-sampling" and (args.batch < 1 or args.repeats < 1):
    parser.error("--batch and --repeats must be positive")
  # Bad input: a one-line message and exit status 2. For the other commands that includes
  # unreadable files (OSError); a training run's I/O failures (a failed checkpoint save) keep
  # their traceback, but for a full disk, which the user must mend.
  from diffusion.paths import StorageFull
  bad_input = ((ValueError, FileNotFoundError, FileExistsError, StorageFull)
               if args.command in ("train", "distill") else (ValueError, OSError, ImportError))
  try:
    if args.command in with_overrides:
      with_overrides[args.command](args, extra)
    else:
      args.run(args)
  except bad_input as e:
    print(f"ddpm {args.command}: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
