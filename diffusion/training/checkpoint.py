"""Orbax checkpoints of a run: the state, the data position and the config, in `workdir/checkpoints/`.

Saves are asynchronous and atomic (Orbax writes to a temporary folder and
renames it when complete), so an interrupted save is never taken for a good
one. An error in a background save is raised by the next call of `save`,
`check` or `close`.
"""

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from diffusion import models


class Checkpoints:
  """The checkpoints of one workdir."""

  def __init__(self, workdir: str, *, every: int = 1, keep: int | None = None,
               read_only: bool = False):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=0 if read_only else every, max_to_keep=keep, create=not read_only,
        read_only=read_only, enable_async_checkpointing=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    """The newest complete checkpoint, ignoring any left half-written."""
    return self.manager.latest_step()

  def save(self, step: int, state, data_position: int, config, *, force: bool = False) -> bool:
    """Starts a save (in the background) if `step` is due, or always with `force`."""
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state),
        data=ocp.args.JsonSave({"position": int(data_position)}),
        config=ocp.args.JsonSave(json.loads(config.to_json()))), force=force)

  def restore(self, step: int, abstract_state) -> tuple[Any, int]:
    """(state, data position) of checkpoint `step`, placed as `abstract_state`'s shardings."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            abstract_state,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)),
        data=ocp.args.JsonRestore()))
    return restored.state, restored.data["position"]

  def restore_config(self, step: int | None = None) -> ml_collections.ConfigDict:
    step = self.latest_step() if step is None else step
    restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return ml_collections.ConfigDict(restored.config)

  def restore_params(self, step: int | None = None, *, ema: bool = True) -> Any:
    """Just the (EMA) parameters of a checkpoint, on this process's first device, for sampling."""
    return self.restore_part("ema_params" if ema else "params", step)

  def restore_part(self, item: str, step: int | None = None) -> Any:
    """One field of the saved state ("params", "ema_params", "opt_state", ...) on one device."""
    step = self.latest_step() if step is None else step
    metadata = self.manager.item_metadata(step).state
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = {item: jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata[item])}
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
    self.manager.wait_until_finished()
    self.manager.check_for_errors()
    self.manager.close()


def load_run(workdir: str, step: int | None = None):
  """(config, model, EMA params, step) of a run's checkpoint (default: the newest).

  `workdir` may also be a model folder with a `config.json` (`python -m
  diffusion.convert ... --config FILE` writes one for a released checkpoint):
  its parameters, at step 0.
  """
  if os.path.isfile(os.path.join(workdir, "model.json")):
    config_file = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_file):
      raise FileNotFoundError(
          f"--workdir {workdir!r} is a model folder without config.json (the data and diffusion "
          "settings): convert it with `python -m diffusion.convert IN OUT --config FILE`")
    if step not in (None, 0):
      raise ValueError(f"--step {step}: a model folder has only step 0")
    with open(config_file) as f:
      config = ml_collections.ConfigDict(json.load(f))
    model, params = models.load(workdir)
    return config, model, params, 0
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
