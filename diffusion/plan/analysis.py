"""What XLA says of a compiled program: per-device memory, FLOPs, its cost-model time and the
collectives, read from `compiled.memory_analysis()`, `cost_analysis()` and the HLO text.

Every time here is XLA's estimate (its cost model's `optimal_seconds`), never a measurement.
XLA counts a loop's body once: figures of a program with a loop (the sampler's chain, the
bound's terms, k steps a dispatch kept as a while loop) are scaled to the whole call
(`programs.Program.scale`).
"""

import math
import re

import jax

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16, "f16": 16,
         "bf16": 16, "s32": 32, "u32": 32, "f32": 32, "s64": 64, "u64": 64, "f64": 64,
         "c64": 64, "c128": 128}
_ARRAY = re.compile(r"\b(pred|[su](?:4|8|16|32|64)|bf16|f16|f32|f64|c64|c128|f8e\w*)\[([\d,]*)\]")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s(" + "|".join(COLLECTIVES)
                 + r")(-start)?\(")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*(.*?)\s*\{\s*$")
_OOM = re.compile(r"\(([\d.]+)([KMGT]?)\)\s*exceeds available HBM\s*\(([\d.]+)([KMGT]?)\)")
_UNIT = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _array_bytes(shape: str) -> list[int]:
  """The bytes of each array in an HLO shape ("f32[8,4]{1,0}" or a tuple of them)."""
  sizes = []
  for dtype, dims in _ARRAY.findall(shape):
    count = 1
    for d in filter(None, dims.split(",")):
      count *= int(d)
    sizes.append(count * _BITS.get(dtype, 8) // 8)
  return sizes


def collectives(hlo: str) -> dict[str, dict]:
  """{op: {"count": instructions, "bytes": their result bytes, "largest": the largest one's}}
  for each collective of an HLO module's text, per device (asynchronous *-start forms counted
  as the op; of a start's tuple, its largest array: the gathered or received buffer). The TPU
  compiler writes a reduce-scatter as an all-reduce inside an "all-reduce-scatter" fusion: it
  is counted as a reduce-scatter of the fusion's result."""
  out = {op: {"count": 0, "bytes": 0, "largest": 0} for op in COLLECTIVES}
  computation, result = "", ""
  for line in hlo.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      computation, result = header.groups()
      continue
    match = _OP.match(line)
    if not match:
      continue
    shape, op, start = match.groups()
    if op == "all-reduce" and "reduce-scatter" in computation:
      op, shape = "reduce-scatter", result
    sizes = _array_bytes(shape)
    size = max(sizes, default=0) if start and op != "all-reduce" else sum(sizes)
    entry = out[op]
    entry["count"] += 1
    entry["bytes"] += size
    entry["largest"] = max(entry["largest"], size)
  return out


def shard_bytes(tree) -> int:
  """The logical bytes one device holds of a tree of ShapeDtypeStructs with shardings (its
  shard of each leaf; XLA's own figures add the chip's layout padding)."""
  return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
             for leaf in jax.tree.leaves(tree))


def memory(compiled) -> dict[str, int]:
  """Per-device bytes of a compiled program: its arguments, outputs (less those aliased to
  donated arguments), temporaries and code, and their total."""
  m = compiled.memory_analysis()
  figures = {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
             "alias_bytes": m.alias_size_in_bytes, "temp_bytes": m.temp_size_in_bytes,
             "code_bytes": m.generated_code_size_in_bytes}
  figures["total_bytes"] = (figures["argument_bytes"] + figures["output_bytes"]
                            - figures["alias_bytes"] + figures["temp_bytes"]
                            + figures["code_bytes"])
  return figures


def cost(compiled, *, scale: float, examples: int, devices: int,
         peak_tflops: float | None) -> dict:
  """XLA's FLOPs (per device, per call: its count times `scale`), per example (all
  devices' FLOPs over the call's `examples`), its cost-model time for a call, the examples/s
  that implies and the FLOP utilisation against `peak_tflops` per device (None where unknown
  or where the cost model gives no positive time)."""
  analysis = compiled.cost_analysis() or {}
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
    analysis = analysis[0] if analysis else {}
  flops = float(analysis.get("flops", 0.0)) * scale
  raw = float(analysis.get("optimal_seconds", -1.0))
  seconds = raw * scale if raw > 0 else None  # none for, e.g., collectives across slices
  return {"flops_per_device": flops, "flops_per_example": flops * devices / examples,
          "xla_optimal_seconds": raw,
          "bytes_accessed_per_device": float(analysis.get("bytes accessed", 0.0)) * scale,
          "estimated_seconds": seconds,
          "estimated_examples_per_s": examples / seconds if seconds else None,
          "estimated_mfu": flops / seconds / (peak_tflops * 1e12)
          if seconds and peak_tflops else None}


def out_of_memory(error: BaseException) -> tuple[int, int] | None:
  """(bytes needed, bytes available) of the TPU compiler's refusal of a program that exceeds
  HBM (RESOURCE_EXHAUSTED ... (36.00G) exceeds available HBM (15.75G)), else None."""
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "exceeds available HBM" not in text:
    return None
  match = _OOM.search(text)
  if not match:
    return (0, 0)
  need, need_unit, have, have_unit = match.groups()
  return int(float(need) * _UNIT[need_unit]), int(float(have) * _UNIT[have_unit])
