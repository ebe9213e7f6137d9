"""The training objectives side by side on the digits, at the default's budget (its network,
2,200 steps of batch 64): DDPM (ε), DDPM with min-SNR-γ (5), v-prediction, flow matching
(uniform and logit-normal t) and EDM, each sampled at up to 1, 2, 4, 8, 16 and 35 network
evaluations (NFE) with the samplers that suit it, 1,000 samples, digits-FID and digits-KID.

  python experiments/objectives.py --dir runs/objectives --seed 0 --out runs/objectives/seed0.json

A DDPM samples with DPM-Solver++(2M) and DDIM at NFE steps; a continuous method with Euler and
DPM-Solver++(2M) at NFE steps (EDM: on its ρ grid and uniform in log σ) and Heun at the most
steps whose 2N − 1 evaluations fit. Runs already trained in --dir are reused. About 20
CPU-minutes a seed on 2 cores. The seeds side by side (each method's chain at each budget
chosen by its mean over the seeds; mean ± std):

  python experiments/objectives.py --table runs/objectives/seed0.json runs/objectives/seed1.json
"""

import argparse
import json
import os
import sys

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
METHODS = {  # name: (config, overrides)
    "DDPM (ε)": ("digits.py", []),
    "DDPM, min-SNR-5": ("digits.py", ["--config.diffusion.snr_gamma=5.0"]),
    "v-prediction": ("digits.py", ["--config.diffusion.prediction=v"]),
    "flow, uniform t": ("digits_fm.py", ["--config.flow.times=uniform"]),
    "flow, logit-normal t": ("digits_fm.py", []),
    "EDM": ("digits_edm.py", []),
}
NFES = (1, 2, 4, 8, 16, 35)


def chains(method: str, nfe: int) -> list[tuple[str, int, str | None]]:
  """(sampler, steps, spacing) within `nfe` network evaluations for a run of `method`."""
  if method not in ("flow", "edm"):
    return [("dpm++", nfe, None), ("ddim", nfe, None)]
  out = [("euler", nfe, None)]
  if nfe >= 2:
    out += [("dpm++", nfe, None)] + ([("dpm++", nfe, "karras")] if method == "edm" else [])
  return out + ([("heun", (nfe + 1) // 2, None)] if nfe >= 3 else [])


def table(files: list[str]) -> str:
  """The markdown table of several seeds' results: per method and budget, the chain with the
  best mean digits-FID over the seeds, as mean ± std (and the chain)."""
  import numpy as np
  by = {}
  for path in files:
    with open(path) as f:
      for r in json.load(f)["results"]:
        key = (r["method"], r["nfe"], r["sampler"], r["steps"], r.get("spacing"))
        by.setdefault(key, []).append(r["fid"])
  lines = [f"| method ({len(files)} seeds) | " + " | ".join(f"NFE ≤ {n}" for n in NFES) + " |",
           "|---|" + "---:|" * len(NFES)]
  for name in METHODS:
    cells = []
    for nfe in NFES:
      mean, std, key = min(((np.mean(v), np.std(v), k) for k, v in by.items()
                            if k[:2] == (name, nfe) and len(v) == len(files)),
                           key=lambda row: row[0])
      chain = f"{key[2]} {key[3]}" + (f" {key[4]}" if key[4] else "")
      cells.append(f"{mean:.2f} ± {std:.2f} ({chain})" if mean < 10 else f"{mean:.0f} ({chain})")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ["--table"]:
    print(table(argv[1:]))
    return 0
  from diffusion import cli
  from diffusion.evaluation import DigitsEvaluator, digits_metrics
  from diffusion.runs import load_run
  from diffusion.sample_run import draw_samples
  from diffusion.sampling import class_labels
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dir", required=True)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num", type=int, default=1000)
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  evaluator = DigitsEvaluator.load()
  results = []
  for name, (config, overrides) in METHODS.items():
    workdir = os.path.join(args.dir, f"{config[:-3]}{''.join(o.split('=')[-1] for o in overrides)}"
                                      f"_seed{args.seed}")
    status = cli.main(["train", "--config", os.path.join(CONFIGS, config), "--workdir", workdir,
                       f"--config.seed={args.seed}", *overrides])
    if status:
      sys.exit(f"{name}: ddpm train exited {status}")
    run = load_run(workdir)
    labels = class_labels(run, args.num, None, default="cycle")
    for nfe in NFES:
      for sampler, steps, spacing in chains(run.method.name, nfe):
        samples = draw_samples(run, labels, seed=args.seed, sampler=sampler, steps=steps,
                               spacing=spacing, batch=500, desc=f"{name} {sampler} {steps}")
        metrics = digits_metrics(samples, evaluator)
        results.append({"method": name, "nfe": nfe, "sampler": sampler, "steps": steps,
                        "spacing": spacing, "fid": metrics["fid"], "kid": metrics["kid"],
                        "precision": metrics["precision"], "recall": metrics["recall"]})
        print(f"{name:<22} NFE ≤ {nfe:>2}: {sampler:<6} {steps:>2} steps {spacing or '':<7} "
              f"digits-FID {metrics['fid']:7.2f}  KID {metrics['kid']:7.1f}  precision "
              f"{metrics['precision']:.3f} recall {metrics['recall']:.3f}", flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"seed": args.seed, "num": args.num, "results": results}, f, indent=2)
  print(f"\n| method | " + " | ".join(f"NFE ≤ {n}" for n in NFES) + " |")
  print("|---|" + "---:|" * len(NFES))
  for name in METHODS:
    cells = []
    for nfe in NFES:
      best = min((r for r in results if r["method"] == name and r["nfe"] == nfe),
                 key=lambda r: r["fid"])
      spacing = f" {best['spacing']}" if best["spacing"] else ""
      cells.append(f"{best['fid']:.2f} ({best['sampler']} {best['steps']}{spacing})")
    print(f"| {name} | " + " | ".join(cells) + " |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
