"""A run's folder: its Orbax checkpoints (the state, the data position and the saved config, in
`workdir/checkpoints/`), reading a run back (`load_run` -> `Run`), and the run's keys
(`base_key`). Training writes run folders; sampling, the applications and the evaluations
read them through this module alone.

Saves are asynchronous and atomic (Orbax writes to a temporary folder and
renames it when complete, or marks it complete on an object store), so an
interrupted save is never taken for a good one. An error in a background save
is raised by the next call of `save`, `check` or `close`.

A checkpoint that was complete but can no longer be read (a damaged file) is
passed over with a warning that names it, by a resumed run and by `ddpm
sample` alike: both use the newest readable one. A resumed run moves the
damaged ones to `workdir/damaged_checkpoints/` (nothing is deleted), so that
it can save those steps again.
"""

import dataclasses
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from diffusion import _checks, methods, models, paths
from diffusion.config import diffusion_of, resume_differences, validate
from diffusion.process import Diffusion

log = logging.getLogger(__name__)
T = TypeVar("T")


class IncompatibleResume(ValueError):
  """The workdir holds a run whose config differs from the new one in what it computes."""


def _reason(error: BaseException) -> str:
  """The first line of the error's root cause (TensorStore's, under Orbax's wrappers)."""
  while error.__cause__ is not None:
    error = error.__cause__
  return f"{type(error).__name__}: {paths.first_line(error).split('. See full TensorStore')[0]}"


class _QuietReadOnly(logging.Filter):
  """Drops Orbax's warning that a manager opened read-only is read-only."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Given directory is read only")


class _QuietAfterDamage(logging.Filter):
  """Drops asyncio's "... exception was never retrieved" records (see `_quiet_damaged_reads`)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "exception was never retrieved" not in record.getMessage()


def _from_a_read(unraisable) -> bool:
  """Whether an unraisable exception is the debris of an abandoned checkpoint read."""
  value = unraisable.exc_value
  if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
    return True
  frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
  return any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in frames)


def _quiet_damaged_reads() -> None:
  """A failed read of a damaged checkpoint abandons Orbax's other reads: their errors reach
  sys.unraisablehook and asyncio's log later, after `read` has returned (some 15,000 lines
  of tracebacks for one damaged digits checkpoint), some while the next read runs. From the
  first read on, those alone are dropped; the warning of `Checkpoints.newest` names the
  damaged checkpoint and the first error."""
  hook = sys.unraisablehook
  if getattr(hook, "quiet_damaged_reads", False):
    return

  def quiet(unraisable):
    if not _from_a_read(unraisable):
      hook(unraisable)

  quiet.quiet_damaged_reads = True
  sys.unraisablehook = quiet
  warnings.filterwarnings("ignore", "coroutine '.*' was never awaited", RuntimeWarning)
  logging.getLogger("asyncio").addFilter(_QuietAfterDamage())


_READ_ONLY = _QuietReadOnly()


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's pytree handler; in a run of one process, with replica-parallel saving off.

  Replica-parallel saving (Orbax's default except on GPUs) has each replica of a replicated
  array write a slice of it, so that the processes of a pod share the writing. In one process
  the same process writes every byte either way, and the slicing costs a compiled program per
  array shape and device: 104 programs, 8.6 s of a 6-step digits run on 8 CPU devices.
  """
  if jax.process_count() > 1:
    return ocp.PyTreeCheckpointHandler()
  handlers = [(ty, ocp.type_handlers.get_type_handler(ty))
              for ty in (int, float, bytes, np.number, np.ndarray, str)]
  registry = ocp.type_handlers.create_type_handler_registry(
      *handlers, (jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False)))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def _close(manager: ocp.CheckpointManager) -> None:
  """Waits for a manager's pending saves, raising their errors, and releases it."""
  try:
    manager.wait_until_finished()
    manager.check_for_errors()
  finally:
    manager.close()


def _on_first_device(metadata) -> Any:
  """Shapes and dtypes of a saved tree's metadata, placed on this process's first device."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                      metadata)


class Checkpoints:
  """The checkpoints of one workdir (a local path or an object-store URI)."""

  def __init__(self, workdir: str | os.PathLike, *, every: int = 1, keep: int | None = None,
               read_only: bool = False):
    self.workdir = paths.resolve(workdir, "`workdir`")
    self.directory = self.workdir / "checkpoints"
    self.damaged: list[int] = []
    if read_only:
      logging.getLogger("absl").addFilter(_READ_ONLY)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=0 if read_only else every, max_to_keep=keep, create=not read_only,
        read_only=read_only, enable_async_checkpointing=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": _state_handler(),
                       "data": ocp.JsonCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()})

  @staticmethod
  def any_in(workdir: str | os.PathLike) -> bool:
    """Whether `workdir` holds a complete checkpoint (opens nothing when it has no checkpoints/)."""
    if not (paths.resolve(workdir, "`workdir`") / "checkpoints").exists():
      return False
    checkpoints = Checkpoints(workdir, read_only=True)
    try:
      return bool(checkpoints.all_steps())
    finally:
      checkpoints.close()

  def latest_step(self) -> int | None:
    """The newest complete checkpoint, ignoring any left half-written."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def newest(self, read: Callable[[int], T]) -> tuple[int, T] | None:
    """(step, read(step)) of the newest checkpoint that `read` can read, or None if there is
    none. A newer one that fails twice (once could be a passing network error) is damaged: a
    warning names it and `self.damaged` lists it. An IncompatibleResume from `read` is not
    damage: it is raised."""
    _quiet_damaged_reads()
    for step in reversed(self.all_steps()):
      for _ in range(2):
        try:
          return step, read(step)
        except IncompatibleResume:
          raise
        except Exception as e:  # TensorStore, JSON and Orbax errors of a damaged checkpoint
          error = e
      self.damaged.append(step)
      log.warning("checkpoint %s is damaged and is passed over (%s)",
                  os.fspath(self.directory / str(step)), _reason(error))
    return None

  def set_aside_damaged(self) -> None:
    """Moves the damaged checkpoints to workdir/damaged_checkpoints/, out of the run's way."""
    for step in self.damaged:
      target = self.workdir / "damaged_checkpoints" / str(step)
      paths.move_tree(self.directory / str(step), target)
      log.warning("moved the damaged checkpoint of step %d to %s", step, os.fspath(target))
    if self.damaged:
      self.manager.reload()
    self.damaged = []

  def save(self, step: int, state, data_position: int, config, *, force: bool = False) -> bool:
    """Starts a save (in the background) if `step` is due, or always with `force`."""
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state),
        data=ocp.args.JsonSave({"position": int(data_position)}),
        config=ocp.args.JsonSave(json.loads(config.to_json()))), force=force)

  def restore(self, step: int, abstract_state) -> tuple[Any, int]:
    """(state, data position) of checkpoint `step`, placed as `abstract_state`'s shardings.

    A checkpoint saved before the state had `model_state` (the network's
    collections other than its parameters) or `extra` (a distillation's
    teacher and target) restores with them empty. A power-function EMA the
    run keeps and the checkpoint lacks (a run that turned config.train.power_ema
    on, or one saved before it existed) starts from the classic EMA, with a
    warning; one it no longer keeps is not read.
    """
    saved = self.manager.item_metadata(step).state
    fields = [f.name for f in dataclasses.fields(abstract_state)]
    missing = [name for name in fields
               if name in ("model_state", "extra", "power_emas") and name not in saved]
    for name in missing:
      if name != "power_emas" and jax.tree.leaves(getattr(abstract_state, name)):
        raise IncompatibleResume(f"checkpoint {step} holds no {name}, which this run needs: "
                                 "train in another `workdir`")
    wanted = dict(getattr(abstract_state, "power_emas", {}))
    have = set(saved.get("power_emas") or {}) if "power_emas" in saved else set()
    target = {name: getattr(abstract_state, name) for name in fields if name not in missing}
    if "power_emas" in target:
      target["power_emas"] = {k: v for k, v in wanted.items() if k in have}
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=bool(have - set(wanted))),
        data=ocp.args.JsonRestore()))
    state = dataclasses.replace(abstract_state, **restored.state, **{n: {} for n in missing})
    new = sorted(set(wanted) - have)
    if new:
      log.warning("checkpoint %d holds no power-function EMA %s: it starts from the classic "
                  "EMA at this step (a post-hoc reconstruction that reaches back before it is "
                  "approximate)", step, ", ".join(new))
      state = dataclasses.replace(state, power_emas={
          **state.power_emas,
          **{k: jax.tree.map(jax.numpy.copy, state.ema_params) for k in new}})  # own buffers
    return state, restored.data["position"]

  def restore_position(self, step: int) -> int:
    """The data position saved with checkpoint `step`."""
    return int(self.manager.restore(step, args=ocp.args.Composite(
        data=ocp.args.JsonRestore())).data["position"])

  def restore_config(self, step: int | None = None) -> ml_collections.ConfigDict:
    step = self.latest_step() if step is None else step
    restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return ml_collections.ConfigDict(restored.config)

  def check_resumable(self, step: int, config) -> None:
    """Raises IncompatibleResume if `config` differs from checkpoint `step`'s in what the run
    computes (the network, the diffusion, the data, the optimizer)."""
    saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    differences = resume_differences(dict(saved.config), config)
    if differences:
      shown = "; ".join(differences[:6]) + ("; ..." if len(differences) > 6 else "")
      raise IncompatibleResume(
          f"`workdir` {os.fspath(self.workdir)!r} holds a run with another config ({shown}): "
          "resume it with its own config, or train in another `workdir`")

  def restore_params(self, step: int | None = None, *, ema: bool = True) -> Any:
    """Just the (EMA) parameters of a checkpoint, on this process's first device, for sampling."""
    return self.restore_part("ema_params" if ema else "params", step)

  def restore_variables(self, step: int | None = None, *, ema: bool = True) -> dict:
    """The network's variables of a checkpoint: {"params": the (EMA) parameters, **the other
    collections}, on this process's first device."""
    step = self.latest_step() if step is None else step
    variables = {"params": self.restore_params(step, ema=ema)}
    if jax.tree.leaves(self.manager.item_metadata(step).state.get("model_state", {})):
      variables.update(self.restore_part("model_state", step))
    return variables

  def restore_part(self, item: str, step: int | None = None) -> Any:
    """One field of the saved state ("params", "ema_params", "opt_state", ...) on one device."""
    step = self.latest_step() if step is None else step
    abstract = {item: _on_first_device(self.manager.item_metadata(step).state[item])}
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=abstract, partial_restore=True,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))))
    return restored.state[item]

  def check(self) -> None:
    """Raises the error of a failed background save, if any."""
    self.manager.check_for_errors()

  def close(self) -> None:
    """Waits for pending saves, raising their errors, and releases the manager."""
    _close(self.manager)


class EmaSnapshots:
  """Snapshots of a run's power-function EMAs (`TrainState.power_emas`), in
  `workdir/ema_snapshots/STEP/`: the trees as the state holds them (sharded on a mesh,
  written by every process), and {"t": the updates applied, "sigma_rels": {name: σ_rel}}.
  All are kept: post-hoc EMA (`diffusion.posthoc`) combines them."""

  def __init__(self, workdir: str | os.PathLike, *, read_only: bool = False):
    self.directory = paths.resolve(workdir, "`workdir`") / "ema_snapshots"
    if read_only:
      logging.getLogger("absl").addFilter(_READ_ONLY)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=0 if read_only else 1, create=not read_only, read_only=read_only,
        enable_async_checkpointing=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"profiles": _state_handler(), "meta": ocp.JsonCheckpointHandler()})

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, profiles: dict, t: int, sigma_rels: dict[str, float]) -> None:
    """Starts writing the snapshot of `step` (in the background), unless the step has one
    (a run resumed from an earlier checkpoint recomputes the same trees)."""
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        profiles=ocp.args.PyTreeSave(profiles),
        meta=ocp.args.JsonSave({"t": int(t), "sigma_rels": dict(sigma_rels)})), force=True)

  def meta(self, step: int) -> dict:
    return dict(self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta)

  def restore(self, step: int) -> dict:
    """The profiles of snapshot `step`, {name: parameter tree}, on this process's first
    device."""
    abstract = _on_first_device(dict(self.manager.item_metadata(step).profiles))
    return self.manager.restore(step, args=ocp.args.Composite(profiles=ocp.args.PyTreeRestore(
        abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)))).profiles

  def close(self) -> None:
    _close(self.manager)


def base_key(seed: int, purpose: str) -> jax.Array:
  """The root key of one use of the seed: "init", "train", "sample" or "evaluate"."""
  return jax.random.fold_in(jax.random.key(_checks.seed(seed)),
                            ("init", "train", "sample", "evaluate").index(purpose))


@dataclasses.dataclass(frozen=True)
class Run:
  """A run's typed parts, made once at the boundary (`build`: `train()`, `load_run`, the CLI)
  and passed down to the library's functions instead of the config: the network (a Denoiser),
  the `Diffusion` (schedule, prediction, variance, clipping, the data's spec) and the `Method`
  its config describes, the config itself (the user's file and the checkpoint's record), and
  for a run read back, its variables (EMA parameters and other collections) and step.
  Unpacks as (config, model, variables, step), the tuple `load_run` gave before."""
  config: ml_collections.ConfigDict
  model: Any
  diffusion: Diffusion
  method: methods.Method
  variables: dict | None = None
  step: int | None = None

  def __iter__(self):
    return iter((self.config, self.model, self.variables, self.step))

  def replace(self, **changes) -> "Run":
    return dataclasses.replace(self, **changes)


def build(config: ml_collections.ConfigDict, model=None, *, check: bool = True) -> Run:
  """The Run of a config (no variables): its Diffusion and Method, made once, and the network
  of config.model (or `model`, a Denoiser or a Flax module). With `check`, the config's values
  are checked first (`config.validate`, then the method's own `check`), each error naming its
  key, and a given network against the data's shape; a saved config read back is trusted."""
  if check:
    validate(config)
  diffusion = diffusion_of(config)
  method = methods.from_config(config, diffusion)
  if check:
    method.check(config)
  shape = diffusion.spec.shape
  if model is None:
    model = models.build(config.model, shape)
  else:
    model = models.as_denoiser(model, config.model)
    if check:
      model.check(shape)
  return Run(config, model, diffusion, method)


def load_run(workdir: str, step: int | None = None, *, model=None,
             steps: int | None = None) -> Run:
  """The `Run` of a checkpoint (default: the newest readable): its saved config, the network
  rebuilt from it (or `model`, a Denoiser or module, if given: for a network the config cannot
  name), its variables with the EMA parameters, the step and the run's `Diffusion` and
  `Method`. `steps`: the sampling steps asked for, with which a method whose checkpoints hold
  different models (a progressive run's rounds) picks the checkpoint (`Method.checkpoint_for`);
  the checkpoints are opened once.

  `workdir` may also be a model folder with a `config.json` (`ddpm convert ...
  --config FILE` writes one for a released checkpoint): its parameters, at step 0.
  """
  path = paths.resolve(workdir, "`workdir`")
  if (path / "model.json").exists():
    if not (path / "config.json").exists():
      raise FileNotFoundError(
          f"`workdir` {workdir!r} is a model folder without config.json (the data and diffusion "
          "settings): convert it with `convert.convert(model_dir, out_dir, config)` (`ddpm "
          "convert`), naming a config")
    if step not in (None, 0):
      raise ValueError(f"`step` {step}: a model folder has only step 0")
    config = ml_collections.ConfigDict(json.loads((path / "config.json").read_text()))
    unet, params = models.load(path)
    denoiser = models.build({"name": "unet", **models.model_kwargs(unet)},
                            diffusion_of(config).spec.shape)
    return build(config, denoiser, check=False).replace(variables={"params": params}, step=0)
  if not (path / "checkpoints").exists():
    raise FileNotFoundError(f"`workdir` {workdir!r} holds no checkpoints/: not a training run")
  checkpoints = Checkpoints(path, read_only=True)

  def read(s):
    return checkpoints.restore_config(s), checkpoints.restore_variables(s)

  def read_named(s):
    try:
      return read(s)
    except Exception as e:  # noqa: BLE001 (a damaged checkpoint, named)
      raise ValueError(f"`step` {s}: checkpoint {os.fspath(checkpoints.directory / str(s))}"
                       f" is damaged ({_reason(e)})") from None

  try:
    kept = checkpoints.all_steps()
    if not kept:
      raise FileNotFoundError(f"`workdir` {workdir!r} holds no complete checkpoint")
    if step is None:
      found = checkpoints.newest(read)
      if found is None:
        raise ValueError(f"`workdir` {workdir!r}: every checkpoint is damaged (steps {kept})")
      at, (config, variables) = found
    elif step not in kept:
      raise ValueError(f"`step` {step}: the run has checkpoints at steps {kept}")
    else:
      at, (config, variables) = step, read_named(step)
    run = build(config, model, check=False)
    chosen, method = run.method.checkpoint_for(kept, at, step is not None, steps)
    if chosen != at:
      config, variables = read_named(chosen)
  finally:
    checkpoints.manager.close()
  return run.replace(config=config, method=method, variables=variables, step=chosen)
