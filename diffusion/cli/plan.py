"""`ddpm plan`: the library's programs compiled for a TPU topology on this machine, and what the
TPU compiler says of them (per-chip memory, FLOPs, its cost model's time, collectives)."""

import argparse
import sys

GIB = 2**30


def _programs(text: str) -> tuple[str, ...]:
  from diffusion.plan import PROGRAMS
  names = tuple(n.strip() for n in text.split(",") if n.strip())
  unknown = [n for n in names if n not in PROGRAMS]
  if not names or unknown:
    raise ValueError(f"--programs {text!r}: choose from {', '.join(PROGRAMS)} (comma-separated)")
  return names


def _gib(value) -> str:
  return "-" if value is None else f"{value / GIB:.2f}"


def format_plan(figures: dict, topology: str) -> str:
  """The plan as a table: per program, memory per chip, compile time, FLOPs, XLA's estimate."""
  mesh = figures["mesh"]
  hbm = figures["hbm_bytes_per_device"]
  slices = f" over {figures['slices']} slices" if figures["slices"] > 1 else ""
  lines = [f"{topology}: {figures['devices']} × {figures['device_kind']}{slices}, "
           f"mesh data {mesh['data']} × fsdp {mesh['fsdp']}, HBM {_gib(hbm)} GiB a chip, "
           f"bf16 peak {figures['peak_tflops_per_device'] or '-'} TFLOP/s a chip",
           "times are XLA's cost-model estimates (optimal_seconds), not measurements"]
  head = (f"{'program':<10} {'batch/chip':>10} {'state GiB':>9} {'temp GiB':>9} {'total GiB':>9} "
          f"{'compile s':>9} {'GFLOP/ex':>9} {'est. ms':>9} {'est. ex/s':>10} {'est. MFU':>8}")
  lines += ["", "per chip:", head, "-" * len(head)]
  for name, p in figures["programs"].items():
    if not p["fits"]:
      lines.append(f"{name:<10} {p['examples_per_device']:>10} does not fit: needs "
                   f"{_gib(p['needed_bytes'])} GiB of {_gib(p['available_bytes'])} GiB "
                   f"({p['compile_s']:.1f} s)")
      continue
    m, c = p["memory"], p["cost"]
    seconds, mfu = c["estimated_seconds"], c["estimated_mfu"]
    ms = "-" if seconds is None else f"{seconds * 1e3:.2f}"
    rate = "-" if seconds is None else f"{c['estimated_examples_per_s']:.0f}"
    mfu = "-" if mfu is None else f"{mfu:.0%}"
    lines.append(
        f"{name:<10} {p['examples_per_device']:>10} {_gib(m.get('state_bytes_per_device')):>9} "
        f"{_gib(m['temp_bytes']):>9} {_gib(m['total_bytes']):>9} {p['compile_s']:>9.1f} "
        f"{c['flops_per_example'] / 1e9:>9.2f} {ms:>9} {rate:>10} {mfu:>8}")
  collectives = [(name, op, v) for name, p in figures["programs"].items() if p["fits"]
                 for op, v in p["collectives"].items() if v["count"]]
  if collectives:
    lines += ["", "collectives per chip (count, MiB):"]
    for name, p in figures["programs"].items():
      if p["fits"]:
        parts = [f"{op} {v['count']} ({v['bytes'] / 2**20:.1f})"
                 for op, v in p["collectives"].items() if v["count"]]
        lines.append(f"  {name:<10} {', '.join(parts) or 'none'}")
  for name, p in figures["programs"].items():
    lines.append(f"  {name}: {p['what']}, {p['examples_per_call']} examples a call")
  for name, why in figures["skipped"].items():
    lines.append(f"  {name}: skipped: {why}")
  return "\n".join(lines)


def format_search(found: dict) -> str:
  lines = [f"--search {found['what']}: compiles of the train step, in order"]
  for t in found["tries"]:
    verdict = (f"fits ({_gib(t['total_bytes'])} GiB)" if t["fits"]
               else f"does not fit (needs {_gib(t['needed_bytes'])} of "
                    f"{_gib(t['available_bytes'])} GiB)")
    lines.append(f"  {found['what']} {t['value']}: {verdict}")
  best = found["best"]
  what = "largest per-chip batch" if found["what"] == "batch" else "smallest fsdp"
  lines.append(f"{what} that fits: {best if best is not None else 'none'}"
               + ("" if found.get("exact", True) else " (the search stopped at its compile limit)"))
  return "\n".join(lines)


def run_plan(args: argparse.Namespace) -> int:
  import jax
  from diffusion.cli.common import config_with_overrides, report
  from diffusion.plan import plan, search, topology
  if args.peak_tflops is not None and not args.peak_tflops > 0:
    raise ValueError(f"--peak-tflops must be > 0; got {args.peak_tflops}")
  programs = _programs(args.programs)
  config = config_with_overrides(args.config, args.overrides)
  devices = topology.devices(args.topology, args.slices)
  jax.config.update("jax_enable_compilation_cache", False)  # the compile times are real
  progress = lambda what: print(f"compiling {what} for {args.topology} ...", file=sys.stderr,
                                flush=True)
  if args.search:
    found = search(config, devices, args.search, progress=progress)
    report(args, {"topology": args.topology, "slices": args.slices, **found},
           format_search(found))
    return 0 if found["best"] is not None else 1
  result = plan(config, devices, programs=programs, batch=args.sample_batch,
                peak_tflops=args.peak_tflops, progress=progress)
  report(args, {"topology": args.topology, **result.figures},
         format_plan(result.figures, args.topology))
  for name, p in result.figures["programs"].items():
    if not p["fits"]:
      print(f"ddpm plan: {name} does not fit on {args.topology}: it needs "
            f"{_gib(p['needed_bytes'])} GiB a chip and a {result.figures['device_kind']} has "
            f"{_gib(p['available_bytes'])} GiB (try --config.mesh.fsdp, a smaller "
            "--config.train.batch_size, or --search)", file=sys.stderr)
      return 1
  return 0


def add_parsers(commands) -> None:
  """The plan command's parser, on the `ddpm` subparsers `commands`."""
  from diffusion.plan import PROGRAMS
  parser = commands.add_parser(
      "plan", help="compile the programs for a TPU topology here: per-chip memory, FLOPs, "
                   "XLA's time estimate, collectives (needs libtpu: pip install '.[tpu]')")
  parser.add_argument("--config", required=True, help="an experiments/configs/*.py file")
  parser.add_argument("--topology", required=True,
                      help="GENERATION:AxB[xC], chips along each axis, e.g. v5e:2x4, v5p:2x2x1, "
                           "v4:2x2x1, v3:2x2, v6e:2x4")
  parser.add_argument("--slices", type=int, default=1,
                      help="slices over the data-centre network; the mesh's data axis spans them")
  parser.add_argument("--programs", default="train,sample",
                      help=f"comma-separated, of {', '.join(PROGRAMS)} (default: train,sample)")
  parser.add_argument("--sample-batch", type=int,
                      help="global batch of sample, inception and bpd (default: the training "
                           "batch)")
  parser.add_argument("--search", choices=["batch", "fsdp"],
                      help="the largest per-chip batch (powers of two) or the smallest fsdp "
                           "whose train step fits, by bisection (at most 8 compiles)")
  parser.add_argument("--peak-tflops", type=float,
                      help="a chip's bf16 peak for the MFU (known for v3, v4, v5e, v5p, v6e)")
  parser.add_argument("--json", help="also write the figures to this file")
  parser.set_defaults(run=run_plan, takes_overrides=True, returns_status=True,
                      outputs=[("json", False)])
