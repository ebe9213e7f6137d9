"""Multi-process jobs and the device mesh: joining a job, the mesh every layer shards over,
and moving arrays between the host and the mesh.

`initialize` calls `jax.distributed.initialize` when the environment describes a job:

- DDPM_COORDINATOR_ADDRESS, DDPM_NUM_PROCESSES, DDPM_PROCESS_ID: set by
  `launch/local.sh` (several processes on one machine; CPU collectives) or
  by hand.
- SLURM with more than one task, or a multi-host TPU VM slice: JAX's own
  cluster detection.
Otherwise a single process runs on its local devices.
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def initialize() -> None:
  """Joins the job this process belongs to, if any. Call before touching any device.

  JAX's preemption service stays off. Its notifier would own SIGTERM, and its
  sync point is a single counter that Orbax's CheckpointManager also sets, with
  its own step numbers, from the thread that finalises a background save: a
  notice that arrives then is agreed at a point the training loop has already
  passed, and the job never stops. Training turns SIGTERM into a flag and agrees
  on it with a collective instead (`training/loop.py`); other commands keep
  SIGTERM's default action.
  """
  env = os.environ
  if "DDPM_COORDINATOR_ADDRESS" in env:
    if jax.config.jax_platforms in (None, "", "cpu") or env.get("JAX_PLATFORMS") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(
        coordinator_address=env["DDPM_COORDINATOR_ADDRESS"],
        num_processes=int(env["DDPM_NUM_PROCESSES"]),
        process_id=int(env["DDPM_PROCESS_ID"]))
  elif int(env.get("SLURM_NTASKS", "1")) > 1 or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
  """One "data" axis over `devices` (default: every device of every process).

  The axis is of JAX's Auto type: shardings are given at the jit boundary and
  XLA's partitioner propagates them inside, so pure functions written for the
  global batch run unchanged over any number of devices.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicate(tree, mesh: Mesh):
  """`tree` placed whole on every device of `mesh`."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def gather(x: jax.Array) -> np.ndarray:
  """A sharded global array as one NumPy array on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def padded(n: int, mesh: Mesh) -> int:
  """n rounded up to a multiple of the mesh's devices."""
  return n + (-n) % mesh.size


def pad_to_devices(a: np.ndarray, mesh: Mesh) -> np.ndarray:
  """`a` [n, ...] with its rows repeated cyclically up to a multiple of the mesh's devices."""
  return a[np.arange(padded(len(a), mesh)) % len(a)]
