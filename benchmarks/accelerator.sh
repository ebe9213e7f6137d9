#!/usr/bin/env bash
# The accelerator figures in one time-boxed call (training, sampling, FID Inception, attention,
# beside PyTorch), as a table and OUT/accelerator.json. From a checkout; installs nothing.
#   bash benchmarks/accelerator.sh [--cpu-smoke] [--out DIR] [--budget SECONDS] [--parts a,b]
# Options: python3 benchmarks/accelerator.py --help. PYTHON picks the interpreter. Exit status 1
# when a part failed (named on the last line of stderr); a part skipped for a stated reason passes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" "$root/benchmarks/accelerator.py" "$@"
