"""Guidance on the class-conditional digits: classifier-free guidance, CFG limited to an
interval of σ, and autoguidance by a run trained a quarter as long, at several weights w,
DPM-Solver++ over the same steps; digits-FID, precision and recall of 1,000 samples (the
classes in turn).

  ddpm train --config experiments/configs/digits_cond.py --workdir runs/digits_cond
  ddpm train --config experiments/configs/digits_cond_guide.py --workdir runs/digits_cond_guide
  python experiments/guidance.py --workdir runs/digits_cond --guide runs/digits_cond_guide \\
      --out runs/guidance.json

Network evaluations a sample: unguided, N steps; CFG and autoguidance 2N (the doubled batch,
or the guide); interval CFG N plus N for each step whose σ lies in the interval.
"""

import argparse
import json
import sys


def main(argv=None) -> int:
  from diffusion.evaluation import DigitsEvaluator, digits_metrics
  from diffusion.runs import load_run
  from diffusion.sample_run import draw_samples, load_guide
  from diffusion.sampling import class_labels
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--guide", required=True)
  parser.add_argument("--weights", default="1.25,1.5,2,3")
  parser.add_argument("--interval", default="0.3,5")
  parser.add_argument("--steps", type=int, default=16)
  parser.add_argument("--num", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  evaluator = DigitsEvaluator.load()
  run = load_run(args.workdir)
  guide = load_guide(run, args.guide)
  labels = class_labels(run, args.num, None, default="cycle")
  interval = tuple(float(v) for v in args.interval.split(","))
  rows = []

  def measure(name, w, **options):
    samples = draw_samples(run, labels, seed=args.seed, sampler="dpm++", steps=args.steps,
                           batch=500, desc=f"{name} {w}", guidance=w, **options)
    m = digits_metrics(samples, evaluator)
    rows.append({"guidance": name, "w": w, "fid": m["fid"], "precision": m["precision"],
                 "recall": m["recall"]})
    print(f"{name:<14} w {w if w is not None else '-':<5} digits-FID {m['fid']:6.2f}  precision "
          f"{m['precision']:.3f}  recall {m['recall']:.3f}", flush=True)

  measure("none", None)
  for w in (float(v) for v in args.weights.split(",")):
    measure("cfg", w)
    measure("interval cfg", w, guidance_interval=interval)
    measure("autoguidance", w, guide=guide)
  with open(args.out, "w") as f:
    json.dump({"steps": args.steps, "num": args.num, "seed": args.seed, "interval": interval,
               "rows": rows}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
