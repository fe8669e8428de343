#!/usr/bin/env bash
# Runs one experiment on a Cloud TPU VM slice, on ALL its workers at once (one
# JAX process per worker host). JAX finds the coordinator, the process count
# and ids from the TPU metadata (--distributed=true, no addresses needed); the
# zoo and the reference bank are divided among the workers, each saving its
# stacks into the work directory, and the suspects' fingerprints are gathered
# on worker 0, which writes the run's JSON and reports. So --workdir must be
# one directory every worker mounts at the same path (a bucket mounted with
# gcsfuse, or a Filestore/NFS share); a worker-local path is refused at the
# start, before any work.
#
# What it runs (on every worker):
#   cd REMOTE_DIR && python3 -m uap_jax.main --flagfile=FLAGFILE --distributed=true [EXTRA FLAGS...]
# How:
#   launch/tpu_vm.sh TPU_NAME ZONE [FLAGFILE] [EXTRA FLAGS...]
#   TPU_NAME, ZONE  the slice, e.g. my-v4-32 us-central2-b (create it first:
#                   gcloud compute tpus tpu-vm create NAME --zone=ZONE
#                   --accelerator-type=v4-32 --version=tpu-ubuntu2204-base)
#   FLAGFILE        default experiments/quickstart.flags (path in this repo)
#   PROJECT=...     gcloud project (default: gcloud's configured one)
#   SETUP=1         first copy this repository to every worker and install it
#                   with jax[tpu] (needed once per slice, and after changes)
#   REMOTE_DIR=...  where the repository lives on the workers (default uap-jax)
# Example:
#   SETUP=1 launch/tpu_vm.sh my-v4-32 us-central2-b experiments/quickstart.flags --workdir=/mnt/bucket/runs/tpu1
# (with the bucket mounted at /mnt/bucket on every worker, e.g.
#  gcsfuse --implicit-dirs BUCKET /mnt/bucket); the results are then in the bucket.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 TPU_NAME ZONE [FLAGFILE] [EXTRA FLAGS...]" >&2
  exit 2
fi
TPU_NAME="$1"
ZONE="$2"
FLAGFILE="${3:-experiments/quickstart.flags}"
shift $(( $# >= 3 ? 3 : 2 ))
REMOTE_DIR="${REMOTE_DIR:-uap-jax}"
cd "$(dirname "$0")/.."
if [[ ! -f "$FLAGFILE" ]]; then
  echo "error: flagfile $FLAGFILE not found (pass a path such as experiments/quickstart.flags)" >&2
  exit 2
fi
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then
  WHERE+=(--project="$PROJECT")
fi

if [[ "${SETUP:-0}" == "1" ]]; then
  # Copy tracked files only (no runs/, no virtualenvs) and install on every worker.
  ARCHIVE="$(mktemp -d)/uap-jax.tar.gz"
  git archive --format=tar.gz -o "$ARCHIVE" HEAD
  "${GCLOUD[@]}" scp --worker=all "$ARCHIVE" "$TPU_NAME:uap-jax.tar.gz" "${WHERE[@]}"
  "${GCLOUD[@]}" ssh "$TPU_NAME" --worker=all "${WHERE[@]}" --command="
    set -e; mkdir -p $REMOTE_DIR && tar -xzf uap-jax.tar.gz -C $REMOTE_DIR
    python3 -m pip install -q -U 'jax[tpu]' && python3 -m pip install -q -e $REMOTE_DIR"
fi

# Quote every extra flag for the remote shell.
EXTRA=""
for arg in "$@"; do
  EXTRA+=" $(printf '%q' "$arg")"
done
"${GCLOUD[@]}" ssh "$TPU_NAME" --worker=all "${WHERE[@]}" --command="
  cd $REMOTE_DIR && python3 -m uap_jax.main --flagfile=$(printf '%q' "$FLAGFILE") --distributed=true$EXTRA"
