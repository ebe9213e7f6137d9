#!/usr/bin/env bash
# Trains on every worker of a Cloud TPU VM slice (a pod slice such as v4-32):
# copies this checkout to all workers, installs it with JAX for TPU, and starts
# the same `ddpm train` on each. jax.distributed.initialize() detects the slice
# (diffusion/distributed.py), the mesh spans all of its chips.
#
#   launch/tpu_pod.sh TPU_NAME ZONE experiments/configs/cifar10.py /mnt/shared/runs/cifar10 \
#       --config.data.data_dir=/mnt/shared/tensorflow_datasets --config.model.dtype=bfloat16
#
# WORKDIR must be one place that every worker sees (gs://bucket/run with the gcs
# extra, a Filestore/NFS mount, or a bucket mounted with gcsfuse): checkpoints are
# written by all workers together. Rerunning the command resumes from WORKDIR; on a
# maintenance event the TPU VM gets SIGTERM and the run saves a checkpoint before it
# stops. With --dry-run first (or DDPM_DRY_RUN=1) it prints the gcloud commands, one a
# line, and runs nothing.
set -euo pipefail
dry=${DDPM_DRY_RUN:-0}
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
if [ $# -lt 4 ]; then
  echo "usage: $0 [--dry-run] TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
name=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=$(cd "$(dirname "$0")/.." && pwd)
overrides=$(printf '%q ' "$@")
extra=""
case "$workdir" in gs://*) extra="[gcs]" ;; esac
# A compilation cache that survives preemption (a VM's own ~/.cache does not): e.g.
# DDPM_COMPILATION_CACHE=gs://bucket/xla-cache, passed on to every worker.
cache=""
if [ -n "${DDPM_COMPILATION_CACHE:-}" ]; then
  cache="DDPM_COMPILATION_CACHE=$(printf '%q' "$DDPM_COMPILATION_CACHE") "
fi
remote="set -e; cd ddpm-jax; python3 -m pip install -q -U 'jax[tpu]' && python3 -m pip install -q '.$extra'; ${cache}python3 -m diffusion train --config $(printf '%q' "$config") --workdir $(printf '%q' "$workdir") $overrides"
copy=(gcloud compute tpus tpu-vm scp --recurse --worker=all --zone="$zone" "$repo" "$name":ddpm-jax)
start=(gcloud compute tpus tpu-vm ssh "$name" --worker=all --zone="$zone" --command="$remote")
if [ "$dry" = 1 ]; then
  printf '%q ' "${copy[@]}"; echo
  printf '%q ' "${start[@]}"; echo
  exit 0
fi
"${copy[@]}"
"${start[@]}"
