"""The "Planned on TPU topologies" table of docs/benchmarks.md: `ddpm plan` of the train step
for each config on each topology (bfloat16 compute), at fsdp 1 and, where that does not fit, at
the smallest fsdp that does (`--search fsdp`); each plan's JSON under --out, and the table in
Markdown on stdout. Hours on a 2-core CPU (a 256² plan compiles for several minutes); a cell
already in --out is read, not compiled again, so the script can be stopped and run again.

  python3 benchmarks/plan_tpu.py --out plans [--configs cifar10,...] [--topologies v3:2x2,...]
"""

import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from diffusion.config import load_config  # noqa: E402

CONFIGS = {  # name: (config file, overrides)
    "cifar10": ("cifar10.py", []),
    "celebahq256": ("celebahq256.py", []),
    "dit256": ("dit256.py", []),
    "volumes64": ("volumes3d.py", ["--config.data.shape=(64,64,64,1)"]),
}
TOPOLOGIES = ("v3:2x2", "v4:2x2x1", "v5e:2x4", "v5p:2x2x1", "v6e:2x4", "v5p:4x4x4")
MEASURED = ("H200 (measured, docs/benchmarks.md): cifar10, bf16, batch 256: 7,870 images/s "
            "for the train step")


def plan(out: str, name: str, topology: str, *extra: str) -> dict:
  """One `ddpm plan` (or --search) into out/NAME.json, unless it is there. A global batch that
  the topology's chips do not divide is raised to the next multiple of them (recorded in the
  JSON as "batch_raised_to")."""
  path = os.path.join(out, f"{name}.json")
  if not os.path.exists(path):
    config, overrides = CONFIGS[name.split("@")[0]]
    command = [sys.executable, "-m", "diffusion", "plan", "--config",
               os.path.join(ROOT, "experiments", "configs", config), "--topology", topology,
               "--programs", "train", "--json", path, "--config.model.dtype=bfloat16",
               *overrides, *extra]
    print("$", " ".join(command[1:]), file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=ROOT, text=True, capture_output=True)
    raised = re.search(r"batch_size (\d+) must be a positive multiple of the (\d+) devices",
                       done.stderr)
    if done.returncode == 2 and raised:
      batch, chips = int(raised.group(1)), int(raised.group(2))
      batch = -(-batch // chips) * chips
      command.append(f"--config.train.batch_size={batch}")
      print("$", " ".join(command[1:]), file=sys.stderr, flush=True)
      done = subprocess.run(command, cwd=ROOT, text=True, capture_output=True)
      if done.returncode in (0, 1):
        with open(path) as f:
          record = json.load(f)
        record["batch_raised_to"] = batch
        with open(path, "w") as f:
          json.dump(record, f, indent=2)
    if done.returncode not in (0, 1):
      raise SystemExit(f"{name} on {topology}: {done.stderr.strip().splitlines()[-1]}")
  with open(path) as f:
    return json.load(f)


def gib(value) -> str:
  return "-" if value is None else f"{value / 2**30:.1f}"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--configs", default=",".join(CONFIGS))
  parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  rows = ["| config | topology | chips | batch/chip | state GiB/chip (fsdp 1) | total GiB/chip "
          "(fsdp 1) | smallest fsdp that fits: total GiB | est. images/s | est. MFU | "
          "recipe, est. hours |", "|" + "---|" * 10]
  for name in args.configs.split(","):
    for topology in args.topologies.split(","):
      tag = topology.replace(":", "_")
      base = plan(args.out, f"{name}@{tag}", topology)
      train = base["programs"]["train"]
      fits, best = train["fits"], train
      smallest = "1" if fits else "-"
      if not fits:
        found = plan(args.out, f"{name}@{tag}@search", topology, "--search", "fsdp")
        if found["best"]:
          best = plan(args.out, f"{name}@{tag}@fsdp{found['best']}", topology,
                      f"--config.mesh.fsdp={found['best']}")["programs"]["train"]
          smallest = f"{found['best']}: {gib(best['memory']['total_bytes'])}"
      memory = {"state_bytes_per_device": train.get("state_bytes_per_device"),
                **train.get("memory", {})}
      cost = best.get("cost", {})
      rate, mfu = cost.get("estimated_examples_per_s"), cost.get("estimated_mfu")
      config = load_config(os.path.join(ROOT, "experiments", "configs", CONFIGS[name][0]))
      hours = (config.train.num_steps * config.train.batch_size / rate / 3600) if rate else None
      total = (gib(memory.get("total_bytes")) if fits
               else f"does not fit ({gib(train['needed_bytes'])} needed)")
      label = name + (f" (batch {base['batch_raised_to']})" if "batch_raised_to" in base else "")
      rows.append(
          f"| {label} | {topology} | {base['devices']} | {train['examples_per_device']} | "
          f"{gib(memory.get('state_bytes_per_device'))} | {total} | {smallest} | "
          f"{'-' if rate is None else f'{rate:,.0f}'} | {'-' if mfu is None else f'{mfu:.0%}'} | "
          f"{config.train.num_steps:,} × {config.train.batch_size}: "
          f"{'-' if hours is None else f'{hours:.1f}'} |")
  print("\n".join(rows))
  print(f"\n{MEASURED}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
