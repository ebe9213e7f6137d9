#!/usr/bin/env bash
# Trains on every worker of a Cloud TPU VM slice (a pod slice such as v4-32):
# copies this checkout to all workers, installs it with JAX for TPU, and starts
# the same `ddpm train` on each. jax.distributed.initialize() detects the slice
# (diffusion/distributed.py), the mesh spans all of its chips.
#
#   launch/tpu_pod.sh TPU_NAME ZONE experiments/configs/cifar10.py /mnt/shared/runs/cifar10 \
#       --config.data.data_dir=/mnt/shared/tensorflow_datasets --config.model.dtype=bfloat16
#
# WORKDIR must be one folder that every worker sees (a Filestore/NFS mount, or a
# bucket mounted with gcsfuse): checkpoints are written by all workers together.
# Rerunning the command resumes from WORKDIR; on a maintenance event the TPU VM
# gets SIGTERM and the run saves a checkpoint before it stops.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
name=$1 zone=$2 config=$3 workdir=$4
shift 4
repo=$(cd "$(dirname "$0")/.." && pwd)
gcloud compute tpus tpu-vm scp --recurse --worker=all --zone="$zone" "$repo" "$name":ddpm-jax
gcloud compute tpus tpu-vm ssh "$name" --worker=all --zone="$zone" --command="
  set -e
  cd ddpm-jax
  python3 -m pip install -q -U 'jax[tpu]' && python3 -m pip install -q .
  python3 -m diffusion train --config '$config' --workdir '$workdir' $*
"
