"""Plans: the library's real programs compiled for a TPU topology on any host (libtpu compiles
for a TPU without one), and what the TPU compiler says of them: per-chip memory (it refuses a
program that does not fit), FLOPs, its cost model's time and the collectives.

  devices = topology.devices("v5p:2x2x1")
  result = plan(config, devices, programs=("train", "sample"))
  result.figures["programs"]["train"]["memory"]["state_bytes_per_device"]

The times are XLA's estimates, not measurements.
"""

import dataclasses
import math
import time
from typing import Any

import ml_collections

from diffusion.runs import build
from diffusion.distributed import mesh_from_config, mesh_sizes
from diffusion.plan import analysis, topology
from diffusion.plan.programs import PROGRAMS, lower, skipped

__all__ = ["PROGRAMS", "Plan", "plan", "search", "topology"]


@dataclasses.dataclass
class Plan:
  """`figures`: what `ddpm plan --json` writes; `compiled`: each compiled program by name."""
  figures: dict
  compiled: dict[str, Any]


def _check(config, devices: int, batch: int | None) -> None:
  """How the config fits the devices, before anything compiles."""
  mesh_sizes(config, devices)
  for name, value in (("config.train.batch_size", config.train.batch_size),
                      ("`sample_batch`", batch)):
    if value is not None and (value < 1 or value % devices):
      raise ValueError(f"{name} {value} must be a positive multiple of the {devices} devices")


def plan(config, devices, *, programs=("train", "sample"), batch: int | None = None,
         peak_tflops: float | None = None, model=None, progress=None) -> Plan:
  """Compiles `programs` (of PROGRAMS) of `config` for `devices` (e.g. `topology.devices`),
  on the mesh `ddpm train` would make of them (config.mesh), and reads what the compiler says.

  batch: the global batch of the sampler, Inception and bits/dim programs (default:
  config.train.batch_size). peak_tflops: a device's bf16 peak for the utilisation (default:
  the chip's, `topology.chip`). model: the network (default: the config's). progress: called
  with each program's name before it compiles. A program the compiler refuses for want of
  memory has "fits": False and the bytes it needs and has; others raise.
  """
  devices = list(devices)
  run = build(config, model)  # the config's own errors, and the network's fit to the data
  _check(config, len(devices), batch)
  for name in programs:
    if name not in PROGRAMS:
      raise ValueError(f"`programs`: unknown program {name!r}; choose from {', '.join(PROGRAMS)}")
  batch = batch or config.train.batch_size
  mesh = mesh_from_config(config, devices)
  chip = topology.chip(devices[0].device_kind)
  peak = peak_tflops or chip.peak_tflops
  figures = {"device_kind": devices[0].device_kind, "devices": len(devices),
             "slices": len({getattr(d, "slice_index", 0) for d in devices}),
             "platform": devices[0].platform, "hbm_bytes_per_device":
             int(chip.hbm_gib * 2**30) if chip.hbm_gib else None, "peak_tflops_per_device": peak,
             "mesh": dict(mesh.shape), "programs": {}, "skipped": {}}
  compiled = {}
  for name in programs:
    reason = skipped(run, name)
    if reason:
      figures["skipped"][name] = reason
      continue
    if progress:
      progress(name)
    program = lower(name, run, mesh, batch=batch)
    entry = {"what": program.what, "examples_per_call": program.examples,
             "examples_per_device": program.examples // len(devices),
             "estimate": "XLA's cost model (optimal_seconds), not a measurement"}
    if program.state is not None:  # from the shardings: known whether or not it fits
      entry["state_bytes_per_device"] = analysis.shard_bytes(program.state)
    start = time.perf_counter()
    try:
      with topology.quiet():
        compiled[name] = program.lowered.compile()
    except Exception as e:  # noqa: BLE001 (only the compiler's refusal for memory is kept)
      refused = analysis.out_of_memory(e)
      if refused is None:
        raise
      entry.update(fits=False, needed_bytes=refused[0], available_bytes=refused[1],
                   compile_s=time.perf_counter() - start,
                   error=str(e).strip().splitlines()[0][:300])
      figures["programs"][name] = entry
      continue
    entry["compile_s"] = time.perf_counter() - start
    result = compiled[name]
    mem = analysis.memory(result)
    if program.state is not None:
      mem["state_bytes_per_device"] = entry["state_bytes_per_device"]
    entry.update(fits=True, memory=mem,
                 cost=analysis.cost(result, scale=program.scale, examples=program.examples,
                                    devices=len(devices), peak_tflops=peak),
                 collectives=analysis.collectives(result.as_text()))
    figures["programs"][name] = entry
  return Plan(figures, compiled)


def search(config, devices, what: str, *, limit: int = 8, model=None, progress=None) -> dict:
  """The largest per-device batch (powers of two; `what` = "batch") or the smallest
  config.mesh.fsdp (`what` = "fsdp", over the divisors of the devices a slice) for which the
  TPU compiler takes the train step, by bisection over at most `limit` compiles.

  Returns {"what", "best": the value (None if none fits), "tries": [{"value", "fits",
  "total_bytes" or "needed_bytes"}, ...]} in the order compiled.
  """
  devices = list(devices)
  if what not in ("batch", "fsdp"):
    raise ValueError(f"`search` must be batch or fsdp; got {what!r}")
  tries, verdicts = [], {}

  def fits(value) -> bool:
    if value in verdicts:
      return verdicts[value]
    trial = config.copy_and_resolve_references()
    with trial.unlocked():
      if what == "batch":
        trial.train.batch_size = value * len(devices)
      else:
        mesh = {k: v for k, v in dict(trial.get("mesh") or {}).items() if k != "data"}
        trial.mesh = ml_collections.ConfigDict({**mesh, "fsdp": value})
    if progress:
      progress(f"{what} {value}")
    entry = plan(trial, devices, programs=("train",), model=model).figures["programs"]["train"]
    ok = entry["fits"]
    tries.append({"value": value, "fits": ok, **(
        {"total_bytes": entry["memory"]["total_bytes"]} if ok else
        {"needed_bytes": entry["needed_bytes"], "available_bytes": entry["available_bytes"]})})
    verdicts[value] = ok
    return ok

  if what == "fsdp":
    per_slice = len(devices) // len({getattr(d, "slice_index", 0) for d in devices})
    candidates = [f for f in range(1, per_slice + 1) if per_slice % f == 0]
    low, high = 0, len(candidates) - 1  # the first that fits lies in [low, high], if any
    if not fits(candidates[high]):
      return {"what": what, "best": None, "tries": tries}
    while low < high and len(tries) < limit:
      middle = (low + high) // 2
      if fits(candidates[middle]):
        high = middle
      else:
        low = middle + 1
    return {"what": what, "best": candidates[high], "tries": tries,
            "exact": low == high}
  # batch: from the config's per-device batch, gallop up (or down) by powers of two until
  # the verdict changes, then bisect the exponent
  low = high = None
  start = int(math.log2(max(1, config.train.batch_size // len(devices))))
  if fits(2 ** start):
    low, jump = start, 1
    while high is None and len(tries) < limit:
      if fits(2 ** (low + jump)):
        low, jump = low + jump, jump * 2
      else:
        high = low + jump
  else:
    high, jump = start, 1
    while low is None and high > 0 and len(tries) < limit:
      value = max(0, high - jump)
      if fits(2 ** value):
        low = value
      else:
        high, jump = value, jump * 2
  while low is not None and high is not None and high - low > 1 and len(tries) < limit:
    middle = (low + high) // 2
    if fits(2 ** middle):
      low = middle
    else:
      high = middle
  return {"what": what, "best": None if low is None else 2 ** low, "tries": tries,
          "exact": low is None and high == 0 or (low is not None and high == low + 1)}
