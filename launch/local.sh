#!/usr/bin/env bash
# Runs N processes of a ddpm command on this machine as one JAX job, joined by
# jax.distributed with CPU (gloo) collectives: the multi-process code path of a
# pod or cluster, on a laptop. Each process sees its own devices; to give each
# several CPU devices, export XLA_FLAGS=--xla_force_host_platform_device_count=K.
#
#   launch/local.sh 2 ddpm train --config experiments/configs/digits.py --workdir runs/digits2
#
# SIGTERM or Ctrl-C is passed on to every process (each saves a checkpoint).
# With --dry-run first (or DDPM_DRY_RUN=1) it prints the commands, one a line, and runs nothing.
set -euo pipefail
dry=${DDPM_DRY_RUN:-0}
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
if [ $# -lt 2 ]; then
  echo "usage: $0 [--dry-run] NUM_PROCESSES COMMAND [ARGS...]" >&2
  exit 2
fi
n=$1
shift
port=${DDPM_PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < n; i++)); do
  job=(env DDPM_COORDINATOR_ADDRESS="localhost:$port" DDPM_NUM_PROCESSES="$n"
       DDPM_PROCESS_ID="$i" JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" "$@")
  if [ "$dry" = 1 ]; then
    printf '%q ' "${job[@]}"; echo
    continue
  fi
  "${job[@]}" &
  pids+=($!)
done
if [ "$dry" = 1 ]; then exit 0; fi
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
wait || true
exit "$status"
