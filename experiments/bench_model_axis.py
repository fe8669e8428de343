"""Benchmark: fingerprinting-like inference of N suspects per model-axis strategy.

Every suspect of a stack runs a forward pass (softmax outputs) on the same
fixed batch of ``2 * K * V`` images (the fingerprint queries: K points x V
views, each clean and with the UAP). For each architecture, stack size N and
strategy (vmap, map, loop, shard when there are several devices, and the
default 'auto'), the table gives the time per suspect, the achieved GFLOP/s
(FLOPs from XLA's cost analysis of one model's forward pass, times N) against
the matmul GFLOP/s of the same machine measured in the same run, and XLA's
memory estimate of the compiled program (arguments + outputs + temporaries;
for 'loop' one model's program plus the other models' weights and the stacked
outputs). "1st call s" includes compilation where the program was not
compiled before ('loop' compiles its one-model program once per architecture,
for the FLOP count).

'auto' is the strategy ``engine.resolve('auto')`` picks on this backend; its
row reuses that strategy's measurement.

Usage (CPU defaults keep the run under ~3 minutes on 2 cores; reduced widths
and a per-cell time budget skip the largest N of the slow models, which the
table and JSON record):

  python experiments/bench_model_axis.py --out runs/bench_model_axis.json
  # Larger: the paper's K=V=20 batch, full width, every N:
  python experiments/bench_model_axis.py --points 20 --views 20 \
      --widths mlp:1,small_cnn:1,resnet20:1 --cell_budget_s 600
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import jax
import numpy as np

import bench_common  # experiments/bench_common.py, beside this script
from uap_jax.runtime import engine
from uap_jax.runtime import stack as stack_lib

CPU_WIDTHS = "mlp:1,small_cnn:0.25,resnet20:0.25"
ACCEL_WIDTHS = "mlp:1,small_cnn:1,resnet20:1"


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--archs", default="mlp,small_cnn,resnet20")
  p.add_argument("--sizes", default="1,8,32,128", help="Stack sizes N.")
  p.add_argument("--strategies", default="vmap,map,loop",
                 help="Strategies besides 'auto' (shard is added with >1 device).")
  p.add_argument("--points", type=int, default=None,
                 help="K fingerprint points (default 10 on CPU, 20 elsewhere).")
  p.add_argument("--views", type=int, default=None,
                 help="V views (default 10 on CPU, 20 elsewhere).")
  p.add_argument("--widths", default=None,
                 help=f"arch:width list (default CPU {CPU_WIDTHS}; accelerators {ACCEL_WIDTHS}).")
  p.add_argument("--image", default="32,32,3", help="H,W,C of the images.")
  p.add_argument("--repeats", type=int, default=3,
                 help="Timed calls per cell, round-robin over strategies (best kept).")
  p.add_argument("--cell_budget_s", type=float, default=12.0,
                 help="Skip a cell whose predicted time (from smaller N) exceeds this.")
  p.add_argument("--matmul_n", type=int, default=None,
                 help="Square matmul sizes n and 2n for the peak (default 1024 CPU, 8192 else).")
  p.add_argument("--out", default="", help="Write the results as JSON here.")
  return p.parse_args(argv)


def block(tree):
  return jax.tree.map(lambda a: a.block_until_ready(), tree)


def _timed(call) -> float:
  start = time.perf_counter()
  call()
  return time.perf_counter() - start


def memory_bytes(compiled) -> int | None:
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def bench_arch(arch, width, sizes, strategies, x, repeats, cell_budget_s,
               num_classes=10):
  """Rows of one architecture."""
  one = stack_lib.create(arch, [0], num_classes=num_classes,
                         image_shape=x.shape[1:], width=width)
  logits_fn = one.logits_fn
  per_model = lambda v, images: jax.nn.softmax(logits_fn(v, images))
  v0 = jax.tree.map(lambda a: a[0], one.variables)
  single = jax.jit(per_model).lower(v0, x).compile()
  flops_per_model = float(single.cost_analysis().get("flops", float("nan")))
  single_bytes = memory_bytes(single)
  rows = []
  per_suspect_s = {}  # strategy -> last measured seconds per suspect
  for n in sizes:
    # Suspects share the weights of one model (timing does not depend on
    # values); the stack is still N separate copies in memory.
    variables = engine.take_models(one.variables, np.zeros(n, np.int32))
    cells = {}
    for strategy in strategies:
      row = dict(arch=arch, width=width, n=n, strategy=strategy)
      predicted = per_suspect_s.get(strategy, 0.0) * n * (repeats + 1)
      if predicted > cell_budget_s:
        row.update(skipped=f"predicted {predicted:.0f}s > budget {cell_budget_s:.0f}s")
      else:
        fn = engine.over_models(per_model, strategy)
        row["first_call_s"] = _timed(lambda: block(fn(variables, x)))
        cells[strategy] = (fn, [])
      rows.append(row)
    # Round-robin over strategies, so that a burst of load from elsewhere
    # disturbs all of them alike; the best of the repeats is kept.
    for _ in range(repeats):
      for strategy, (fn, times) in cells.items():
        times.append(_timed(lambda: block(fn(variables, x))))
    for row in rows[-len(strategies):]:
      strategy = row["strategy"]
      if strategy not in cells:
        continue
      fn, times = cells[strategy]
      best = min(times)
      per_suspect_s[strategy] = best / n
      if strategy == "loop":
        mem = single_bytes + n * x.shape[0] * num_classes * 4 + (
            n - 1) * sum(a.nbytes for a in jax.tree.leaves(v0))
      elif strategy in ("vmap", "map"):
        mem = memory_bytes(fn.lower(variables, x).compile())
      else:
        mem = None
      row.update(seconds=best, ms_per_suspect=1e3 * best / n,
                 gflops=flops_per_model * n / best / 1e9,
                 flops_per_suspect=flops_per_model, xla_bytes=mem)
  return rows


def add_auto_rows(rows, auto_strategy):
  out = []
  for row in rows:
    out.append(row)
    if row["strategy"] == auto_strategy:
      out.append(dict(row, strategy=f"auto={auto_strategy}"))
  return out


def print_table(rows, peak):
  print(f"{'arch':10s} {'width':>5s} {'N':>4s} {'strategy':11s} {'ms/suspect':>10s} "
        f"{'vs loop':>7s} {'GFLOP/s':>8s} {'% mm':>5s} {'1st call s':>10s} {'XLA MB':>7s}")
  loop = {(r["arch"], r["n"]): r.get("ms_per_suspect") for r in rows
          if r["strategy"] == "loop"}
  for r in rows:
    if "skipped" in r:
      print(f"{r['arch']:10s} {r['width']:5.2f} {r['n']:4d} {r['strategy']:11s} "
            f"skipped: {r['skipped']}")
      continue
    ref = loop.get((r["arch"], r["n"]))
    speed = f"{ref / r['ms_per_suspect']:6.2f}x" if ref else "     -"
    mem = f"{r['xla_bytes'] / 2**20:7.1f}" if r.get("xla_bytes") else "      -"
    print(f"{r['arch']:10s} {r['width']:5.2f} {r['n']:4d} {r['strategy']:11s} "
          f"{r['ms_per_suspect']:10.2f} {speed:>7s} {r['gflops']:8.1f} "
          f"{100 * r['gflops'] / peak:5.1f} {r['first_call_s']:10.2f} {mem}")


def main(argv):
  args = parse_args(argv)
  backend = jax.default_backend()
  on_cpu = backend == "cpu"
  k = args.points or (10 if on_cpu else 20)
  v = args.views or (10 if on_cpu else 20)
  widths = dict((a, float(w)) for a, w in (
      item.split(":") for item in (args.widths or (CPU_WIDTHS if on_cpu else ACCEL_WIDTHS)).split(",")))
  sizes = [int(s) for s in args.sizes.split(",")]
  strategies = args.strategies.split(",")
  if jax.local_device_count() > 1 and "shard" not in strategies:
    strategies.append("shard")
  auto = engine.resolve("auto", forward_only=True)
  h, w, c = (int(s) for s in args.image.split(","))
  x = jax.random.uniform(jax.random.key(0), (2 * k * v, h, w, c))

  peak = bench_common.matmul_gflops(args.matmul_n or (1024 if on_cpu else 8192))
  print(f"backend {backend}, {jax.local_device_count()} device(s) "
        f"({jax.devices()[0].device_kind}); batch 2*K*V = {x.shape[0]} images "
        f"{h}x{w}x{c}; auto -> {auto}; matmul peak {peak:.1f} GFLOP/s")
  # What every version of the JSON says, partial or complete.
  header = dict(
      benchmark="model_axis_inference", backend=backend,
      device_kind=jax.devices()[0].device_kind,
      devices=jax.local_device_count(), machine=bench_common.machine(),
      batch_images=int(x.shape[0]), image=[h, w, c], points=k, views=v,
      widths=widths, auto=auto, command=bench_common.command())
  rows = []
  for arch in args.archs.split(","):
    rows += add_auto_rows(
        bench_arch(arch, widths.get(arch, 1.0), sizes, strategies, x,
                   args.repeats, args.cell_budget_s), auto)
    if args.out:
      # Architectures so far, so that a run stopped by a time limit
      # (device_check.sh) keeps what it measured.
      bench_common.write_json(args.out, dict(header, matmul_gflops=peak, rows=rows,
                                             complete=False))
  # Matmul peak again at the end: the best of both, so that a disturbed
  # first measurement does not inflate the percentages.
  peak = max(peak, bench_common.matmul_gflops(args.matmul_n or (1024 if on_cpu else 8192)))
  print(f"matmul peak (best of start and end) {peak:.1f} GFLOP/s")
  print_table(rows, peak)
  # The rule the default must satisfy: never slower than the per-model loop.
  verdicts = []
  for r in rows:
    if r["strategy"].startswith("auto=") and "seconds" in r:
      loop = next((q for q in rows if q["arch"] == r["arch"] and q["n"] == r["n"]
                   and q["strategy"] == "loop"), {})
      if "seconds" in loop:
        verdicts.append(r["seconds"] <= loop["seconds"] * 1.10)
  print(f"auto within 10% of loop or faster in {sum(verdicts)}/{len(verdicts)} cells")
  result = dict(
      header, matmul_gflops=peak, rows=rows, complete=True,
      max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
  if args.out:
    bench_common.write_json(args.out, result)
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
