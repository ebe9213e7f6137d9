"""Speed: the network's forward and training step (images/s, XLA's FLOP count) and the samplers
(samples/s); `bench` sets them beside the PyTorch reference (`torch_reference.py`).

Not a test: run it on the machine to be measured, e.g.
  ddpm bench-unet --config experiments/configs/cifar10.py --batch 8
and record the figures with the command in docs/benchmarks.md.
"""

import time
from typing import Any

import jax
import numpy as np
import jax.numpy as jnp

from diffusion.losses import loss_simple
from diffusion.platforms import peak_tflops
from diffusion.models import Denoiser
from diffusion.schedules import make_schedule
from diffusion.benchmarks.torch_reference import bench_layers, bench_torch


def _timed(fn, args, steps):
  """Compiles fn, then times `steps` calls after one warm-up; returns (compiled, compile s, s/step)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))
  start = time.perf_counter()
  for _ in range(steps):
    out = compiled(*args)
  jax.block_until_ready(out)
  return compiled, compile_s, (time.perf_counter() - start) / steps


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def bench_network(model: Denoiser, batch: int, shape: tuple[int, ...], *, steps: int = 5,
                  seed: int = 0) -> dict[str, Any]:
  """Forward pass and L_simple training gradient of the Denoiser `model` on [batch, *shape]
  inputs (any network of the registry; unconditional inputs).

  Returns a dict with, for "forward" and "train_step": seconds per step,
  images/s, compile seconds, XLA's FLOPs per image, and achieved TFLOP/s.
  """
  key = jax.random.key(seed)
  x = jax.random.uniform(key, (batch, *shape), minval=-1, maxval=1)
  t = jnp.arange(batch) % 1000
  y = jnp.zeros((batch,), jnp.int32) if model.num_classes else None
  cond = jnp.zeros((batch, *shape[:-1], model.cond_channels)) if model.cond_channels else None
  variables = jax.jit(model.init)(key, x, t, y, cond)
  params = variables.pop("params")
  schedule = make_schedule("linear", 1000)

  def forward(params, x):
    return model({"params": params, **variables}, x, t, y, cond)

  def train_step(params, x):
    def loss(params):
      denoise = lambda x_t, t_: model.train_apply({"params": params, **variables}, x_t, t_, y,
                                                  cond, key)[0]
      return loss_simple(denoise, schedule, x, key)
    return jax.value_and_grad(loss)(params)

  result = {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
            "dtype": model.dtype, "batch": batch, "shape": list(shape),
            "params": sum(p.size for p in jax.tree.leaves(params))}
  for name, fn in (("forward", forward), ("train_step", train_step)):
    compiled, compile_s, step_s = _timed(fn, (params, x), steps)
    flops = _flops(compiled)
    result[name] = {"step_s": step_s, "images_per_s": batch / step_s, "compile_s": compile_s,
                    "gflops_per_image": flops / batch / 1e9, "tflops_per_s": flops / step_s / 1e12}
  return result


def format_table(result: dict[str, Any]) -> str:
  lines = [f"{result['platform']} {result['device']}, {result['dtype']}, batch {result['batch']} "
           f"of {tuple(result['shape'])}, {result['params']:,} parameters",
           f"{'':<11} {'images/s':>10} {'s/step':>9} {'GFLOP/img':>10} {'TFLOP/s':>8} {'compile s':>10}"]
  for name in ("forward", "train_step"):
    r = result[name]
    lines.append(f"{name:<11} {r['images_per_s']:>10.2f} {r['step_s']:>9.4f} "
                 f"{r['gflops_per_image']:>10.3f} {r['tflops_per_s']:>8.3f} {r['compile_s']:>10.1f}")
  return "\n".join(lines)


def bench_sampling(model: Denoiser, config, batch: int, *, samplers=("ddpm", "ddim", "dpm++"),
                   steps: int | None = None, repeats: int = 1, seed: int = 0) -> dict[str, Any]:
  """Samples/s of each sampler at its default number of steps (or `steps`), on every device.

  The network's parameters are a random initialisation: the time does not
  depend on their values. For each sampler: the number of network calls, the
  seconds of the first call (compilation and one chain), and, timed over
  `repeats` more chains, seconds per chain, samples/s and milliseconds per
  network call of the batch.
  """
  from diffusion.distributed import make_mesh, replicate
  from diffusion.runs import build
  from diffusion.sampling import make_sampler
  from diffusion import samplers as samplers_lib
  mesh = make_mesh()
  run = build(config, model, check=False)
  shape = run.diffusion.spec.shape
  if batch % mesh.size:
    raise ValueError(f"`batch` must be a multiple of the {mesh.size} devices; got {batch}")
  key = jax.random.key(seed)
  x, t = jnp.zeros((1, *shape)), jnp.zeros((1,), jnp.int32)
  y = jnp.zeros((1,), jnp.int32) if model.num_classes else None
  c = jnp.zeros((1, *shape[:-1], model.cond_channels)) if model.cond_channels else None
  variables = replicate(jax.jit(model.init)(key, x, t, y, c), mesh)
  cond = np.zeros((batch, *shape[:-1], model.cond_channels), np.float32) if model.cond_channels \
      else None
  result = {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
            "devices": mesh.size, "dtype": model.dtype, "batch": batch,
            "shape": list(shape), "num_steps": config.diffusion.num_steps, "samplers": {}}
  labels = np.zeros(batch, np.int32)
  for name in samplers:
    count = steps or samplers_lib.get(name).default_steps or config.diffusion.num_steps
    sample = make_sampler(run, mesh, sampler=name, steps=count)
    start = time.perf_counter()
    jax.block_until_ready(sample(variables, key, 0, labels, cond))
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(repeats):
      out = sample(variables, key, batch * (i + 1), labels, cond)
    jax.block_until_ready(out)
    chain_s = (time.perf_counter() - start) / repeats
    result["samplers"][name] = {"steps": count, "first_call_s": first_s, "chain_s": chain_s,
                                "samples_per_s": batch / chain_s,
                                "ms_per_network_call": 1e3 * chain_s / count}
  return result


def format_sampling_table(result: dict[str, Any]) -> str:
  lines = [f"{result['platform']} {result['device']} × {result['devices']}, {result['dtype']}, "
           f"batch {result['batch']} of {tuple(result['shape'])}, T = {result['num_steps']}",
           f"{'sampler':<8} {'steps':>6} {'samples/s':>10} {'s/chain':>9} {'ms/call':>8} "
           f"{'first call s':>13}"]
  for name, r in result["samplers"].items():
    lines.append(f"{name:<8} {r['steps']:>6} {r['samples_per_s']:>10.2f} {r['chain_s']:>9.2f} "
                 f"{r['ms_per_network_call']:>8.2f} {r['first_call_s']:>13.1f}")
  return "\n".join(lines)


# Dense peak TFLOP/s of one JAX device (vendor figures): bfloat16, and the float32 matmul rate
# XLA's default precision gets (TF32 on NVIDIA GPUs; bfloat16 passes on TPUs). More specific names
# first. A TPU v3 device is one core (half a chip); v4 and later devices are whole chips.
def _peak_memory(compiled) -> dict[str, float]:
  """Peak device memory in GiB: the allocator's figure where the device reports one (GPU, TPU),
  and XLA's estimate for the compiled program (arguments + outputs + temporaries) everywhere."""
  out = {}
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["peak_gib"] = stats["peak_bytes_in_use"] / 2**30
  try:
    m = compiled.memory_analysis()
    out["xla_estimate_gib"] = (m.argument_size_in_bytes + m.output_size_in_bytes
                               + m.temp_size_in_bytes - m.alias_size_in_bytes) / 2**30
  except Exception:  # not every backend implements it
    pass
  return out


def bench_training(model: Denoiser, config, batch: int, *, steps: int = 5,
                   hlo: bool = False) -> dict[str, Any]:
  """The real training step (`training.step.make_train_step`: loss, gradient all-reduce, Adam,
  EMA) on a global batch of `batch` random examples of the config's data over every device.
  `hlo`: also return the optimised program's text (under "hlo")."""
  from diffusion.distributed import make_mesh
  from diffusion.runs import base_key, build
  from diffusion.training.state import create_state, init_inputs
  from diffusion.training.step import make_train_step, shard_batch
  mesh = make_mesh()
  if batch % mesh.size:
    raise ValueError(f"`batch` must be a multiple of the {mesh.size} devices; got {batch}")
  spec = build(config, model, check=False).diffusion.spec
  shape, cond_shape = spec.shape, spec.shape[:-1] + (model.cond_channels,)
  rng = np.random.default_rng(0)
  draw = lambda s: (rng.integers(0, 256, (batch, *s), dtype=np.uint8) if spec.dtype == "uint8"
                    else rng.standard_normal((batch, *s)).astype(np.float32))
  data = {"x": draw(shape), "label": np.zeros(batch, np.int32)}
  if model.cond_channels:
    data["cond"] = draw(cond_shape)
  sample = init_inputs(model, shape)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.train.steps_per_dispatch = 1
  run = build(config, model, check=False)
  state = create_state(run, mesh, sample)
  step = make_train_step(run, mesh)
  key = base_key(0, "train")
  sharded = shard_batch(data, mesh)
  start = time.perf_counter()
  lowered = step.lower(state, sharded, key)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state, sharded, key)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, sharded, key)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - start) / steps
  # The cost analysis of the lowered program counts the whole global batch (the partitioner
  # has not split it yet) and, taken before compilation, also the matmuls and convolutions
  # that a GPU compile turns into library calls.
  flops = _flops(lowered)
  if not np.isfinite(flops):  # some GPU builds give no count: count the CPU lowering instead
    flops = _cpu_step_flops(run, data, sample)
  result = {"step_s": step_s, "images_per_s": batch / step_s, "compile_s": compile_s,
            "gflops_per_image": flops / batch / 1e9, "tflops_per_s": flops / step_s / 1e12,
            **_peak_memory(compiled)}
  if hlo:
    result["hlo"] = compiled.as_text()
  return result


def _cpu_step_flops(run, data, sample) -> float:
  """XLA's FLOP count of the same training step lowered for one CPU device (shapes only: nothing
  is allocated or compiled), for backends whose cost analysis is missing."""
  from jax.sharding import NamedSharding
  from diffusion.distributed import BATCH, make_mesh
  from diffusion.runs import base_key
  from diffusion.training.state import abstract_state
  from diffusion.training.step import make_train_step
  mesh = make_mesh(jax.devices("cpu")[:1])
  state = abstract_state(run, mesh, sample)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=NamedSharding(mesh, BATCH))
           for k, v in data.items()}
  step = make_train_step(run, mesh)
  return _flops(step.lower(state, batch, base_key(0, "train")))


def bench(model: Denoiser, config, batch: int, *, samplers=("ddpm", "ddim", "dpm++"),
          sample_steps: int | None = None, sample_batch: int | None = None, train_steps: int = 5,
          torch_reference: bool = True, peak: float | None = None,
          layers: bool = False) -> dict[str, Any]:
  """`ddpm bench`: training and sampling speed, compile time, memory and model FLOP utilisation
  of a config's network (a Denoiser), with the PyTorch reference side by side when
  `torch_reference` (the U-Net only: diffusers' UNet2DModel is its twin)."""
  from diffusion.config import data_shape
  device = jax.devices()[0]
  result = {"platform": device.platform, "device": device.device_kind,
            "devices": jax.device_count(), "dtype": model.dtype, "batch": batch,
            "shape": list(data_shape(config)),
            "remat": bool(getattr(model.module, "remat", False))}
  result["train"] = bench_training(model, config, batch, steps=train_steps)
  peak = peak or peak_tflops(device.device_kind, result["dtype"])
  result["peak_tflops_per_device"] = peak
  result["train"]["mfu"] = (result["train"]["tflops_per_s"] / (peak * jax.device_count())
                            if peak else None)
  sampling = bench_sampling(model, config, sample_batch or batch, samplers=samplers,
                            steps=sample_steps)
  result["sampling"] = sampling["samplers"]
  result["sample_batch"] = sampling["batch"]
  if torch_reference:
    counts = {name: r["steps"] for name, r in result["sampling"].items()}
    reference = bench_torch(model.module, config, batch, samplers=counts,
                            sample_batch=sampling["batch"])
    result["torch"] = reference
    if layers:
      result["layers"] = bench_layers(model.module, config, sampling["batch"])
    result["ratio"] = {"train": result["train"]["images_per_s"]
                       / reference["train_step"]["images_per_s"],
                       **{name: result["sampling"][name]["samples_per_s"]
                          / reference["samplers"][name]["samples_per_s"]
                          for name in result["sampling"]}}
  return result


def format_bench(result: dict[str, Any]) -> str:
  torch_ = result.get("torch")
  head = (f"{result['platform']} {result['device']} × {result['devices']}, {result['dtype']}, "
          f"{'remat, ' if result.get('remat') else ''}batch {result['batch']} of "
          f"{tuple(result['shape'])}")
  if torch_:
    head += f"; PyTorch {torch_['torch']} on {torch_['device']} ({torch_['threads']} threads)"
  lines = [head, f"{'':<24} {'ours':>10} {'PyTorch':>10} {'ratio':>7}"]
  t = result["train"]
  theirs = torch_["train_step"]["images_per_s"] if torch_ else None
  fmt = lambda v: f"{v:>10.2f}" if v is not None else f"{'-':>10}"
  ratio = lambda k: f"{result['ratio'][k]:>7.2f}" if torch_ else ""
  lines.append(f"{'train images/s':<24} {fmt(t['images_per_s'])} {fmt(theirs)} {ratio('train')}")
  lines.append(f"{'  compile s':<24} {fmt(t['compile_s'])}")
  lines.append(f"{'  GFLOP/image (XLA)':<24} {fmt(t['gflops_per_image'])}")
  lines.append(f"{'  TFLOP/s':<24} {t['tflops_per_s']:>10.3f}")
  mfu = f"{100 * t['mfu']:>9.1f}%" if t.get("mfu") is not None else \
      f"{'n/a':>10}  (peak unknown: `peak_tflops`)"
  lines.append(f"{'  model FLOP utilisation':<24} {mfu}")
  for key, label in (("peak_gib", "  peak memory GiB"), ("xla_estimate_gib", "  XLA memory GiB")):
    if key in t:
      lines.append(f"{label:<24} {t[key]:>10.3f}")
  for name, r in result["sampling"].items():
    theirs = torch_["samplers"][name]["samples_per_s"] if torch_ else None
    label = f"sample {name} ({r['steps']} steps)/s"
    lines.append(f"{label:<24} {fmt(r['samples_per_s'])} {fmt(theirs)} {ratio(name)}")
  lines.append(f"(sampling batch {result['sample_batch']}; ratio > 1: ours is faster)")
  if torch_:
    slower = [k for k, v in result["ratio"].items() if v < 1]
    if slower:
      lines.append(f"BELOW TARGET: PyTorch is faster for {', '.join(slower)}; ``layers`` times "
                   "the network's layer kinds on both sides to show where")
  if result.get("layers"):
    lines.append(format_layers(result["layers"]))
  return "\n".join(lines)


def format_layers(rows: list[dict[str, Any]]) -> str:
  lines = [f"{'layer':<10} {'shape':<20} {'JAX ms':>8} {'PyTorch ms':>11} {'ratio':>6}"]
  for r in rows:
    lines.append(f"{r['layer']:<10} {str(tuple(r['shape'])):<20} {r['jax_ms']:>8.2f} "
                 f"{r['torch_ms']:>11.2f} {r['ratio']:>6.2f}")
  return "\n".join(lines)
