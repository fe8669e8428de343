"""Benchmark: training K models as one stack against K separate trainings.

For each architecture, K models train for the same number of steps on the
same synthetic images (random pixels, random labels: speed does not depend on
the values) with ``uap_jax.train.train_stack``:

* ``stack/<strategy>``: one ``train_stack`` call on a K-model stack with the
  model-axis strategy vmap, map, loop (and shard with several devices);
  ``stack/auto=<s>`` is what ``engine.resolve('auto')``
  picks (the row repeats that strategy's measurement when it is listed);
  ``<strategy>+donate`` lets each step overwrite the old state's buffers
  (``TrainConfig.donate``);
* ``separate``: K calls of ``train_stack`` on one-model stacks, one after
  another (what K independent jobs would cost, compiles included).

Every variant runs in its own child process, so that its peak memory (the
child's ``ru_maxrss``, minus a child that builds the same stack and data but
does not train) is its own. Reported: the seconds of a first one-step run
(tracing + compilation), the seconds of a warm run of all steps (compiled
programs cached), the fixed per-call seconds and the milliseconds per step
for all K models (from the difference between a warm one-step run and the
warm full run), the arithmetic rate (XLA's FLOPs of a forward and backward
pass, see ``step_flops``) as GFLOP/s and as a share of the matmul floor
measured in the same run, the speed-up of the warm run against
``separate``, and peak memory.

Usage (CPU defaults stay under ~3 minutes on 2 cores):

  python experiments/bench_train_stack.py --out runs/bench_train_stack.json
  # Larger, e.g. on a GPU:
  python experiments/bench_train_stack.py --archs small_cnn,resnet20 --k 32 \
      --steps 200 --image 32,32,3 --batch 128 --timeout_s 1800
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

import bench_common  # experiments/bench_common.py, beside this script
import numpy as np


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--archs", default="mlp,lenet5",
                 help="Architectures, e.g. add small_cnn or resnet20 (BatchNorm).")
  p.add_argument("--k", type=int, default=4, help="Models per stack.")
  p.add_argument("--steps", type=int, default=20, help="Training steps per model.")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--image", default="32,32,3", help="H,W,C.")
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--variants", default="vmap,map,loop,separate,auto,vmap+donate,loop+donate",
                 help="Stack strategies (auto = the training default), each may "
                 "take '+donate' (buffer donation), and 'separate'.")
  p.add_argument("--timeout_s", type=float, default=120.0,
                 help="Per child process; a slower variant is reported as a timeout.")
  p.add_argument("--out", default="")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def run_child(spec: dict) -> dict:
  """Trains as ``spec`` says, in this process; returns timings and memory."""
  import jax  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime import engine  # pylint: disable=g-import-not-at-top
  from uap_jax import train
  from uap_jax.runtime import stack as stack_lib  # pylint: disable=g-import-not-at-top

  h, w, c = spec["image"]
  k, steps, batch = spec["k"], spec["steps"], spec["batch"]
  rng = np.random.default_rng(0)
  x_pool = rng.integers(0, 256, (k * steps * batch, h, w, c), dtype=np.uint8)
  y_pool = rng.integers(0, 10, len(x_pool)).astype(np.int32)
  # Each model owns `steps` batches, so that one epoch is `steps` steps.
  parts = [np.arange(i * steps * batch, (i + 1) * steps * batch) for i in range(k)]
  make = lambda seeds: stack_lib.create(spec["arch"], seeds, num_classes=10,
                                        image_shape=(h, w, c), width=spec["width"])
  variant = spec["variant"]
  out = {"backend": jax.default_backend()}
  if variant == "baseline":
    make(list(range(k)))
  else:
    def train_all(epochs):
      cfg = train.TrainConfig(epochs=epochs, batch_size=batch, lr=0.05,
                              log_every=10 ** 9)
      if variant == "separate":
        for i in range(k):
          train.train_stack(make([i]), x_pool, [parts[i]], cfg,
                            labels=[y_pool[parts[i]]], strategy="loop")
      else:
        name, _, option = variant.partition("+")
        strategy = engine.resolve("auto") if name == "auto" else name
        out["strategy"] = strategy
        cfg = dataclasses.replace(cfg, donate=option == "donate")
        trained, _ = train.train_stack(make(list(range(k))), x_pool, parts, cfg,
                                       labels=[y_pool[p] for p in parts],
                                       strategy=strategy)
        jax.tree.map(lambda a: a.block_until_ready(), trained.params)
    # A one-step run first: it pays tracing and compilation (XLA caches the
    # executables by program, so later runs and every further one-model
    # training of 'separate' reuse them). Then a warm one-step run and a warm
    # run of all steps: their difference is the per-step cost without the
    # fixed per-call cost (tracing, lowering, optimizer set-up).
    timings = []
    for epochs in (1.0 / steps, 1.0 / steps, 1.0):
      start = time.perf_counter()
      train_all(epochs)
      timings.append(time.perf_counter() - start)
    cold, warm_one, warm = timings
    per_step = max(warm - warm_one, 0.0) / max(steps - 1, 1)
    out.update(seconds=warm, cold_one_step_seconds=cold,
               fixed_seconds=max(warm_one - per_step, 0.0),
               ms_per_step=1e3 * per_step)
  out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return out


def step_flops(arch: str, width: float, image: list[int], batch: int) -> float:
  """XLA's FLOP count of one model's forward and backward pass on a batch.

  The loss's gradient with respect to the parameters, in inference mode: a
  training step's arithmetic without the optimizer update and BatchNorm's
  statistics, both small beside the convolutions.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime import stack as stack_lib  # pylint: disable=g-import-not-at-top

  stack = stack_lib.create(arch, [0], num_classes=10, image_shape=tuple(image),
                           width=width)
  params, rest = jax.tree.map(lambda a: a[0], (stack.params, stack.rest))

  def loss(params, x, y):
    logits = stack.logits_fn((params, rest), x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  shapes = (jax.ShapeDtypeStruct((batch, *image), jnp.float32),
            jax.ShapeDtypeStruct((batch,), jnp.int32))
  compiled = jax.jit(jax.grad(loss)).lower(params, *shapes).compile()
  return float(compiled.cost_analysis().get("flops", float("nan")))


def spawn(spec: dict, timeout_s: float) -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
       env.get("PYTHONPATH", "")])
  try:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                           json.dumps(spec)], env=env, capture_output=True,
                          text=True, timeout=timeout_s, check=False)
  except subprocess.TimeoutExpired:
    return {"error": f"timeout after {timeout_s:.0f}s"}
  if proc.returncode:
    return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  args = parse_args(argv)
  if args.child:
    print(json.dumps(run_child(json.loads(args.child))))
    return None
  image = [int(s) for s in args.image.split(",")]
  import jax  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime import engine  # pylint: disable=g-import-not-at-top
  auto = engine.resolve("auto")
  variants = args.variants.split(",")
  # What every version of the JSON says, partial or complete.
  header = dict(benchmark="train_stack", backend=jax.default_backend(), auto=auto,
                machine=bench_common.machine(), k=args.k, steps=args.steps,
                batch=args.batch, image=image, width=args.width,
                command=bench_common.command())
  rows = []
  for arch in args.archs.split(","):
    base = dict(arch=arch, k=args.k, steps=args.steps, batch=args.batch,
                image=image, width=args.width)
    baseline = spawn(dict(base, variant="baseline"), args.timeout_s)
    measured = {}
    for variant in variants:
      if variant == "auto" and auto in variants:
        # 'auto' is that strategy: reuse its measurement, labelled as such.
        r = dict(measured.get(auto) or spawn(dict(base, variant=auto), args.timeout_s))
      else:
        r = spawn(dict(base, variant=variant), args.timeout_s)
      measured[variant] = r
      name = (f"stack/auto={auto}" if variant == "auto"
              else variant if variant == "separate" else f"stack/{variant}")
      row = dict(arch=arch, variant=name, **{k: v for k, v in r.items()
                                               if k != "strategy"})
      if "max_rss_mb" in r and "max_rss_mb" in baseline:
        row["peak_mb_over_baseline"] = r["max_rss_mb"] - baseline["max_rss_mb"]
      rows.append(row)
      print(f"  {arch} {name}: {r}", flush=True)
      if args.out:
        # Rows so far, so that a run stopped by a time limit (device_check.sh)
        # keeps what it measured; the rates against the floor come at the end.
        bench_common.write_json(args.out, dict(header, rows=rows, complete=False))
  # Arithmetic rate of each variant against the matmul floor of this device.
  floor = bench_common.matmul_gflops(1024 if jax.default_backend() == "cpu"
                                     else 8192)
  flops = {arch: step_flops(arch, args.width, image, args.batch)
           for arch in args.archs.split(",")}
  for r in rows:
    if r.get("ms_per_step"):
      r["gflops"] = flops[r["arch"]] * args.k / (r["ms_per_step"] / 1e3) / 1e9
      r["floor_fraction"] = r["gflops"] / floor
  sep = {r["arch"]: r.get("seconds") for r in rows if r["variant"] == "separate"}
  print(f"\nK={args.k} models x {args.steps} steps, batch {args.batch}, "
        f"images {'x'.join(map(str, image))}, width {args.width}")
  print(f"{'arch':10s} {'variant':18s} {'compile s':>9s} {'train s':>8s} "
        f"{'fixed s':>8s} {'ms/step':>8s} {'GFLOP/s':>8s} {'% mm':>5s} {'vs sep':>7s} "
        f"{'peak MB':>8s} {'(+base)':>8s}")
  for r in rows:
    if "error" in r:
      print(f"{r['arch']:10s} {r['variant']:18s} {r['error']}")
      continue
    s = sep.get(r["arch"])
    print(f"{r['arch']:10s} {r['variant']:18s} {r['cold_one_step_seconds']:9.2f} "
          f"{r['seconds']:8.2f} {r['fixed_seconds']:8.2f} {r['ms_per_step']:8.1f} "
          f"{r.get('gflops', float('nan')):8.1f} "
          f"{100 * r.get('floor_fraction', float('nan')):5.1f} "
          f"{(s / r['seconds']) if s else float('nan'):6.2f}x "
          f"{r['max_rss_mb']:8.0f} {r.get('peak_mb_over_baseline', float('nan')):8.0f}")
  result = dict(header, rows=rows, matmul_gflops=floor, step_flops_per_model=flops,
                complete=True)
  if args.out:
    bench_common.write_json(args.out, result)
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
