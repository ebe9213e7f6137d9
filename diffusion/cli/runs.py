"""`ddpm schedule | train | distill | prepare-data | sample | evaluate`: a run from data to figures."""

import argparse
import os

import numpy as np

from diffusion.cli.common import config_with_overrides, sampler_arguments, seed
from diffusion.schedules import BETA_SCHEDULES, make_schedule


def schedule_command(args: argparse.Namespace) -> None:
  """Prints the tables of a noise schedule at evenly spaced steps."""
  if args.steps < 1 or args.rows < 1:
    raise ValueError("--steps and --rows must be positive")
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


def train_command(args: argparse.Namespace) -> None:
  """`ddpm train`: trains (or resumes) the run in --workdir."""
  import jax
  from diffusion import distributed
  from diffusion.training import train
  config = config_with_overrides(args.config, args.overrides)
  distributed.use_cpu_cores(config.train.batch_size)
  distributed.initialize()
  step = train(config, args.workdir)
  if jax.process_index() == 0:
    print(f"{args.workdir}: step {step} of {config.train.num_steps}")


def distill_command(args: argparse.Namespace) -> None:
  """`ddpm distill`: a few-step student of a trained run (or resumes one)."""
  import jax
  from diffusion import distributed
  from diffusion.training.distill import distill
  settings = config_with_overrides(args.config, args.overrides)
  distributed.use_cpu_cores(settings.train.batch_size)
  distributed.initialize()
  step = distill(args.workdir, args.out, settings, method=args.method, steps=args.steps,
                 teacher_steps=args.teacher_steps, step=args.step)
  if jax.process_index() == 0:
    print(f"{args.out}: step {step}; sample with `ddpm sample --workdir {args.out}`")


def prepare_data_command(args: argparse.Namespace) -> None:
  """`ddpm prepare-data`: the config's data written as ArrayRecord shards."""
  from diffusion.data import arrayrecord, make_source
  config = config_with_overrides(args.config, args.overrides)
  meta = arrayrecord.write(make_source(config.data), args.out, shards=args.shards)
  print(f"{args.out}: {meta['count']:,} examples in {len(meta['shards'])} shards; train on them "
        f"with --config.data.name=arrayrecord --config.data.path={args.out}")


def sample_command(args: argparse.Namespace) -> None:
  """`ddpm sample`: N samples from the EMA parameters of the newest checkpoint."""
  from diffusion import distributed, sample_run
  try:
    sigmas = None if args.sigmas is None else tuple(float(v) for v in args.sigmas.split(","))
  except ValueError:
    raise ValueError(f"--sigmas must be comma-separated numbers; got {args.sigmas!r}") from None
  distributed.use_cpu_cores()
  distributed.initialize()
  sample_run.sample_to_files(
      args.workdir, args.num, args.out, seed=args.seed, batch=args.batch, step=args.step,
      sampler=args.sampler, steps=args.steps, eta=args.eta, spacing=args.spacing,
      guidance=args.guidance, class_label=args.class_label, layout=args.layout, churn=args.churn,
      sigmas=sigmas, guidance_interval=_interval(args.guidance_interval),
      guide_workdir=args.guide_workdir, guide_step=args.guide_step)
  import jax
  if jax.process_index() == 0:
    where = ("one PNG per sample" if args.layout == "folders"
             else f"preview {os.path.splitext(args.out)[0]}.png")
    print(f"{args.out}: {args.num} samples ({where})")


def _interval(text: str | None) -> tuple[float, float] | None:
  if text is None:
    return None
  try:
    low, high = (float(v) for v in text.split(","))
  except ValueError:
    raise ValueError(f"--guidance-interval must be two numbers low,high (EDM's σ); got "
                     f"{text!r}") from None
  return low, high


def evaluate_command(args: argparse.Namespace) -> None:
  """`ddpm evaluate`: FID/KID/IS, the digits measures or bits/dim."""
  from diffusion import distributed
  distributed.initialize()
  evaluate(args)


def evaluate(args: argparse.Namespace) -> dict:
  """Runs what `ddpm evaluate`'s arguments ask for; prints a table, returns (and writes) the
  figures."""
  import json
  from diffusion import paths
  from diffusion.evaluation.measures import (inception_metrics, load_image_set,
                                             workdir_bits_per_dim)
  result = {}
  if args.out:
    paths.resolve(args.out, "--out")  # a scheme no backend serves fails before the work
  if args.digits and (args.inception or args.reference or args.save_reference):
    raise ValueError("--digits compares with a digits split (--digits-reference); it takes no "
                     "--inception, --reference or --save-reference")
  if args.save_reference and not args.reference:
    raise ValueError("--save-reference needs --reference images to compute the statistics of")
  if args.digits:
    from diffusion.data.sources import DIGITS_SPLITS
    if args.digits_reference not in DIGITS_SPLITS:
      raise ValueError(f"--digits-reference must be one of {', '.join(DIGITS_SPLITS)}; got "
                       f"{args.digits_reference!r}")
    if not args.samples:
      raise ValueError("--digits needs --samples")
  if args.bpd and not args.workdir:
    raise ValueError("--bpd needs --workdir (a training run)")
  ode_nll = getattr(args, "ode_nll", False)
  if ode_nll and not args.workdir:
    raise ValueError("--ode-nll needs --workdir (a training run)")
  if getattr(args, "ode_decoder", False) and not ode_nll:
    raise ValueError("--ode-decoder changes --ode-nll: give both")
  if getattr(args, "probes", 1) < 1:
    raise ValueError(f"--probes must be >= 1; got {args.probes}")
  for name in ("batch", "chunk", "num"):
    value = getattr(args, name, None)
    if value is not None and value < 1:
      raise ValueError(f"--{name} must be >= 1; got {value}")
  if args.samples and not (args.digits or getattr(args, "synthetic", None)):
    if not args.inception:
      raise ValueError("--samples needs --inception WEIGHTS (the FID network's weights file) "
                       "or --digits (the offline digits measures)")
    from diffusion.evaluation.inception import weights_file
    weights_file(args.inception)  # before the work of --bpd
  if args.bpd:
    bpd = workdir_bits_per_dim(args.workdir, split=args.split, num=args.num, batch=args.batch,
                               chunk_size=args.chunk, seed=args.seed)
    result["bpd"] = {k: v for k, v in bpd.items() if k not in ("per_image", "terms")}
    print(f"NLL ≤ {bpd['bpd']:.4f} ± {bpd['bpd_stderr']:.4f} bits/dim on {bpd['num_images']} "
          f"images of split {args.split!r} (step {bpd['step']}; prior term {bpd['prior']:.2e})")
  if ode_nll:
    from diffusion.evaluation.measures import workdir_ode_bits_per_dim
    ode = workdir_ode_bits_per_dim(args.workdir, split=args.split, num=args.num,
                                   batch=args.batch, seed=args.seed, probes=args.probes,
                                   exact=args.exact_divergence,
                                   decoder=getattr(args, "ode_decoder", False))
    result["ode_bpd"] = ode
    how = ("exact divergence" if ode["exact"] else
           f"{ode['probes']} Hutchinson probe{'s' if ode['probes'] > 1 else ''} an image"
           + (f", probe spread {ode['probe_std']:.4f}" if ode["probes"] > 1 else ""))
    how += "; the lowest level by the chain's decoder" if ode["decoder"] else ""
    print(f"ODE NLL {'≤ ' if ode['decoder'] else ''}{ode['bpd']:.4f} ± {ode['bpd_stderr']:.4f} "
          f"bits/dim on "
          f"{ode['num_images']} images of split {args.split!r} (step {ode['step']}; {how}; "
          f"{ode['solver_steps']:.0f} solver steps)")
  if getattr(args, "synthetic", None):
    from diffusion.evaluation.structure import evaluate_synthetic, format_comparison
    if not args.samples or not args.samples.endswith(".npz"):
      raise ValueError("--synthetic needs --samples FILE.npz (as `ddpm sample` writes)")
    data = paths.load_npz(paths.resolve(args.samples, "--samples"), "--samples")
    if "arr_0" not in data:
      raise ValueError(f"--samples {args.samples!r} holds no 'arr_0'")
    comparison = evaluate_synthetic(args.synthetic, data["arr_0"], seed=args.seed)
    print(format_comparison(comparison))
    result["synthetic"] = {"set": args.synthetic, "num_samples": len(data["arr_0"]),
                           "statistics": comparison}
    args.samples = None
  if args.samples:
    samples = load_image_set(args.samples, "--samples")
    if args.digits:
      from diffusion.evaluation.digits import digits_metrics
      # The classifier is loaded (or trained, on a cold cache) once the samples are checked.
      metrics = digits_metrics(samples, reference=args.digits_reference)
      names = {"fid": "digits-FID", "kid": "digits-KID", "is": "digits-IS",
               "precision": "precision", "recall": "recall"}
    else:
      metrics = inception_metrics(samples, args.inception, args.reference,
                                  save_reference=args.save_reference, batch=args.batch)
      names = {"fid": "FID", "kid": "KID", "is": "IS", "precision": "precision",
               "recall": "recall"}
    result["samples"] = metrics
    shown = ", ".join(f"{names[k]} {metrics[k]:.4g}" + (f" ± {metrics[k + '_std']:.2g}"
                                                        if k + "_std" in metrics else "")
                      for k in names if k in metrics)
    print(f"{metrics['num_samples']} samples of {args.samples}: {shown}")
  if not result:
    raise ValueError("nothing to evaluate: give --samples FILE and/or --workdir DIR --bpd "
                     "(or --ode-nll)")
  if args.out:
    paths.write_bytes(paths.resolve(args.out, "--out"), json.dumps(result, indent=2).encode())
  return result


def add_parsers(commands) -> None:
  """These commands' parsers, on the `ddpm` subparsers `commands`."""
  parser = commands.add_parser("schedule", help="print the tables of a noise schedule")
  parser.add_argument("name", choices=sorted(BETA_SCHEDULES))
  parser.add_argument("--steps", type=int, default=1000, help="T (default 1000)")
  parser.add_argument("--rows", type=int, default=11,
                      help="how many evenly spaced steps to print")
  parser.set_defaults(run=schedule_command)

  parser = commands.add_parser(
      "train", help="train (or resume) a run; --config.KEY=VALUE overrides the config",
      usage="ddpm train --config FILE --workdir DIR [--config.KEY=VALUE ...]")
  parser.add_argument("--config", required=True, help="an experiments/configs/*.py file")
  parser.add_argument("--workdir", required=True, help="where checkpoints, metrics and samples go")
  parser.set_defaults(run=train_command, takes_overrides=True, engine=True,
                      outputs=[("workdir", True)])

  parser = commands.add_parser(
      "distill", help="distil a trained run into a few-step student (progressive or consistency)",
      usage="ddpm distill --config FILE --workdir TEACHER --out STUDENT --method "
            "progressive|consistency [--steps K] [--teacher-steps K0] [--config.KEY=VALUE ...]")
  parser.add_argument("--config", required=True,
                      help="a distillation config (experiments/configs/distill_digits.py, "
                           "consistency_digits.py, ...): its optim, train and distill sections; "
                           "the rest is the teacher's")
  parser.add_argument("--workdir", required=True, help="the teacher: a trained run")
  parser.add_argument("--out", required=True, help="the student's run folder (resumed if there)")
  parser.add_argument("--method", required=True, help="progressive or consistency")
  parser.add_argument("--steps", type=int,
                      help="progressive: the student's steps K (teacher steps / 2^m); "
                           "consistency: the steps of its sample grids")
  parser.add_argument("--teacher-steps", type=int,
                      help="progressive: the teacher's DDIM steps K0 (default: the config's)")
  parser.add_argument("--step", type=int, help="the teacher's checkpoint (default: the newest)")
  # No check that --workdir exists: a student resumes without its teacher's folder.
  parser.set_defaults(run=distill_command, takes_overrides=True, engine=True,
                      outputs=[("out", True)])

  parser = commands.add_parser(
      "prepare-data", help="write a config's data as ArrayRecord shards (the fastest source)",
      usage="ddpm prepare-data --config FILE --out DIR [--shards N] [--config.KEY=VALUE ...]")
  parser.add_argument("--config", required=True, help="the config whose data to write")
  parser.add_argument("--out", required=True, help="a new local folder for the shards")
  parser.add_argument("--shards", type=int, default=8, help="number of shard files")
  parser.set_defaults(run=prepare_data_command, takes_overrides=True, outputs=[("out", True)])

  parser = commands.add_parser("sample", help="draw samples from a trained run")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num", type=int, required=True, help="number of samples N")
  parser.add_argument("--out", required=True, help="an .npz file (arr_0: uint8 NHWC)")
  parser.add_argument("--seed", type=seed, default=0)
  parser.add_argument("--batch", type=int, default=256, help="samples per compiled call")
  parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
  sampler_arguments(parser)
  parser.add_argument("--sigmas",
                      help="a consistency model's chain through these noise levels, e.g. 80,0.8 "
                           "(decreasing, EDM's σ; instead of --steps)")
  parser.add_argument("--guidance-interval",
                      help="low,high: guide only where the noise level's EDM σ lies in [low, "
                           "high] (Kynkäänniemi et al. 2024), e.g. 0.28,5.42")
  parser.add_argument("--guide-workdir",
                      help="autoguidance (Karras et al. 2024): a weaker run of the same data and "
                           "conditioning guides this one with weight --guidance")
  parser.add_argument("--guide-step", type=int, help="the guide's checkpoint (default: newest)")
  parser.add_argument("--class", dest="class_label", type=int,
                      help="draw this class only (class-conditional models; default: all in turn)")
  parser.add_argument("--layout", default="npz",
                      help="npz (arr_0 and labels, plus a PNG grid) or folders (a PNG per sample "
                           "in per-class folders, for data augmentation)")
  parser.set_defaults(run=sample_command, inputs=["workdir", "guide_workdir"],
                      outputs=lambda args: [("out", args.layout == "folders")],
                      writes=lambda args: [] if not args.out.lower().endswith(".npz") else [
                          ("--out", args.out),
                          ("the preview beside --out", os.path.splitext(args.out)[0] + ".png")])

  parser = commands.add_parser(
      "evaluate", help="FID/KID/IS of samples, the digits measures, bits/dim of a data split",
      description="ddpm evaluate --samples S.npz --inception W --reference R | --samples S.npz "
                  "--digits | --workdir DIR --bpd")
  parser.add_argument("--samples", help="samples: an .npz (arr_0 uint8 NHWC) or a folder of images")
  parser.add_argument("--inception", help="the FID Inception's weights (pytorch-fid's "
                      "pt_inception-2015-12-05-6726825d.pth or its .npz conversion)")
  parser.add_argument("--reference", help="reference images (.npz or folder) or their saved "
                      "statistics (.npz with mu, sigma)")
  parser.add_argument("--save-reference", help="write the reference images' statistics here")
  parser.add_argument("--digits", action="store_true",
                      help="digits-FID/KID/IS with the project's digit classifier (8×8 digits)")
  parser.add_argument("--digits-reference", default="train", help="digits split to compare with")
  parser.add_argument("--synthetic", help="compare --samples (an .npz in the data's units) "
                      "with a synthetic set's held-out split: phantoms, backbones or sinusoids")
  parser.add_argument("--workdir", help="a training run (for --bpd)")
  parser.add_argument("--bpd", action="store_true",
                      help="NLL bound in bits/dim of a data split under the run's EMA network")
  parser.add_argument("--ode-nll", action="store_true",
                      help="NLL in bits/dim by the probability-flow ODE (uniform "
                           "dequantization, adaptive solve; needs diffrax: pip install "
                           "'.[likelihood]')")
  parser.add_argument("--probes", type=int, default=1,
                      help="--ode-nll: Hutchinson probes an image (their spread is reported)")
  parser.add_argument("--exact-divergence", action="store_true",
                      help="--ode-nll: the exact divergence (one JVP per dimension: small data)")
  parser.add_argument("--ode-decoder", action="store_true",
                      help="--ode-nll of a DDPM run: the lowest level scored by the chain's "
                           "decoder, as the bound scores it, instead of by dequantization")
  parser.add_argument("--split", default="test",
                      help="data split for --bpd and --ode-nll (default: test)")
  parser.add_argument("--num", type=int, help="evaluate the first N images of the split")
  parser.add_argument("--batch", type=int, default=64, help="images per compiled call")
  parser.add_argument("--chunk", type=int, default=10, help="timesteps per network call (--bpd)")
  parser.add_argument("--seed", type=seed, default=0)
  parser.add_argument("--out", help="also write the figures as JSON")
  parser.set_defaults(run=evaluate_command,
                      inputs=["samples", "reference", "workdir"],
                      outputs=[("out", False), ("save_reference", False)],
                      flag_names={"decoder": "--ode-decoder"})
