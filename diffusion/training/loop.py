"""`train(config, workdir)`: the training run of `ddpm train`, resumable from its workdir.

Resume order: the newest complete checkpoint in `workdir/checkpoints/`, else
a fresh start from config.seed. A SIGTERM (preemption) saves a checkpoint at
the current step and returns; running the same command again continues
exactly, data position included.
"""

import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from diffusion import images, models
from diffusion._checks import LEARNED_VARIANCES
from diffusion.data import Loader, make_source
from diffusion.distributed import gather, make_mesh
from diffusion.images import to_float, to_uint8
from diffusion.sampling import make_sampler
from diffusion.config import data_shape, schedule_from_config, validate as validate_config
from diffusion.training.checkpoint import Checkpoints
from diffusion.training.metrics import MetricWriter, Progress
from diffusion.training.state import abstract_state, base_key, create_state
from diffusion.training.step import make_train_step, shard_batch

log = logging.getLogger(__name__)


def validate(config, model, source) -> None:
  """Errors a run would meet late, raised before anything compiles: the config's own
  (`config.validate`), then how it fits the network, the data and the devices."""
  validate_config(config)
  _check_fit(config, model, source)


def _check_fit(config, model, source) -> None:
  train, data = config.train, config.data
  devices = jax.device_count()
  if train.batch_size % devices:
    raise ValueError(f"config.train.batch_size {train.batch_size} must be divisible by the "
                     f"{devices} devices of the mesh")
  factor = 2 ** (len(model.ch_mult) - 1)
  if data.image_size % factor:
    raise ValueError(f"config.data.image_size {data.image_size} must be divisible by {factor} "
                     f"for the model's ch_mult {tuple(model.ch_mult)}")
  if model.num_classes and model.num_classes != source.num_classes:
    raise ValueError(f"config.model.num_classes is {model.num_classes} but the data has "
                     f"{source.num_classes} classes")
  if model.learned_variance != (config.diffusion.variance in LEARNED_VARIANCES):
    raise ValueError(f"config.model.learned_variance={model.learned_variance} does not fit "
                     f"config.diffusion.variance={config.diffusion.variance!r}")
  conditioned = bool(data.get("condition", ""))
  if conditioned != bool(model.cond_channels) or (conditioned and model.cond_channels != data.channels):
    raise ValueError(f"config.model.cond_channels ({model.cond_channels}) must equal "
                     f"config.data.channels ({data.channels}) when config.data.condition is set, "
                     f"and be 0 otherwise; condition is {data.get('condition', '')!r}")


class _Preemption:
  """Turns SIGTERM into a flag that every process agrees on at a step."""

  def __init__(self):
    self.flag = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.flag = True

  def reached(self, sync: bool) -> bool:
    if jax.process_count() == 1:
      return self.flag
    if not sync:
      return False
    return bool(multihost_utils.process_allgather(np.int32(self.flag)).max())

  def close(self):
    signal.signal(signal.SIGTERM, self._previous)


def _sample_grid(sampler, params, config, source, path, key):
  """EMA samples as a PNG grid; for an image-conditioned model, conditions and samples in turn."""
  num = config.train.num_samples
  num -= num % jax.device_count()
  if num <= 0:
    return
  labels = np.arange(num) % max(config.model.get("num_classes", 0), 1)
  cond = None
  if config.model.get("cond_channels", 0):
    cond = np.stack([source[i % len(source)][2] for i in range(num)])
  x = to_uint8(gather(sampler(params, key, 0, labels, None if cond is None else to_float(cond))))
  if cond is not None:
    x = np.stack([cond, x], axis=1).reshape(-1, *x.shape[1:])
  if jax.process_index() == 0:
    images.save_grid(path, x)


def _start(checkpoints, model, config, mesh, sample):
  """(state, data position): the newest checkpoint's, else a fresh state at position 0."""
  latest = checkpoints.latest_step()
  if latest is None:
    return create_state(model, config, mesh, sample), 0
  log.info("resuming from step %d of %s", latest, checkpoints.directory)
  return checkpoints.restore(latest, abstract_state(model, config, mesh, sample))


def _dispatches(loader, position, mesh, k):
  """Sharded global batches, k stacked per dispatch when k > 1."""
  batches = loader.batches(position)
  while True:
    if k == 1:
      yield shard_batch(next(batches), mesh)
    else:
      parts = [next(batches) for _ in range(k)]
      yield shard_batch({n: np.stack([p[n] for p in parts]) for n in parts[0]}, mesh,
                        stacked=True)


def _summary(pending: list) -> dict[str, float]:
  """Means of the metrics since the last report; `skipped` is a count."""
  host = jax.device_get(pending)
  summary = {name: float(np.mean([m[name] for m in host])) for name in host[0]}
  summary["skipped"] = float(sum(m["skipped"] for m in host))
  return summary


def train(config: ml_collections.ConfigDict, workdir: str) -> int:
  """Trains to config.train.num_steps (or until SIGTERM); returns the step reached."""
  validate_config(config)
  source = make_source(config.data)
  model = models.from_config(config.model)
  _check_fit(config, model, source)
  schedule = schedule_from_config(config)
  mesh = make_mesh()
  cfg, k = config.train, config.train.get("steps_per_dispatch", 1)
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  shape = data_shape(config)
  sample = {"x": jnp.zeros((1, *shape))}
  if model.num_classes:
    sample["y"] = jnp.zeros((1,), jnp.int32)
  if model.cond_channels:
    sample["cond"] = jnp.zeros((1, *shape[:-1], model.cond_channels))

  checkpoints = Checkpoints(workdir, every=cfg.checkpoint_every,
                            keep=cfg.get("keep_checkpoints", None))
  state, position = _start(checkpoints, model, config, mesh, sample)
  step = saved = int(state.step)
  step_fn = make_train_step(model, schedule, config, mesh)
  sampler = make_sampler(model, config, shape, mesh)
  sample_key, train_key = base_key(config.seed, "sample"), base_key(config.seed, "train")
  grid = lambda: _sample_grid(sampler, state.ema_params, config, source,
                              os.path.join(workdir, "samples", f"step_{step:08d}.png"), sample_key)
  loader = Loader(source, cfg.batch_size, config.seed,
                  random_flip=config.data.get("random_flip", False),
                  process_index=jax.process_index(), process_count=jax.process_count())
  batches = _dispatches(loader, position, mesh, k)
  main = jax.process_index() == 0
  writer = MetricWriter(workdir, enabled=main)
  progress = Progress(step, cfg.num_steps, cfg.batch_size, enabled=main)
  preemption = _Preemption()
  pending = []
  try:
    while step < cfg.num_steps:
      state, metrics = step_fn(state, next(batches), train_key)
      step, position = step + k, position + k * cfg.batch_size
      pending.append(metrics)
      at_log = step % cfg.log_every < k or step >= cfg.num_steps
      if at_log:
        summary, pending = _summary(pending), []
        summary["images_per_s"] = progress.update(step, summary)
        writer.write(step, summary)
        if summary["skipped"]:
          log.warning("step %d: skipped %d steps with a non-finite loss or gradient",
                      step, int(summary["skipped"]))
      if preemption.reached(sync=at_log):
        if saved != step:
          checkpoints.save(step, state, position, config, force=True)
        log.warning("preempted: saved step %d; run the same command to resume", step)
        break
      if checkpoints.save(step, state, position, config):
        saved = step
      checkpoints.check()
      if step % cfg.sample_every < k and step < cfg.num_steps:
        grid()
    else:
      if saved != step:
        checkpoints.save(step, state, position, config, force=True)
      grid()
  finally:
    preemption.close()
    progress.close()
    writer.close()
    loader.close()
    checkpoints.close()
  return step
