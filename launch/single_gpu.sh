#!/usr/bin/env bash
# Runs one experiment on ONE machine with one GPU (or several GPUs of one
# host, which the 'shard' strategy then uses through a local mesh).
#
# What it runs:   python -m uap_jax.main --flagfile=FLAGFILE [EXTRA FLAGS...]
# How:            launch/single_gpu.sh [FLAGFILE] [EXTRA FLAGS...]
#   FLAGFILE      default experiments/quickstart.flags
#   GPU=N         which GPU to use (sets CUDA_VISIBLE_DEVICES); unset: all
#                 visible GPUs, and with more than one, --strategy=auto picks
#                 'shard' over --mesh (default: all GPUs on the models axis).
#   PYTHON=...    interpreter (default python3), e.g. a virtualenv's python.
# Examples:
#   launch/single_gpu.sh experiments/quickstart.flags
#   GPU=1 launch/single_gpu.sh experiments/quickstart.flags --workdir=runs/q1
#   launch/single_gpu.sh experiments/quickstart.flags --strategy=shard --mesh=models:4,data:2
# Needs: jax with CUDA (pip install -U "jax[cuda12]") and this repository
# installed (pip install -e .). Runs as a single process: --distributed=false.
set -euo pipefail

cd "$(dirname "$0")/.."
FLAGFILE="${1:-experiments/quickstart.flags}"
shift || true
if [[ ! -f "$FLAGFILE" ]]; then
  echo "error: flagfile $FLAGFILE not found (pass a path such as experiments/quickstart.flags)" >&2
  exit 2
fi
if [[ -n "${GPU:-}" ]]; then
  export CUDA_VISIBLE_DEVICES="$GPU"
fi
# Let XLA allocate GPU memory as needed instead of grabbing 75% up front, so
# that stacks that do not fit fail with a clear out-of-memory error.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"

exec "${PYTHON:-python3}" -m uap_jax.main --flagfile="$FLAGFILE" --distributed=false "$@"
