"""The `ddpm` command (also `python -m diffusion`)."""

import argparse
import json
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


def _bench_unet(args: argparse.Namespace) -> None:
  """Times the forward pass and training gradient of a config's network."""
  from diffusion import benchmark, models
  from diffusion.config import load_config
  config = load_config(args.config)
  model_config = dict(config.model)
  if args.dtype:
    model_config["dtype"] = args.dtype
  model = models.from_config(model_config)
  size, channels = config.data.image_size, config.data.channels
  result = benchmark.bench_unet(model, args.batch, (size, size, channels), steps=args.steps)
  result["config"] = args.config
  print(benchmark.format_table(result))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


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

  args = parser.parse_args(argv)
  if args.command == "schedule" and (args.steps < 1 or args.rows < 1):
    parser.error("--steps and --rows must be positive")
  if args.command == "bench-unet" and (args.batch < 1 or args.steps < 1):
    parser.error("--batch and --steps must be positive")
  args.run(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
