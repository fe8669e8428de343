#!/usr/bin/env bash
# Rebuilds the README's headline tables from scratch: every setting over
# several run seeds, then one mean-and-range table per setting
# (experiments/seed_table.py -> experiments/results/seeds_NAME.{md,json}).
#
#   bash experiments/reproduce.sh            # quickstart x3 (about 10 min on 2 CPU cores)
#   bash experiments/reproduce.sh all        # + the Fashion-MNIST seed-0 zoo the defaults
#                                            #   were chosen on (25 min), the fresh
#                                            #   Fashion-MNIST zoo x3 (run seeds 1-3) and the
#                                            #   fresh CIFAR-10 zoo x2 (seeds 1-2), each about
#                                            #   40-50 min on 2 cores shared with another run
#                                            #   (2026-12-07): about 4.5 h
#   bash experiments/reproduce.sh adaptive   # the pirates who know the method and the
#                                            #   false-claim accuser on fresh Fashion-MNIST
#                                            #   (about 65 min: run 35, owner 2, sweep 7,
#                                            #   false claim 20)
#
# Each run is a work directory runs/NAME_seedS; a rerun resumes (finished runs
# only rebuild their report). Fashion-MNIST needs Debian's
# dataset-fashion-mnist (apt install dataset-fashion-mnist); CIFAR-10 needs
# ../shared/data/cifar10_10k.npz or another CIFAR-10 npz (edit the flagfile).
set -euo pipefail
cd "$(dirname "$0")/.."

run_seeds() {  # NAME FLAGFILE SEED...
  local name=$1 flagfile=$2; shift 2
  local dirs=()
  for seed in "$@"; do
    local dir="runs/${name}_seed${seed}"
    python -m uap_jax.main --flagfile="$flagfile" --seed="$seed" --workdir="$dir"
    dirs+=("$dir")
  done
  python experiments/seed_table.py "${dirs[@]}" --name="$name" \
      --out="experiments/results/seeds_${name}"
}

adaptive() {  # the README's "Pirates who know the method" tables
  local run=runs/adaptive_fashion owner=runs/adaptive_fashion_owner
  python -m uap_jax.main --preset=fashion_mnist_fresh,adaptive --workdir="$run"
  # The unaware owner: the same victim and models, the standard kinds only.
  [[ -d "$owner" ]] || cp -r "$run" "$owner"
  python -m uap_jax.main --preset=fashion_mnist_fresh --workdir="$owner"
  python experiments/adaptive_table.py --workdir="$run" --owner_workdir="$owner" \
      --out=experiments/results/adaptive_fashion_fresh
  python experiments/removal_sweep.py --owner_workdir="$owner" --preset=fashion_mnist_fresh \
      --workroot=runs/removal_sweep --out=experiments/results/removal_sweep_fashion
  python experiments/false_claim.py --workdir="$owner" --max_targets=12 \
      --out=experiments/results/false_claim_fashion_fresh
}

if [[ "${1:-}" == "adaptive" ]]; then
  adaptive
  exit 0
fi
run_seeds quickstart experiments/quickstart.flags 0 1 2
if [[ "${1:-}" == "all" ]]; then
  # Seed 0: where settings are chosen (--enc_crossfit=auto was).
  run_seeds fashion_mnist experiments/fashion_mnist.flags 0
  # The fresh zoos, never looked at while choosing settings: the headline.
  run_seeds fashion_mnist_fresh experiments/fashion_mnist_fresh.flags 1 2 3
  run_seeds cifar10_cpu_fresh experiments/cifar10_cpu_fresh.flags 1 2
fi
