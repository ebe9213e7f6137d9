"""Motif scaffolding on the protein example: keep the first residues of held-out backbones,
generate the rest with RePaint, and measure how close the scaffolds come to the structures the
motifs were cut from, beside unconditional samples superposed on the same motifs.

  ddpm train --config experiments/configs/protein.py --workdir runs/protein
  python experiments/scaffold_backbones.py --workdir runs/protein --num 64 --motif 8

The same as `ddpm inpaint --workdir runs/protein --image motif.npy --mask known.npy --out
scaffold.npz` for every motif. Columns: RMSD (Å) over the generated residues against the
original structure, in the motif's frame (the baseline: an unconditional sample superposed on
the motif by its first residues, Kabsch), and the Cα-Cα distance of the bond that joins motif
and scaffold (3.8 Å in the data).
"""

import argparse
import json
import time

import numpy as np

from diffusion.applications import inpaint
from diffusion.data.synthetic import Backbones
from diffusion.distributed import make_mesh, replicate
from diffusion.evaluation.structure import scaffold_rmsd, superpose
from diffusion.sample_run import draw_samples
from diffusion.runs import load_run
from diffusion.runs import base_key


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--num", type=int, default=64, help="held-out backbones to scaffold")
  parser.add_argument("--motif", type=int, default=8, help="residues kept from the start")
  parser.add_argument("--steps", type=int, default=250)
  parser.add_argument("--jump-length", type=int, default=10)
  parser.add_argument("--resamplings", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", help="a JSON file for the results")
  args = parser.parse_args(argv)

  run = load_run(args.workdir)
  spec, step = run.diffusion.spec, run.step
  test = Backbones(spec, split="test")
  truth = np.stack([test[i]["x"] for i in range(args.num)])
  labels = np.array([test[i]["label"] for i in range(args.num)])
  known = np.arange(spec.shape[0]) < args.motif
  mesh = make_mesh()
  start = time.perf_counter()
  scaffolds = inpaint(run, replicate(run.variables, mesh), truth, known, mesh,
                      base_key(args.seed, "sample"), steps=args.steps,
                      jump_length=args.jump_length, resamplings=args.resamplings)
  seconds = time.perf_counter() - start
  free = draw_samples(run, np.zeros(args.num, int), seed=args.seed + 1)
  baseline = superpose(free, truth, known)
  joint = lambda x: np.linalg.norm(x[:, args.motif] - x[:, args.motif - 1], axis=-1)
  rows = {"scaffold": scaffolds, "unconditional, superposed": baseline}
  result = {"step": step, "num": args.num, "motif": args.motif, "seconds": seconds, "rows": {}}
  print(f"{args.num} held-out backbones, residues 1-{args.motif} kept, "
        f"{spec.shape[0] - args.motif} generated (checkpoint {step}; RePaint {seconds:.0f} s)")
  print(f"{'':<28} {'RMSD median':>11} {'helices':>8} {'hairpins':>9} {'joint Cα-Cα':>12}")
  for name, x in rows.items():
    rmsd = scaffold_rmsd(x, truth, known)
    r = {"rmsd_median": float(np.median(rmsd)),
         "rmsd_helix": float(np.median(rmsd[labels == 0])),
         "rmsd_hairpin": float(np.median(rmsd[labels == 1])),
         "joint_mean": float(joint(x).mean()), "joint_std": float(joint(x).std())}
    result["rows"][name] = r
    print(f"{name:<28} {r['rmsd_median']:>11.2f} {r['rmsd_helix']:>8.2f} "
          f"{r['rmsd_hairpin']:>9.2f} {r['joint_mean']:>7.2f} ± {r['joint_std']:.2f}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
