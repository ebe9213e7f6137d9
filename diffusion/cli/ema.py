"""`ddpm ema`: post-hoc EMA of a run (`diffusion.posthoc`): one σ_rel written as a run folder,
or a sweep of σ_rel values, each measured by the digits measures or the FID Inception."""

import argparse
import json

import numpy as np


def _sigmas(text: str) -> list[float]:
  try:
    values = [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise ValueError(f"--sweep must be comma-separated numbers; got {text!r}") from None
  if not values:
    raise ValueError("--sweep must list at least one σ_rel")
  return values


def ema_command(args: argparse.Namespace) -> None:
  from diffusion import distributed, posthoc, power_ema
  if (args.sigma_rel is None) == (args.sweep is None):
    raise ValueError("give --sigma-rel S (with --out DIR) or --sweep S1,S2,... (with --digits)")
  if args.sigma_rel is not None:
    if not args.out:
      raise ValueError("--sigma-rel writes a run folder: give --out DIR")
    power_ema.gamma_of(args.sigma_rel)  # checked before anything is read
    recon = posthoc.reconstruct(args.workdir, args.sigma_rel, args.step)
    posthoc.write_run(args.workdir, args.out, recon)
    print(f"{args.out}: the EMA of σ_rel {args.sigma_rel:g} at step {recon.step}, from "
          f"{len(recon.sources)} snapshot profiles (profile error {recon.error:.2%}); sample "
          f"with `ddpm sample --workdir {args.out}`")
    return
  sigmas = _sigmas(args.sweep)
  for s in sigmas:
    power_ema.gamma_of(s)
  if args.digits == bool(args.inception):
    raise ValueError("--sweep measures each σ_rel with --digits (a digits run) or --inception "
                     "WEIGHTS --reference IMAGES (FID, KID, precision and recall); give one")
  if args.inception and not args.reference:
    raise ValueError("--inception needs --reference (images, .npz or folder, or their saved "
                     "statistics) to compute FID against")
  posthoc.snapshot_steps(args.workdir)
  distributed.use_cpu_cores()
  distributed.initialize()
  _sweep(args, sigmas)


def _sweep(args: argparse.Namespace, sigmas: list[float]) -> None:
  from diffusion import posthoc
  from diffusion.runs import load_run
  from diffusion.sample_run import draw_samples
  from diffusion.sampling import class_labels
  if args.digits:
    from diffusion.evaluation.digits import DigitsEvaluator, digits_metrics
    evaluator = DigitsEvaluator.load()
    score, fid = lambda samples: digits_metrics(samples, evaluator), "digits-FID"
  else:
    from diffusion.evaluation.measures import InceptionMeasure
    score, fid = InceptionMeasure(args.inception, args.reference,
                                  batch=min(args.batch, 200)), "FID"
  run = load_run(args.workdir, args.step)
  if not args.digits:
    score.check(np.zeros((1, *run.diffusion.spec.shape), np.uint8))  # before any sampling
  labels = class_labels(run, args.num, None, default="cycle")
  options = dict(seed=args.seed, sampler=args.sampler, steps=args.steps, batch=args.batch)
  rows = []

  def measure(name, variables, error=None):
    samples = draw_samples(run, labels, variables=variables, desc=name, **options)
    m = score(samples)
    rows.append((name, m["fid"], m.get("precision"), m.get("recall"), error))
    if "precision" not in m:  # saved statistics: FID only
      print(f"{name:>16}: {fid} {m['fid']:.3f}" + (
          "" if error is None else f" (profile error {error:.2%})"), flush=True)
      return
    print(f"{name:>16}: {fid} {m['fid']:.3f}, precision {m['precision']:.3f}, recall "
          f"{m['recall']:.3f}" + ("" if error is None else f" (profile error {error:.2%})"),
          flush=True)

  measure(f"classic EMA {run.config.train.ema_decay:g}", run.variables)
  for recon in posthoc.reconstruct_all(args.workdir, sigmas, args.step):
    measure(f"σ_rel {recon.sigma_rel:g}", {**run.variables, "params": recon.params},
            recon.error)
  best = min(rows[1:], key=lambda r: r[1])
  print(f"\nbest: {best[0]}, {fid} {best[1]:.3f} against the classic EMA's {rows[0][1]:.3f} "
        f"({best[1] - rows[0][1]:+.3f}); {args.num} samples, seed {args.seed}, step {run.step}")
  if args.out:
    from diffusion import paths
    table = [{"ema": r[0], "fid": r[1], "precision": r[2], "recall": r[3], "profile_error": r[4]}
             for r in rows]
    paths.write_bytes(paths.resolve(args.out, "--out"), json.dumps(
        {"workdir": args.workdir, "step": run.step, "num": args.num, "seed": args.seed,
         "rows": table}, indent=2).encode())


def add_parsers(commands) -> None:
  from diffusion.cli.common import sampler_arguments, seed
  parser = commands.add_parser(
      "ema", help="post-hoc EMA: the parameters averaged at any σ_rel, from a run's snapshots",
      description="ddpm ema --workdir DIR --sigma-rel 0.08 --out DIR2 | ddpm ema --workdir DIR "
                  "--sweep 0.03,0.05,0.08,0.12 --digits")
  parser.add_argument("--workdir", required=True, help="a run trained with "
                      "config.train.power_ema and ema_snapshot_every")
  parser.add_argument("--sigma-rel", type=float,
                      help="the EMA length relative to training time, in (0, 0.2887)")
  parser.add_argument("--sweep", help="comma-separated σ_rel values, each measured (--digits, "
                      "or --inception and --reference)")
  parser.add_argument("--step", type=int, help="the snapshot step (default: the newest)")
  parser.add_argument("--out", help="with --sigma-rel: the run folder to write; with --sweep: "
                                    "a JSON file of the table")
  parser.add_argument("--digits", action="store_true",
                      help="--sweep: measure digits-FID, precision and recall of each")
  parser.add_argument("--inception", help="--sweep: measure FID, KID, precision and recall of "
                      "each with the FID Inception's weights (as `ddpm evaluate`'s)")
  parser.add_argument("--reference", help="--sweep with --inception: reference images (.npz or "
                      "folder) or their saved statistics (FID only)")
  parser.add_argument("--num", type=int, default=1000, help="--sweep: samples of each")
  parser.add_argument("--seed", type=seed, default=0)
  parser.add_argument("--batch", type=int, default=500, help="samples per compiled call")
  sampler_arguments(parser, guidance=False)
  parser.set_defaults(run=ema_command, inputs=["workdir", "inception", "reference"],
                      outputs=lambda args: [("out", args.sigma_rel is not None)])

