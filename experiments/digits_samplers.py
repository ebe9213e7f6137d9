"""Sample quality against sampler and number of steps, on a digits run: the DDIM paper's table
(FID against S for η = 0 and η = 1) in miniature, with the digits-FID/KID/IS.

  ddpm train --config experiments/configs/digits.py --workdir runs/digits
  python experiments/digits_samplers.py --workdir runs/digits --num 1000 \
      --rows ddpm:1000 ddim:50:0 dpm++:20 --out runs/digits/samplers.json

A row is SAMPLER:STEPS[:ETA]; the row `ddim-table` stands for the DDIM paper's grid:
S = 10, 20, 50, 100, 1000 for η = 0 and 1, and ancestral 1,000. Every row
draws the same `--num` samples' noise (same seed). The floor a perfect model
would reach with as many samples is printed beside them: the held-out test
split's measures (297 images) against the train split.
"""

import argparse
import json
import os
import time


from diffusion.data import DigitsSource
from diffusion.evaluation import DigitsEvaluator, digits_metrics
from diffusion.sample_run import draw_samples
from diffusion.sampling import class_labels
from diffusion.runs import load_run

DDIM_TABLE = [f"ddim:{s}:{eta}" for eta in (0, 1) for s in (10, 20, 50, 100, 1000)] + ["ddpm:1000"]


def parse_row(row: str) -> tuple[str, int, float]:
  parts = row.split(":")
  if len(parts) not in (2, 3):
    raise ValueError(f"--rows: {row!r} is not SAMPLER:STEPS[:ETA]")
  return parts[0], int(parts[1]), float(parts[2]) if len(parts) == 3 else 0.0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num", type=int, default=1000)
  parser.add_argument("--rows", nargs="+", default=["ddpm:1000", "ddim:50:0", "dpm++:20"])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch", type=int, default=500)
  parser.add_argument("--step", type=int, help="a checkpoint's step (default: the newest)")
  parser.add_argument("--out", help="a JSON file for the figures")
  args = parser.parse_args(argv)
  rows = [parse_row(r) for row in args.rows for r in (DDIM_TABLE if row == "ddim-table" else [row])]
  run = load_run(args.workdir, args.step)
  step = run.step
  evaluator = DigitsEvaluator.load()
  labels = class_labels(run, args.num, None, default="cycle")
  results = [{"row": "held-out test split", **digits_metrics(
      DigitsSource(split="test").images, evaluator)}]
  for sampler, steps, eta in rows:
    start = time.perf_counter()
    samples = draw_samples(run, labels, seed=args.seed, batch=args.batch,
                           sampler=sampler, steps=steps, eta=eta,
                           desc=f"{sampler} S={steps} eta={eta}")
    seconds = time.perf_counter() - start
    results.append({"row": f"{sampler} S={steps}" + (f" η={eta:g}" if sampler == "ddim" else ""),
                    "sampler": sampler, "steps": steps, "eta": eta, "seconds": seconds,
                    **digits_metrics(samples, evaluator)})
  print(f"{args.workdir} (checkpoint {step}), {args.num} samples per row, seed {args.seed}")
  print(f"| {'row':<22} | digits-FID | digits-KID | digits-IS |")
  print(f"|{'-' * 24}|-----------:|-----------:|----------:|")
  for r in results:
    print(f"| {r['row']:<22} | {r['fid']:>10.2f} | {r['kid']:>10.2f} | {r['is']:>9.2f} |")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({"workdir": args.workdir, "step": step, "num": args.num, "seed": args.seed,
                 "results": results}, f, indent=2)
  return results


if __name__ == "__main__":
  main()
