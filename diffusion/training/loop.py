"""`train(config, workdir)`: the training run of `ddpm train`, resumable from its workdir.

The workdir is a local path or an object-store URI (gs://bucket/run); one
run at a time holds it (`lock.py`). Resume order: the newest readable
checkpoint in `workdir/checkpoints/` (damaged newer ones are set aside with a
warning), once its config is found to compute the same run as the new one;
else a fresh start from config.seed. A SIGTERM (preemption) or a Ctrl-C saves a
checkpoint at the current step, agreed on by every process, and returns;
running the same command again continues exactly, data position included.
"""

import collections
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from diffusion import paths
from diffusion.config import power_ema_key, power_ema_sigmas
from diffusion.data import Loader, make_source
from diffusion.data.folders import check_indexes
from diffusion.data.loader import check_example, config_options
from diffusion.distributed import gather, mesh_from_config, mesh_sizes
from diffusion.models import variables_of
from diffusion.previews import save_preview
from diffusion.sampling import make_chain, make_sampler
from diffusion.training.lock import WorkdirLock
from diffusion.training.metrics import HostReport, MetricWriter, Progress
from diffusion.runs import Checkpoints, EmaSnapshots, base_key, build
from diffusion.training.state import abstract_state, create_state, init_inputs
from diffusion.training.step import make_train_step, shard_batch

log = logging.getLogger(__name__)


def _readable(source, indices, on_error: str) -> tuple[dict, int]:
  """(source[i], i) for the first i of `indices` that reads: with on_error="skip" the ones
  that do not are passed over and logged, as the loader does (which counts them when the
  stream reaches them); otherwise the first one's error is raised."""
  for i in indices:
    try:
      return source[i], i
    except Exception as e:  # noqa: BLE001 (the source's own error names the file)
      if on_error != "skip":
        raise
      log.warning("skipped an unreadable example (config.data.on_error='skip'): example %d: "
                  "%s: %s", i, type(e).__name__, e)
  raise ValueError(f"no example of the data source can be read (config.data.on_error='skip' "
                   f"passed over all {len(source)})")


def check_fit(run, source) -> None:
  """Errors a run would meet late, raised before anything compiles: how the config fits the
  network (a Denoiser), the data and the devices."""
  config, model, spec = run.config, run.model, run.diffusion.spec
  train = config.train
  devices = jax.device_count()
  mesh_sizes(config, devices)
  if train.batch_size % devices:
    raise ValueError(f"config.train.batch_size {train.batch_size} must be divisible by the "
                     f"{devices} devices of the mesh")
  model.check(spec.shape)
  if model.kinds is not None and spec.kind not in model.kinds:
    raise ValueError(f"config.model.name {model.name!r} takes {' or '.join(model.kinds)} data; "
                     f"config.data.kind is {spec.kind!r}")
  if config.data.get("random_rotation", False) and spec.kind != "points":
    raise ValueError(f"config.data.random_rotation rotates point sets; config.data.kind is "
                     f"{spec.kind!r}")
  if len(source) == 0:
    raise ValueError("the data source holds no examples")
  on_error, n = config.data.get("on_error", "raise"), len(source)
  first = check_example(*_readable(source, range(n), on_error), spec)
  check_example(*_readable(source, range(n - 1, -1, -1), on_error), spec)
  classes = getattr(source, "num_classes", 0)
  if model.num_classes and model.num_classes != classes:
    raise ValueError(f"config.model.num_classes is {model.num_classes} but the data has "
                     f"{classes} classes")
  if train.get("label_dropout", 0.0) > 0 and not model.num_classes:
    raise ValueError(f"config.train.label_dropout {train.label_dropout} drops class labels for "
                     "classifier-free guidance: it needs config.model.num_classes > 0")
  if model.learned_variance != run.diffusion.learned_variance:
    raise ValueError(f"config.model.learned_variance={model.learned_variance} does not fit "
                     f"config.diffusion.variance={config.diffusion.variance!r}")
  cond = first.get("cond")
  if model.cond_channels:
    want = spec.shape[:-1] + (model.cond_channels,)
    if cond is None or cond.shape != want:
      raise ValueError(f"config.model.cond_channels is {model.cond_channels}: every example needs "
                       f"a 'cond' of shape {want} (set config.data.condition); source[0] has "
                       f"{None if cond is None else cond.shape}")
  elif cond is not None:
    raise ValueError(f"the data gives a conditioning input ('cond' of shape {cond.shape}): set "
                     f"config.model.cond_channels to {cond.shape[-1]}")
  if not model.output_fits:
    _check_output(model, spec)


def _check_output(model, spec) -> None:
  """The network's output shape for one example, from its trace alone (nothing compiles)."""
  x, t = jnp.zeros((1, *spec.shape)), jnp.zeros((1,), jnp.int32)
  y = jnp.zeros((1,), jnp.int32) if model.num_classes else None
  cond = jnp.zeros((1, *spec.shape[:-1], model.cond_channels)) if model.cond_channels else None
  out = jax.eval_shape(lambda key: model(model.init(key, x, t, y, cond), x, t, y, cond),
                       jax.random.key(0))
  want = (1, *spec.shape[:-1], model.output_channels(spec.shape[-1]))
  if tuple(out.shape) != want:
    raise ValueError(f"the network {model.name or ''} gives output of shape {tuple(out.shape)[1:]} "
                     f"for data of shape {spec.shape}; the diffusion settings need "
                     f"{want[1:]}" + (" (2C channels: config.model.learned_variance)"
                                      if model.learned_variance else ""))


class _Preemption:
  """Whether a preemption notice (SIGTERM) or a Ctrl-C (SIGINT) has reached any process,
  agreed on by all of them.

  A Python handler turns SIGTERM into a flag on the process that gets it. With
  several processes, every dispatch also launches a reduction of all the flags
  over the mesh, and the host reads the previous dispatch's result: every
  process sees True at the same dispatch, the one after the reduction that
  carried the notice, without waiting for the step in flight.
  """

  def __init__(self, mesh):
    self.flag = False
    self.why = "preempted"
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    # Ctrl-C (SIGINT) stops the same way, saving; a second one stops at once, unsaved.
    self._previous_interrupt = signal.signal(signal.SIGINT, self._interrupt)
    self.coordinated = jax.process_count() > 1
    if self.coordinated:
      self._sharding = NamedSharding(mesh, P(tuple(mesh.axis_names)))
      self._local = len(mesh.local_devices)
      self._any = jax.jit(jnp.any, out_shardings=NamedSharding(mesh, P()))
      self._last = None

  def _handle(self, signum, frame):
    self.flag = True

  def _interrupt(self, signum, frame):
    if self.flag:
      raise KeyboardInterrupt
    self.flag, self.why = True, "interrupted"
    log.warning("interrupted: saving the step in flight and stopping (Ctrl-C again: stop now, "
                "unsaved)")

  def reached(self) -> bool:
    """Call once per dispatch, on every process."""
    if not self.coordinated:
      return self.flag
    flags = jax.make_array_from_process_local_data(self._sharding,
                                                   np.full(self._local, self.flag))
    last, self._last = self._last, self._any(flags)
    return last is not None and bool(last)

  def close(self):
    signal.signal(signal.SIGTERM, self._previous)
    signal.signal(signal.SIGINT, self._previous_interrupt)


def _sample_grid(sampler, variables, model, spec, config, source, path, key):
  """EMA samples as a preview (`previews.py`: a PNG grid for images); for a conditioned
  model, conditions and samples in turn."""
  num = config.train.num_samples
  num -= num % jax.device_count()
  if num <= 0:
    return
  labels = np.arange(num) % max(model.num_classes, 1)
  cond = None
  if model.cond_channels:
    cond = np.stack([np.asarray(source[i % len(source)]["cond"]) for i in range(num)])
  x = spec.from_model(gather(sampler(variables, key, 0, labels,
                                     None if cond is None else spec.to_model(cond))))
  if cond is not None and cond.shape == x.shape:
    x = np.stack([cond.astype(x.dtype), x], axis=1).reshape(-1, *x.shape[1:])
  if jax.process_index() == 0:
    save_preview(path, x, spec)


def _start(checkpoints, run, mesh, sample, variables=None):
  """(state, data position): the newest readable checkpoint's, after checking that the config
  fits it; else a fresh state at position 0 (from `variables`, if given)."""
  config = run.config
  abstract = abstract_state(run, mesh, sample)

  def read(step):
    checkpoints.check_resumable(step, config)
    return checkpoints.restore(step, abstract)

  found = checkpoints.newest(read)
  checkpoints.set_aside_damaged()
  if found is None:
    if variables is None and run.method.needs_teacher:
      raise ValueError(f"no checkpoint of {os.fspath(checkpoints.directory)} could be read, and "
                       "its teacher was not given: run `ddpm distill` with the teacher's `workdir`")
    return create_state(run, mesh, sample, variables), 0
  step, (state, position) = found
  log.info("resuming from step %d of %s", step, os.fspath(checkpoints.directory))
  if step >= config.train.num_steps:
    log.warning("the run is at step %d, at or past config.train.num_steps = %d: nothing to "
                "train (raise config.train.num_steps to continue)", step, config.train.num_steps)
  return state, position


def _dispatches(loader, position, mesh, k, depth: int = 2):
  """Sharded global batches, k stacked per dispatch when k > 1, `depth` dispatches ahead: the
  next batches' transfers to the devices start while the step runs."""
  batches = loader.batches(position)

  def put():
    if k == 1:
      return shard_batch(next(batches), mesh)
    parts = [next(batches) for _ in range(k)]
    return shard_batch({n: np.stack([p[n] for p in parts]) for n in parts[0]}, mesh,
                       stacked=True)

  ahead = collections.deque(put() for _ in range(depth))
  while True:
    yield ahead.popleft()
    ahead.append(put())


def _summary(pending: list) -> dict[str, float]:
  """Means of the metrics since the last report; `skipped` is a count."""
  host = jax.device_get(pending)
  summary = {name: float(np.mean([m[name] for m in host])) for name in host[0]}
  summary["skipped"] = float(sum(m["skipped"] for m in host))
  return summary


def _hold(lock: WorkdirLock) -> None:
  """Process 0 takes the workdir's lock; every process stops if it could not."""
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except ValueError as e:
      error = e
  if jax.process_count() > 1:
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if failed and error is None:
      error = ValueError(f"`workdir` {os.fspath(lock.workdir)!r} is in use by another run "
                         "(process 0 says which)")
  if error is not None:
    raise error


def train(config: ml_collections.ConfigDict, workdir: str, *, model=None, source=None,
          variables=None) -> int:
  """Trains to config.train.num_steps (or until SIGTERM); returns the step reached.

  `model` (a `diffusion.models.Denoiser`, a Flax Linen or NNX module) and
  `source` (`len(source)`, `source[i]` -> {"x", "label"?, "cond"?}) replace
  the network of config.model and the data of config.data. The saved config
  names the network by config.model.name, or by the Denoiser's own name: for
  `ddpm sample` and the applications to rebuild a network passed here, make
  that an import path "package.module:factory" (else load it in Python with
  `load_run(workdir, model=...)`). `variables` (e.g. a teacher's, for
  `ddpm distill`) start a fresh run instead of the network's initialisation.

  Raises ValueError for bad input (the config, the data, a workdir in use or
  holding another run) before anything is written or compiled, and
  paths.StorageFull if the storage fills up.
  """
  path = paths.resolve(workdir, "`workdir`")
  run = build(config, model)
  if model is not None:
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.model.name = run.model.name or "(a network passed to train() in Python)"
    run = run.replace(config=config)
  try:
    make_chain(run.method, config.train.get("sample_sampler") or None)
  except ValueError as e:
    raise ValueError(f"config.train.sample_sampler: {e}") from None
  if (run.method.needs_teacher and variables is None
      and not Checkpoints.any_in(path)):  # a resumed student's checkpoints hold its teacher
    raise ValueError(f"method {run.method.name!r} distils a trained run: start it with "
                     "`distill(workdir, out, ...)` (`ddpm distill`) from the teacher's run")
  source = make_source(config.data) if source is None else source
  check_fit(run, source)
  lock = WorkdirLock(path)
  _hold(lock)
  try:
    return _train(run, path, source, variables)
  except Exception as e:
    if paths.is_disk_full(e):
      try:
        kept = Checkpoints.any_in(path)
      except Exception:  # what the full storage lets be read
        kept = False
      then = ("the earlier checkpoints are intact; free space and run the same command to "
              "resume" if kept else "no checkpoint was saved yet; free space and run the same "
              "command to start again")
      raise paths.StorageFull(f"the storage of `workdir` {os.fspath(path)!r} is full "
                              f"({paths.first_line(e)}): {then}") from e
    raise
  finally:
    lock.release()


def _train(run, workdir: epath.Path, source, variables=None) -> int:
  config, model, spec = run.config, run.model, run.diffusion.spec
  mesh = mesh_from_config(config)
  cfg, k = config.train, config.train.get("steps_per_dispatch", 1)
  sample = init_inputs(model, spec.shape)

  checkpoints = Checkpoints(workdir, every=cfg.checkpoint_every,
                            keep=cfg.get("keep_checkpoints", None))
  state, position = _start(checkpoints, run, mesh, sample, variables)
  snapshot_every = cfg.get("ema_snapshot_every", 0)
  snapshots = EmaSnapshots(workdir) if snapshot_every else None
  sigma_rels = {power_ema_key(s): s for s in power_ema_sigmas(config)}
  step = saved = int(state.step)
  step_fn = make_train_step(run, mesh, state_sharding=jax.tree.map(lambda a: a.sharding, state))
  sampler = make_sampler(run, mesh, sampler=cfg.get("sample_sampler") or None,
                         steps=cfg.get("sample_steps", 0) or None)
  sample_key, train_key = base_key(config.seed, "sample"), base_key(config.seed, "train")
  grid = lambda: _sample_grid(sampler, variables_of(state.ema_params, state.model_state), model,
                              spec, config, source, workdir / "samples" / f"step_{step:08d}.png",
                              sample_key)
  main = jax.process_index() == 0
  check_indexes(source, workdir / "data_index", resuming=step > 0, write=main)
  loader = Loader(source, cfg.batch_size, config.seed, spec=spec,
                  process_index=jax.process_index(), process_count=jax.process_count(),
                  **config_options(config))
  writer = MetricWriter(workdir, enabled=main)
  progress = Progress(step, cfg.num_steps, cfg.batch_size, enabled=main)
  hosts = HostReport(workdir, step, loader.local_batch, jax.process_index(), jax.process_count())
  preemption = _Preemption(mesh)
  pending = []
  try:
    batches = _dispatches(loader, position, mesh, k)
    while step < cfg.num_steps:
      waiting = time.perf_counter()
      batch = next(batches)
      hosts.waited(time.perf_counter() - waiting)
      state, metrics = step_fn(state, batch, train_key)
      step, position = step + k, position + k * cfg.batch_size
      pending.append(metrics)
      if step % cfg.log_every < k or step >= cfg.num_steps:
        summary, pending = _summary(pending), []
        summary.update(hosts.report(step), data_skipped=float(loader.skipped))
        summary["images_per_s"] = progress.update(step, summary)
        writer.write(step, summary)
        if summary["skipped"]:
          log.warning("step %d: skipped %d steps with a non-finite loss or gradient",
                      step, int(summary["skipped"]))
      if preemption.reached():
        if saved != step:
          checkpoints.save(step, state, position, config, force=True)
        log.warning("%s: saved step %d; run the same command to resume", preemption.why, step)
        break
      if checkpoints.save(step, state, position, config):
        saved = step
      checkpoints.check()
      if snapshots is not None and step % snapshot_every < k:
        snapshots.save(step, state.power_emas, int(state.step - state.skipped), sigma_rels)
      if step % cfg.sample_every < k and step < cfg.num_steps:
        grid()
    else:
      if saved != step:
        checkpoints.save(step, state, position, config, force=True)
      grid()
  finally:
    preemption.close()
    progress.close()
    hosts.close()
    loader.close()
    try:
      checkpoints.close()
      if snapshots is not None:
        snapshots.close()
    finally:
      writer.close()
  return step
