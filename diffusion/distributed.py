"""Multi-process jobs: `jax.distributed.initialize` when the environment describes one.

- DDPM_COORDINATOR_ADDRESS, DDPM_NUM_PROCESSES, DDPM_PROCESS_ID: set by
  `launch/local.sh` (several processes on one machine; CPU collectives) or
  by hand.
- SLURM with more than one task, or a multi-host TPU VM slice: JAX's own
  cluster detection.
Otherwise a single process runs on its local devices.
"""

import os

import jax


def initialize() -> None:
  """Joins the job this process belongs to, if any. Call before touching any device."""
  env = os.environ
  if "DDPM_COORDINATOR_ADDRESS" in env:
    if jax.config.jax_platforms in (None, "", "cpu") or env.get("JAX_PLATFORMS") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=env["DDPM_COORDINATOR_ADDRESS"],
        num_processes=int(env["DDPM_NUM_PROCESSES"]),
        process_id=int(env["DDPM_PROCESS_ID"]))
  elif int(env.get("SLURM_NTASKS", "1")) > 1 or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    jax.distributed.initialize()
