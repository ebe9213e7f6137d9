"""Speed of the network: forward and training step, images/s and XLA's FLOP count.

Not a test: run it on the machine to be measured, e.g.
  ddpm bench-unet --config experiments/configs/cifar10.py --batch 8
and record the figures with the command in docs/benchmarks.md.
"""

import time
from typing import Any

import jax
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
