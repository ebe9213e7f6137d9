"""Speed: the network's forward and training step (images/s, XLA's FLOP count) and the samplers (samples/s).

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
from diffusion.models import UNet
from diffusion.schedules import make_schedule


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


def bench_unet(model: UNet, batch: int, shape: tuple[int, ...], *, steps: int = 5,
               seed: int = 0) -> dict[str, Any]:
  """Forward pass and L_simple training gradient of `model` on [batch, *shape] inputs.

  Returns a dict with, for "forward" and "train_step": seconds per step,
  images/s, compile seconds, XLA's FLOPs per image, and achieved TFLOP/s.
  """
  key = jax.random.key(seed)
  x = jax.random.uniform(key, (batch, *shape), minval=-1, maxval=1)
  t = jnp.arange(batch) % 1000
  params = jax.jit(model.init)(key, x, t)["params"]
  schedule = make_schedule("linear", 1000)

  def forward(params, x):
    return model.apply({"params": params}, x, t)

  def train_step(params, x):
    def loss(params):
      denoise = lambda x_t, t_: model.apply({"params": params}, x_t, t_, train=True,
                                            rngs={"dropout": key})
      return loss_simple(denoise, schedule, x, key)
    return jax.value_and_grad(loss)(params)

  result = {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
            "dtype": jnp.dtype(model.dtype).name, "batch": batch, "shape": list(shape),
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


def bench_sampling(model: UNet, config, batch: int, *, samplers=("ddpm", "ddim", "dpm++"),
                   steps: int | None = None, repeats: int = 1, seed: int = 0) -> dict[str, Any]:
  """Samples/s of each sampler at its default number of steps (or `steps`), on every device.

  The network's parameters are a random initialisation: the time does not
  depend on their values. For each sampler: the number of network calls, the
  seconds of the first call (compilation and one chain), and, timed over
  `repeats` more chains, seconds per chain, samples/s and milliseconds per
  network call of the batch.
  """
  from diffusion.sample_run import image_shape, replicate
  from diffusion.sampling import make_sampler
  from diffusion.training.loop import make_mesh
  from diffusion import samplers as samplers_lib
  mesh = make_mesh()
  shape = image_shape(config)
  if batch % mesh.size:
    raise ValueError(f"--batch must be a multiple of the {mesh.size} devices; got {batch}")
  key = jax.random.key(seed)
  x, t = jnp.zeros((1, *shape)), jnp.zeros((1,), jnp.int32)
  kwargs = {"y": jnp.zeros((1,), jnp.int32)} if model.num_classes else {}
  if model.cond_channels:
    kwargs["cond"] = jnp.zeros((1, *shape[:-1], model.cond_channels))
  params = replicate(jax.jit(model.init)(key, x, t, **kwargs)["params"], mesh)
  cond = np.zeros((batch, *shape[:-1], model.cond_channels), np.float32) if model.cond_channels \
      else None
  result = {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
            "devices": mesh.size, "dtype": jnp.dtype(model.dtype).name, "batch": batch,
            "shape": list(shape), "num_steps": config.diffusion.num_steps, "samplers": {}}
  labels = np.zeros(batch, np.int32)
  for name in samplers:
    count = steps or samplers_lib.DEFAULT_STEPS[name] or config.diffusion.num_steps
    sample = make_sampler(model, config, shape, mesh, sampler=name, steps=count)
    start = time.perf_counter()
    jax.block_until_ready(sample(params, key, 0, labels, cond))
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(repeats):
      out = sample(params, key, batch * (i + 1), labels, cond)
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
