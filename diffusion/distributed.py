"""Multi-process jobs and the device mesh: joining a job, the mesh every layer shards over
(axes "data" and "fsdp"), how the train state is split over it, and moving arrays between
the host and the mesh.

`initialize` calls `jax.distributed.initialize` when the environment describes a job:

- DDPM_COORDINATOR_ADDRESS, DDPM_NUM_PROCESSES, DDPM_PROCESS_ID: set by
  `launch/local.sh` (several processes on one machine; CPU collectives) or
  by hand.
- SLURM with more than one task, or a multi-host TPU VM slice: JAX's own
  cluster detection.
Otherwise a single process runs on its local devices.
"""

import math
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


def skip_absent_tpu() -> bool:
  """On a host with libtpu installed (to plan for TPUs: `ddpm plan`) but neither a TPU nor an
  NVIDIA GPU attached, JAX tries the TPU backend at start, and libtpu prints warnings (no
  TPU_ACCELERATOR_TYPE, no TPU_WORKER_HOSTNAMES) before JAX falls back to the CPU: ask for
  the CPU at once. Left alone where JAX_PLATFORMS (or jax_platforms) is set. Call before
  touching any device; returns whether it asked."""
  if os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms:
    return False
  from jax._src import cloud_tpu_init, hardware_utils
  if (cloud_tpu_init.get_tpu_library_path() is None
      or hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
      or hardware_utils.has_visible_nvidia_gpu()):
    return False
  try:
    jax.config.update("jax_platforms", "cpu")
  except RuntimeError:  # the backends are already up
    return False
  return True


COMPILATION_CACHE_GIB = 4  # the default folder's bound (least recently used entries go first)


def use_compilation_cache() -> str | None:
  """Turns on JAX's persistent compilation cache, so that a resumed or repeated run loads its
  compiled programs instead of compiling them again (a resume of the digits run on a 2-core CPU:
  23 s -> 14 s; on a GPU, a minute per program of the CIFAR-10 network). Where: JAX's own
  setting if made (JAX_COMPILATION_CACHE_DIR), else $DDPM_COMPILATION_CACHE (a folder or bucket
  URI shared by a pod's hosts and restarts; "off" turns the cache off), else
  `paths.cache_dir()`/xla, kept under COMPILATION_CACHE_GIB. Call before compiling anything;
  returns the folder (None: off)."""
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  from diffusion import paths
  folder = os.environ.get("DDPM_COMPILATION_CACHE")
  if folder is not None and folder.strip().lower() in ("", "0", "off", "none", "false"):
    return None
  if not folder:
    folder = os.path.join(paths.cache_dir(), "xla")
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_GIB * 2**30)
  where = paths.resolve(folder, "DDPM_COMPILATION_CACHE" if os.environ.get(
      "DDPM_COMPILATION_CACHE") else "DDPM_CACHE_DIR")  # a backend for its scheme, or a ValueError
  if where.exists() and not where.is_dir():
    raise ValueError(f"the compilation cache {folder!r} is a file, not a folder: set "
                     "DDPM_COMPILATION_CACHE to a folder (or to off)")
  jax.config.update("jax_compilation_cache_dir", folder)
  return folder


def use_cpu_cores(batch_size: int = 0, *, limit: int = 8) -> int:
  """On the CPU, one JAX device per core (at most `limit`, and a count that divides
  `batch_size` if given): XLA runs each device's program on its own thread, and the digits
  default trains 1.8x faster on two devices than on one on a 2-core CPU (docs/benchmarks.md).
  Only the host platform's device count changes: on a GPU or TPU host the accelerators are
  still the devices used. Left alone when XLA_FLAGS or jax_num_cpu_devices already set a
  count, or in a multi-process job. Call before touching any device; returns the count set
  (0: unchanged)."""
  env = os.environ
  if ("xla_force_host_platform_device_count" in env.get("XLA_FLAGS", "")
      or jax.config.jax_num_cpu_devices > 0 or "DDPM_COORDINATOR_ADDRESS" in env
      or int(env.get("SLURM_NTASKS", "1")) > 1 or "," in env.get("TPU_WORKER_HOSTNAMES", "")):
    return 0
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  count = max(d for d in range(1, min(cores or 1, limit) + 1)
              if not batch_size or batch_size % d == 0)
  if count < 2:
    return 0
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # the backends are already up: keep their devices
    return 0
  return count


AXES = ("data", "fsdp")
BATCH = P(AXES)  # a batch's rows are split over every device of the mesh, both axes


def make_mesh(devices=None, *, fsdp: int = 1) -> Mesh:
  """The mesh over `devices` (default: every device of every process): axes "data" and
  "fsdp" of sizes (n / fsdp, fsdp).

  Batches are split over both axes (`BATCH`); the train state is split over
  "fsdp" (`state_shardings`), so fsdp = 1 is pure data parallelism. The axes
  are of JAX's Auto type: shardings are given at the jit boundary and XLA's
  partitioner propagates them inside (gathering sharded parameters where a
  layer needs them whole), so pure functions written for the global batch run
  unchanged over any mesh.
  """
  devices = jax.devices() if devices is None else list(devices)
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"config.mesh.fsdp {fsdp} must divide the {len(devices)} devices")
  auto = jax.sharding.AxisType.Auto
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  if slices > 1:  # multi-slice: "data" spans the slices (over DCN), "fsdp" stays within one
    from jax.experimental import mesh_utils
    per_slice = len(devices) // slices
    if per_slice % fsdp:
      raise ValueError(f"config.mesh.fsdp {fsdp} must divide the {per_slice} devices of each of "
                       f"the {slices} slices")
    grid = mesh_utils.create_hybrid_device_mesh((per_slice // fsdp, fsdp), (slices, 1), devices)
    return Mesh(grid, AXES, axis_types=(auto, auto))
  return jax.make_mesh((len(devices) // fsdp, fsdp), AXES, devices=devices,
                       axis_types=(auto, auto))


def mesh_sizes(config, devices: int) -> tuple[int, int]:
  """(data, fsdp) of a config's optional `mesh` section for `devices` devices: `fsdp` (default
  1) and `data` (default -1: the devices left); a one-line error names a key that does not fit."""
  section = config.get("mesh") or {}
  fsdp, data = int(section.get("fsdp", 1)), int(section.get("data", -1))
  if fsdp < 1 or devices % fsdp:
    raise ValueError(f"config.mesh.fsdp {fsdp} must divide the {devices} devices")
  if data == -1:
    data = devices // fsdp
  if data * fsdp != devices:
    raise ValueError(f"config.mesh.data {data} x config.mesh.fsdp {fsdp} must equal the "
                     f"{devices} devices (data -1: the devices left)")
  return data, fsdp


def mesh_from_config(config, devices=None) -> Mesh:
  """`make_mesh` with the axis sizes of `config.mesh` (see `mesh_sizes`)."""
  devices = jax.devices() if devices is None else list(devices)
  return make_mesh(devices, fsdp=mesh_sizes(config, len(devices))[1])


MIN_SHARD_SIZE = 2 ** 14  # leaves of fewer elements stay replicated: splitting them costs more


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int = MIN_SHARD_SIZE) -> P:
  """The PartitionSpec of one state leaf of `shape` on an fsdp axis of size `fsdp`: its largest
  dimension that `fsdp` divides (the later one on a tie) split over "fsdp"; replicated
  (P()) if the leaf has fewer than `min_size` elements or no such dimension."""
  if fsdp == 1 or math.prod(shape) < min_size:
    return P()
  fits = [(size, axis) for axis, size in enumerate(shape) if size % fsdp == 0]
  if not fits:
    return P()
  axis = max(fits)[1]
  return P(*([None] * axis + ["fsdp"]))


def state_shardings(shapes, mesh: Mesh, min_size: int = MIN_SHARD_SIZE):
  """A NamedSharding for each leaf of `shapes` (arrays or ShapeDtypeStructs): `fsdp_spec`
  over the mesh's "fsdp" axis (ZeRO-3: parameters, optimizer moments and EMA alike, since
  the rule follows the shape), replicated over "data"."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda s: NamedSharding(mesh, fsdp_spec(tuple(s.shape), fsdp, min_size)),
                      shapes)


def bytes_per_device(tree) -> dict:
  """{device: bytes of `tree`'s shards held there}, for the arrays of `tree`."""
  held = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
  return held


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
