"""The PyTorch reference the benchmarks set beside ours: diffusers' `UNet2DModel` with our
U-Net's configuration, its training step and samplers, and its layers one by one.

PyTorch and diffusers are imported only when a function runs: the library does not need them.
"""

import time
from typing import Any

import jax
import jax.numpy as jnp

from diffusion.models import UNet


def bench_torch(model: UNet, config, batch: int, *, train_steps: int = 3,
                samplers: dict[str, int] | None = None, sample_batch: int | None = None,
                compile: bool = False) -> dict[str, Any]:
  """The same network as diffusers' `UNet2DModel` in PyTorch, the reference implementation
  people would use instead: a training step (DDPMScheduler.add_noise, MSE on ε, backward,
  AdamW, EMA) and each sampler's chain (DDPMScheduler / DDIMScheduler /
  DPMSolverMultistepScheduler), on the CPU or on one CUDA device, under bfloat16 autocast
  when the model computes in bfloat16. PyTorch keeps float32 matmuls in full precision
  (TF32 off), where XLA's default precision on NVIDIA GPUs uses TF32. `train_steps` = 0 skips
  the training step; `compile` runs the network through `torch.compile` (the first training
  step, compilation included, is timed apart as "first_s")."""
  import torch
  from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                         UNet2DModel)
  from diffusion.convert import diffusers_config
  device = "cuda" if torch.cuda.is_available() else "cpu"
  size, channels = config.data.image_size, config.data.channels
  net = UNet2DModel(**diffusers_config(model, size, channels)).to(device)
  module = torch.compile(net) if compile else net
  autocast = torch.autocast(device, dtype=torch.bfloat16,
                            enabled=jnp.dtype(model.dtype) == jnp.bfloat16)
  kwargs = {}
  if model.num_classes:
    kwargs["class_labels"] = torch.zeros(max(batch, sample_batch or 0), dtype=torch.long,
                                         device=device)
  cond = (torch.zeros(max(batch, sample_batch or 0), model.cond_channels, size, size,
                      device=device) if model.cond_channels else None)

  def eps(x, t):
    """ε of the network: the first C output channels (the rest are a learned variance)."""
    n = x.shape[0]
    inputs = x if cond is None else torch.cat([x, cond[:n]], dim=1)
    extra = {k: v[:n] for k, v in kwargs.items()}
    with autocast:
      return module(inputs, t, **extra).sample[:, :channels].float()
  d = config.diffusion
  scheduler_kwargs = dict(num_train_timesteps=d.num_steps, beta_start=d.beta_start,
                          beta_end=d.beta_end, beta_schedule="linear")
  ddpm = DDPMScheduler(**scheduler_kwargs)
  optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
  params = [p for p in net.parameters()]
  ema = [p.detach().clone() for p in params]
  x0 = torch.rand(batch, channels, size, size, device=device) * 2 - 1

  def train_step():
    """L_simple, backward, Adam and an EMA of the parameters: what our step does."""
    t = torch.randint(0, d.num_steps, (batch,), device=device)
    noise = torch.randn_like(x0)
    loss = torch.nn.functional.mse_loss(eps(ddpm.add_noise(x0, noise, t), t), noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, params, 1 - 0.9999)

  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "compiled": compile, "samplers": {}}
  if train_steps:
    net.train()
    start = time.perf_counter()
    train_step()
    sync()
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(train_steps):
      train_step()
    sync()
    step_s = (time.perf_counter() - start) / train_steps
    result["train_step"] = {"step_s": step_s, "images_per_s": batch / step_s, "first_s": first_s}
    if torch.cuda.is_available():
      result["train_step"]["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
  net.eval()
  makers = {"ddpm": lambda: DDPMScheduler(**scheduler_kwargs),
            "ddim": lambda: DDIMScheduler(**scheduler_kwargs),
            "dpm++": lambda: DPMSolverMultistepScheduler(**scheduler_kwargs,
                                                         algorithm_type="dpmsolver++",
                                                         solver_order=2)}
  batch = sample_batch or batch
  for name, count in (samplers or {}).items():
    scheduler = makers[name]()
    scheduler.set_timesteps(count)
    with torch.no_grad():
      x = torch.randn(batch, channels, size, size, device=device)
      eps(x, scheduler.timesteps[:1].expand(batch).to(device))  # warm-up
      sync()
      start = time.perf_counter()
      for t in scheduler.timesteps:
        x = scheduler.step(eps(x, t.expand(batch).to(device)), t, x).prev_sample
      sync()
    chain_s = time.perf_counter() - start
    result["samplers"][name] = {"steps": count, "chain_s": chain_s,
                                "samples_per_s": batch / chain_s,
                                "ms_per_network_call": 1e3 * chain_s / count}
  return result


def bench_layers(model: UNet, config, batch: int, *, repeats: int = 20) -> list[dict[str, Any]]:
  """Where the time goes, layer kind by layer kind: a 3×3 convolution, GroupNorm and swish at
  the shape of each resolution level of `model` ([batch, size / 2^i, size / 2^i, ch · mult_i]),
  forward only, in JAX and in PyTorch (CPU or one CUDA device). Returns one row per
  (level, layer) with milliseconds per call on each side."""
  import flax.linen as nn
  import torch
  from diffusion.models.unet import GroupNorm
  device = "cuda" if torch.cuda.is_available() else "cpu"
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def time_jax(fn, *args):
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
      out = fn(*args)
    jax.block_until_ready(out)
    return 1e3 * (time.perf_counter() - start) / repeats

  def time_torch(fn, x):
    with torch.no_grad():
      fn(x)
      sync()
      start = time.perf_counter()
      for _ in range(repeats):
        fn(x)
      sync()
    return 1e3 * (time.perf_counter() - start) / repeats

  rows = []
  size = config.data.image_size
  for level, mult in enumerate(model.ch_mult):
    side, channels = size // 2**level, model.ch * mult
    x = jnp.ones((batch, side, side, channels), model.dtype)
    xt = torch.ones(batch, channels, side, side, device=device)
    conv = nn.Conv(channels, (3, 3), padding=1, dtype=model.dtype)
    norm = GroupNorm(model.num_groups, dtype=model.dtype)  # the network's own
    cp, gp = conv.init(jax.random.key(0), x), norm.init(jax.random.key(0), x)
    layers = {
        "conv 3x3": (lambda p, x: conv.apply(p, x), cp,
                     torch.nn.Conv2d(channels, channels, 3, padding=1).to(device)),
        "GroupNorm": (lambda p, x: norm.apply(p, x), gp,
                      torch.nn.GroupNorm(model.num_groups, channels).to(device)),
        "swish": (lambda p, x: jax.nn.swish(x), cp, torch.nn.functional.silu)}
    for name, (fn, params, reference) in layers.items():
      ours, theirs = time_jax(fn, params, x), time_torch(reference, xt)
      rows.append({"shape": [batch, side, side, channels], "layer": name, "jax_ms": ours,
                   "torch_ms": theirs, "ratio": theirs / ours})
  return rows
