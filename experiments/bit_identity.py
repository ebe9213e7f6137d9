"""Fingerprints of a fixed digits run: its checkpoint and the samples of every sampler, to show
that a change of the engine's code left what it computes unchanged, bit for bit.

  python experiments/bit_identity.py --dir /tmp/bits --out before.json     # at the old commit
  python experiments/bit_identity.py --dir /tmp/bits2 --out after.json --compare before.json

It runs the `ddpm` commands in this process: `ddpm train` of the default digits config for
200 steps; a progressive student (16 -> 4 steps, 2 rounds of 20 updates) and a consistency
student (20 updates) distilled from it; `ddpm sample` of 16 samples (seed 0) with ancestral
DDPM, DDIM (η 0 and 1), DPM-Solver++(2M), Heun, EDM-SDE, the progressive student and the
consistency student (1 and 2 steps). Each fingerprint is the SHA-256 of the arrays' bytes: the
checkpoint's parameters, EMA parameters and optimizer state, and each sample file's arr_0.
With --compare, the fingerprints that differ from that file are listed and the exit status is 1.
About 5 minutes on 2 CPU cores.
"""

import argparse
import hashlib
import json
import os
import sys

import jax
import numpy as np

from diffusion import cli

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
SAMPLES = {  # name: the `ddpm sample` options (the run: "teacher", "progressive", "consistency")
    "ddpm": ("teacher", ["--sampler", "ddpm", "--steps", "100"]),
    "ddim": ("teacher", ["--sampler", "ddim"]),
    "ddim_eta1": ("teacher", ["--sampler", "ddim", "--steps", "20", "--eta", "1"]),
    "dpm++": ("teacher", ["--sampler", "dpm++"]),
    "heun": ("teacher", ["--sampler", "heun"]),
    "edm-sde": ("teacher", ["--sampler", "edm-sde"]),
    "progressive_4": ("progressive", ["--steps", "4"]),
    "progressive_8": ("progressive", ["--steps", "8"]),
    "consistency_1": ("consistency", []),
    "consistency_2": ("consistency", ["--steps", "2"]),
}


def fingerprint(tree) -> str:
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    array = np.asarray(leaf)
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(f"{array.dtype}{array.shape}".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def ddpm(*argv: str) -> None:
  status = cli.main(list(argv))
  if status:
    sys.exit(f"ddpm {' '.join(argv)}: exit status {status}")


def checkpoint_fingerprints(workdir: str) -> dict[str, str]:
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    step = manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore())).state
  finally:
    manager.close()
  return {f"checkpoint {step} {part}": fingerprint(state[part])
          for part in ("params", "ema_params", "opt_state", "step", "skipped")}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dir", required=True, help="a new folder for the runs and samples")
  parser.add_argument("--out", required=True, help="the fingerprints, as JSON")
  parser.add_argument("--compare", help="fingerprints of an earlier run of this script")
  args = parser.parse_args(argv)
  runs = {name: os.path.join(args.dir, name) for name in ("teacher", "progressive", "consistency")}
  ddpm("train", "--config", os.path.join(CONFIGS, "digits.py"), "--workdir", runs["teacher"],
       "--config.train.num_steps=200")
  ddpm("distill", "--config", os.path.join(CONFIGS, "distill_digits.py"),
       "--workdir", runs["teacher"], "--out", runs["progressive"], "--method", "progressive",
       "--steps", "4", "--teacher-steps", "16", "--config.distill.round_steps=20",
       "--config.train.checkpoint_every=20", "--config.train.sample_every=40")
  ddpm("distill", "--config", os.path.join(CONFIGS, "consistency_digits.py"),
       "--workdir", runs["teacher"], "--out", runs["consistency"], "--method", "consistency",
       "--config.train.num_steps=20", "--config.train.checkpoint_every=20",
       "--config.train.sample_every=20")
  prints = {}
  for name, workdir in runs.items():
    prints.update({f"{name} {k}": v for k, v in checkpoint_fingerprints(workdir).items()})
  for name, (run, options) in SAMPLES.items():
    out = os.path.join(args.dir, f"samples_{name}.npz")
    ddpm("sample", "--workdir", runs[run], "--num", "16", "--out", out, *options)
    with np.load(out) as data:
      prints[f"samples {name}"] = fingerprint({"arr_0": data["arr_0"], "labels": data["labels"]})
  with open(args.out, "w") as f:
    json.dump(prints, f, indent=2)
  for name, value in prints.items():
    print(f"{value[:16]}  {name}")
  if args.compare:
    with open(args.compare) as f:
      before = json.load(f)
    differ = sorted(k for k in set(before) | set(prints) if before.get(k) != prints.get(k))
    print(f"{len(prints) - len(differ)} of {len(set(before) | set(prints))} fingerprints equal "
          f"{args.compare}'s" + (f"; differ: {', '.join(differ)}" if differ else ""))
    return 1 if differ else 0
  return 0


if __name__ == "__main__":
  sys.exit(main())
