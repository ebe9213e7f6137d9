"""`ddpm sample`: samples of a trained run written as .npz (arr_0: uint8 NHWC) and a PNG grid."""

import os

import jax
import numpy as np
import tqdm

from diffusion import images, models
from diffusion.sampling import gather, make_sampler
from diffusion.training.checkpoint import Checkpoints
from diffusion.training.loop import make_mesh, schedule_from_config
from diffusion.training.state import base_key


def load_run(workdir: str, step: int | None = None):
  """(config, model, EMA params, step) of a run's checkpoint (default: the newest)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise FileNotFoundError(f"--workdir {workdir!r} holds no checkpoints/: not a training run")
  checkpoints = Checkpoints(workdir, read_only=True)
  try:
    steps = checkpoints.manager.all_steps()
    if not steps:
      raise FileNotFoundError(f"--workdir {workdir!r} holds no complete checkpoint")
    step = max(steps) if step is None else step
    if step not in steps:
      raise ValueError(f"--step {step}: the run has checkpoints at steps {sorted(steps)}")
    config = checkpoints.restore_config(step)
    params = checkpoints.restore_params(step)
  finally:
    checkpoints.manager.close()
  return config, models.from_config(config.model), params, step


def sample_to_files(workdir: str, num: int, out: str, *, seed: int = 0, batch: int = 256,
                    step: int | None = None) -> np.ndarray:
  """Draws `num` samples with ancestral sampling; writes `out` (.npz) and `out` with .png."""
  if num < 1 or batch < 1:
    raise ValueError(f"--num and --batch must be positive; got {num} and {batch}")
  config, model, params, step = load_run(workdir, step)
  mesh = make_mesh()
  devices = jax.device_count()
  batch = max(devices, batch - batch % devices)
  shape = (config.data.image_size,) * 2 + (config.data.channels,)
  sampler = make_sampler(model, schedule_from_config(config), config.diffusion, shape, mesh)
  params = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  key = base_key(seed, "sample")
  labels = np.arange(num) % max(model.num_classes, 1)
  chunks = []
  main = jax.process_index() == 0
  for first in tqdm.tqdm(range(0, num, batch), desc=f"sample (step {step})", unit="batch",
                         disable=not main):
    n = min(batch, num - first)
    padded = np.resize(labels[first:first + n], n + (-n) % devices)
    x = sampler(params, key, first, padded)
    chunks.append(gather(x)[:n])
  samples = np.concatenate(chunks)
  if main:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez(out, arr_0=samples, labels=labels)
    images.save_grid(os.path.splitext(out)[0] + ".png", samples[:64])
  return samples

