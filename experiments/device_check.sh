#!/usr/bin/env bash
# The prepared device check: what the CPU cannot show, in at most 8 minutes
# on one GPU (or TPU host), all figures in one JSON.
#
#   bash experiments/device_check.sh            # on the accelerator
#   SMOKE=1 bash experiments/device_check.sh    # tiny sizes, to try it on a CPU
#
# Parts, each under its own time limit so that one slow part cannot eat the
# others' time (a part that runs out is recorded as such):
#   model_axis   fingerprinting stacks under vmap / map / loop (and shard with
#                several devices), as a fraction of the matmul floor
#   train_stack  one stack's training steps under vmap / map / loop / auto,
#                with and without buffer donation
#   uap          DeepFool-UAP sequential / minibatch / pipelined and SGD-UAP
#   conv_forms   K models' conv layers as a loop, lax.map or vmap (one grouped
#                convolution), with XLA's convolution or im2col
#   cifar_zoo    victim and zoo stages of a CIFAR-10 run at full width (width
#                1.0, which the CPU cannot afford); the MNIST 5k set when no
#                CIFAR-10 file is at $CIFAR (default ../shared/data/cifar10_10k.npz)
# Out: $OUT/device_check.json (default runs/device_check), with each part's
# own JSON and log beside it. Set the accelerator default of
# uap_jax.runtime.engine from model_axis and train_stack.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device_check}
CIFAR=${CIFAR:-../shared/data/cifar10_10k.npz}
mkdir -p "$OUT"
start=$(date +%s)

if [ -n "${SMOKE:-}" ]; then
  AXIS="--archs mlp --sizes 1,4 --repeats 1 --matmul_n 256 --image 8,8,1"
  TRAIN="--archs mlp --k 2 --steps 3 --image 8,8,1"
  UAP="--datasets digits --samples 50 --test_samples 100 --train_images 300 --passes 1 --batch_sizes 8"
  ZOO="--flagfile=experiments/quickstart.flags --flagfile=experiments/tiny.flags"
  CONV="--k 2 --batch 8 --image 8,8,1 --channels 4,8 --matmul_n 128 --repeats 1"
  LIMITS=(60 120 90 120 30)
else
  AXIS="--archs mlp,small_cnn,resnet20 --sizes 1,8,32,128"
  TRAIN="--archs small_cnn,resnet20 --k 8 --steps 20 --variants vmap,vmap+donate,map,loop,loop+donate,auto"
  UAP="--datasets mnist5k --passes 1,3 --batch_sizes 8,32"
  if [ -f "$CIFAR" ]; then
    ZOO="--flagfile=experiments/cifar10_cpu_fresh.flags --dataset=npz:$CIFAR --width=1.0 --zoo_count=1 --zoo_counts=independent_seed:2,independent_arch:2,independent_data:2"
  else
    ZOO="--flagfile=experiments/quickstart.flags --width=2.0 --zoo_epochs=6"
  fi
  CONV="--k 8 --batch 256 --channels 32,64,128 --matmul_n 8192"
  LIMITS=(90 90 90 150 30)
fi

part() {  # NAME LIMIT_S COMMAND...: runs one part, records its status
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 )), \"limit_s\": $limit}" > "$OUT/$name.status.json"
  echo "device_check: $name rc=$rc in $(( $(date +%s) - t0 )) s (limit $limit s)"
}

part model_axis "${LIMITS[0]}" python experiments/bench_model_axis.py $AXIS --out "$OUT/model_axis.json"
part train_stack "${LIMITS[1]}" python experiments/bench_train_stack.py $TRAIN --out "$OUT/train_stack.json"
part uap "${LIMITS[2]}" python experiments/bench_uap.py $UAP --out "$OUT/uap.json"
part cifar_zoo "${LIMITS[3]}" python -m uap_jax.main $ZOO --stages=victim,zoo \
  --workdir="$OUT/zoo_run" --overwrite
part conv_forms "${LIMITS[4]}" python experiments/bench_conv_forms.py $CONV --out "$OUT/conv_forms.json"

python - "$OUT" "$start" <<'EOF'
import json, os, sys, time
out, start = sys.argv[1], float(sys.argv[2])
result = {"seconds": time.time() - start}
for name in ("model_axis", "train_stack", "uap", "cifar_zoo", "conv_forms"):
  part = json.load(open(os.path.join(out, f"{name}.status.json")))
  path = os.path.join(out, f"{name}.json")
  if os.path.exists(path):
    part["result"] = json.load(open(path))
  result[name] = part
zoo = os.path.join(out, "zoo_run", "zoo.json")
if os.path.exists(zoo):
  z = json.load(open(zoo))
  result["cifar_zoo"]["zoo"] = {"models": len(z["models"]),
                                "seconds_per_kind": z["seconds_per_kind"],
                                "per_kind": z["per_kind"]}
victim = os.path.join(out, "zoo_run", "victim.json")
if os.path.exists(victim):
  result["cifar_zoo"]["victim"] = json.load(open(victim))
try:
  import jax
  result["devices"] = [str(d) for d in jax.devices()]
except Exception as e:  # the check still reports what it has
  result["devices"] = f"unknown ({e})"
path = os.path.join(out, "device_check.json")
json.dump(result, open(path, "w"), indent=1)
print(f"wrote {path} ({result['seconds']:.0f} s in all)")
EOF
