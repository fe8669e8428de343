"""Benchmark: ways to run one convolution layer stack for K models at once.

A 3-layer conv net (3x3 convolutions, ReLU, 2x2 max-pool; channel counts
``--channels``) runs for K models on one batch of images, in six forms: the
model axis as a Python loop over K jitted calls, ``lax.map`` or ``vmap``
(which JAX lowers to ONE grouped convolution, ``feature_group_count = K``),
each with XLA's convolution or with im2col (``conv_general_dilated_patches``
and a matmul, so that ``vmap`` becomes one batched matmul). Reported: the
best of ``--repeats`` warm calls, GFLOP/s, and the fraction of a plain
matmul's GFLOP/s measured in the same run (the floor).

  python experiments/bench_conv_forms.py --out runs/bench_conv_forms.json
"""

from __future__ import annotations

import argparse
import time

import bench_common  # experiments/bench_common.py, beside this script
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--k", type=int, default=8, help="Models.")
  p.add_argument("--batch", type=int, default=100, help="Images per call.")
  p.add_argument("--image", default="32,32,3", help="H,W,C.")
  p.add_argument("--channels", default="16,32,64", help="Output channels per layer.")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--matmul_n", type=int, default=1024)
  p.add_argument("--out", default="")
  return p.parse_args()


def conv_xla(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DIMENSIONS)


def conv_im2col(x, w):
  kh, kw, ci, co = w.shape
  patches = lax.conv_general_dilated_patches(x, (kh, kw), (1, 1), "SAME",
                                             dimension_numbers=DIMENSIONS)
  # The patches' features are ordered (input channel, row, column).
  return patches @ jnp.transpose(w, (2, 0, 1, 3)).reshape(ci * kh * kw, co)


def net(conv):
  def forward(weights, x):
    h = x
    for w in weights:
      h = jax.nn.relu(conv(h, w))
      h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return h.mean((1, 2))
  return forward


def best_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def main():
  args = parse_args()
  h, w, c = (int(v) for v in args.image.split(","))
  outs = [int(v) for v in args.channels.split(",")]
  ins = [c] + outs[:-1]
  rng = np.random.default_rng(0)
  weights = [jnp.asarray(rng.normal(size=(args.k, 3, 3, i, o)).astype(np.float32) * 0.1)
             for i, o in zip(ins, outs)]
  x = jnp.asarray(rng.uniform(size=(args.batch, h, w, c)).astype(np.float32))
  flops, side = 0, h
  for i, o in zip(ins, outs):
    flops += 2 * args.batch * side * (side * w // h) * 9 * i * o
    side //= 2
  flops *= args.k

  a = jnp.ones((args.matmul_n, args.matmul_n), jnp.float32)
  floor = 2 * args.matmul_n ** 3 / best_seconds(jax.jit(lambda a: a @ a), a,
                                                repeats=args.repeats) / 1e9
  rows = []
  for conv_name, conv in (("xla", conv_xla), ("im2col", conv_im2col)):
    one = jax.jit(net(conv))
    forms = {
        "loop": lambda ws, x, one=one: [one([v[i] for v in ws], x) for i in range(args.k)],
        "map": jax.jit(lambda ws, x, conv=conv: lax.map(lambda v: net(conv)(v, x), ws)),
        "vmap": jax.jit(jax.vmap(net(conv), in_axes=(0, None))),
    }
    for form, fn in forms.items():
      seconds = best_seconds(fn, weights, x, repeats=args.repeats)
      gflops = flops / seconds / 1e9
      rows.append({"form": form, "conv": conv_name, "ms": 1e3 * seconds,
                   "gflops": gflops, "floor_fraction": gflops / floor})
  loop_ms = next(r["ms"] for r in rows if r["form"] == "loop" and r["conv"] == "xla")
  print(f"K={args.k} models, batch {args.batch}, {args.image}, channels {args.channels}; "
        f"matmul floor {floor:.0f} GFLOP/s ({jax.default_backend()})")
  print(f"{'form':6s} {'conv':7s} {'ms':>8s} {'GFLOP/s':>8s} {'of floor':>8s} {'vs loop':>8s}")
  for r in rows:
    r["speedup_vs_loop_xla"] = loop_ms / r["ms"]
    print(f"{r['form']:6s} {r['conv']:7s} {r['ms']:8.1f} {r['gflops']:8.1f} "
          f"{100 * r['floor_fraction']:7.1f}% {r['speedup_vs_loop_xla']:7.2f}x")
  if args.out:
    bench_common.write_json(args.out, {
        "machine": bench_common.machine(), "backend": jax.default_backend(),
        "command": bench_common.command(), "matmul_gflops": floor, "rows": rows,
        "settings": vars(args)})


if __name__ == "__main__":
  main()
