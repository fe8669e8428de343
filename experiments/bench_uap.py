"""Benchmark of the UAP engine: seconds and fooling rate vs passes and batch.

For each data set a victim is trained briefly (a few epochs of Adam),
then UAPs are computed on ``--samples`` of its training images with:

* DeepFool-UAP, ``sequential`` (Moosavi-Dezfooli et al. 2017, one image at a
  time), and ``minibatch`` (summed DeepFool steps of the unfooled inputs of a
  minibatch, one projection per minibatch) and ``pipelined`` (DeepFool in
  ``batch_size`` slots refilled as each input finishes) for each
  ``--batch_sizes``;
* SGD-UAP (Adam on the clamped margin), batch 32.

Each algorithm is compiled once (``max_passes`` is a traced argument of the
kernels), timed for every ``--passes`` value with ``delta`` tiny so every pass
runs, and its fooling rate is measured on the UAP's data and on the test
split. Compile time is reported apart from run time.

    python experiments/bench_uap.py --out /tmp/bench_uap.json

Prints a table and writes JSON (machine, settings, one row per run).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import bench_common  # experiments/bench_common.py, beside this script
from uap_jax import attacks
from uap_jax.runtime import stack as stack_lib
from uap_jax.attacks import uap_deepfool
from uap_jax.attacks import uap_sgd

DATASETS = {
    # name: (data spec, architecture, width, p, xi)
    "mnist5k": ("mnist5k", "lenet5", 1.0, "inf", 0.3),
    "cifar10_10k": ("npz:/work/shared/data/cifar10_10k.npz", "small_cnn", 0.5,
                    "inf", 10 / 255),
    "digits": ("digits", "mlp", 1.0, "inf", 0.3),
}


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="bench_uap.json", help="JSON output path.")
  parser.add_argument("--datasets", default="mnist5k,cifar10_10k",
                      help=f"Comma-separated, of {', '.join(DATASETS)}.")
  parser.add_argument("--samples", type=int, default=500,
                      help="Training images the UAP is computed on.")
  parser.add_argument("--test_samples", type=int, default=1000)
  parser.add_argument("--train_images", type=int, default=4000,
                      help="Victim training images (brief training).")
  parser.add_argument("--epochs", type=float, default=2.0)
  parser.add_argument("--passes", default="1,3",
                      help="max_passes values timed for each algorithm.")
  parser.add_argument("--batch_sizes", default="8,32",
                      help="Minibatch sizes of DeepFool-UAP.")
  parser.add_argument("--methods", default="minibatch,pipelined",
                      help="Batched DeepFool-UAP methods timed per batch size.")
  parser.add_argument("--no_sequential", action="store_true")
  parser.add_argument("--no_sgd", action="store_true")
  parser.add_argument("--num_candidates", type=int, default=10)
  parser.add_argument("--max_iter", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args()


def train_victim(name, args):
  """Loads a data set and trains a victim briefly; returns what UAPs need.

  A plain Adam loop (own code, so the benchmark depends only on the models,
  the data layer and the attacks).
  """
  from uap_jax import data as data_lib   # pylint: disable=g-import-not-at-top
  spec, arch, width, p, xi = DATASETS[name]
  ds = data_lib.load_dataset(spec, seed=args.seed)
  rng = np.random.default_rng(args.seed)
  train_index = rng.permutation(len(ds.x_train))[:args.train_images]
  victim = stack_lib.create(arch, [args.seed], num_classes=len(ds.class_names),
                            image_shape=ds.x_train.shape[1:], width=width)
  graphdef = victim.graphdef

  def train_fn(params, rest, x):
    # copy=True: flax >= 0.11.2 merges with copy=False by default, and then
    # BatchNorm's statistics update fails under jax.grad (flax issue #5050).
    module = nnx.merge(graphdef, params, rest, copy=True)
    module.train()
    logits = module(x)
    _, _, new_rest = nnx.split(module, nnx.Param, ...)
    return logits, new_rest

  tx = optax.adam(2e-3)
  params = jax.tree.map(lambda a: a[0], victim.params)
  rest = jax.tree.map(lambda a: a[0], victim.rest)

  @jax.jit
  def step(params, rest, opt_state, x, y):
    def loss(params):
      logits, new_rest = train_fn(params, rest, stack_lib.to_float(x))
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, y).mean(), new_rest
    (_, rest), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), rest, opt_state

  start = time.time()
  opt_state = tx.init(params)
  batch = 128
  steps = int(args.epochs * len(train_index) / batch)
  for t in range(steps):
    if t % (len(train_index) // batch) == 0:
      order = rng.permutation(train_index)
    idx = order[(t % (len(train_index) // batch)) * batch:][:batch]
    params, rest, opt_state = step(params, rest, opt_state,
                                   ds.x_train[idx], ds.y_train[idx])
  variables = jax.block_until_ready((params, rest))
  train_seconds = time.time() - start
  x_test = stack_lib.to_float(ds.x_test[:args.test_samples])
  logits_fn = victim.logits_fn
  accuracy = float(jnp.mean(jnp.argmax(logits_fn(variables, x_test), -1)
                            == jnp.asarray(ds.y_test[:args.test_samples])))
  x_fit = stack_lib.to_float(ds.x_train[train_index[:args.samples]])
  return dict(logits_fn=logits_fn, variables=variables, x_fit=x_fit,
              x_test=x_test, p=p, xi=xi, arch=arch, width=width,
              accuracy=accuracy, train_seconds=train_seconds,
              image_shape=list(ds.x_train.shape[1:]))


def time_algorithm(kernel, victim, x, scalars, statics, passes_list, keys):
  """Compiles ``kernel`` once, then runs it for each key and max_passes value.

  Returns one row per key and max_passes value, keys outermost.
  """
  logits_fn, variables = victim["logits_fn"], victim["variables"]
  start = time.time()
  compiled = kernel.lower(logits_fn, variables, keys[0], x, *scalars,
                          **statics).compile()
  compile_seconds = time.time() - start
  rows = []
  for key in keys:
    for passes in passes_list:
      run_scalars = list(scalars)
      # Index of max_passes among the kernels' traced scalars (xi, delta, passes).
      run_scalars[2] = jnp.int32(passes)
      start = time.time()
      result = jax.block_until_ready(compiled(variables, key, x, *run_scalars))
      seconds = time.time() - start
      test_rate = float(attacks.fooling_rate(logits_fn, variables,
                                             victim["x_test"], result.v))
      history = np.asarray(result.history)
      rows.append(dict(
          max_passes=passes, passes=int(result.passes), seconds=seconds,
          compile_seconds=compile_seconds,
          fooling_rate_fit=float(result.fooling_rate),
          fooling_rate_test=test_rate,
          history=[None if np.isnan(h) else round(float(h), 4) for h in history],
          norm=float(attacks.flat_norm(result.v, attacks.check_p(victim["p"])))))
  return rows


def bench_dataset(name, args):
  victim = train_victim(name, args)
  passes_list = [int(s) for s in args.passes.split(",")]
  history_size = max(passes_list)
  key = jax.random.key(args.seed)
  p, xi = victim["p"], victim["xi"]
  # delta tiny: every pass runs, so seconds scale with passes.
  delta = 1e-4
  cases = []
  if not args.no_sequential:
    cases.append(("deepfool_uap", "sequential", 1, "sum"))
  for method in args.methods.split(","):
    for b in [int(s) for s in args.batch_sizes.split(",")]:
      cases.append(("deepfool_uap", method, b, "sum"))
  rows = []
  for algorithm, method, batch_size, aggregate in cases:
    x, scalars, statics = uap_deepfool.uap_args(
        victim["x_fit"], p, xi, delta, history_size, batch_size, method,
        aggregate, args.num_candidates, args.max_iter, 0.02, 2, 500)
    for row in time_algorithm(uap_deepfool.deepfool_uap_kernel, victim, x,
                              scalars, statics, passes_list, [key]):
      rows.append(dict(dataset=name, algorithm=algorithm, method=method,
                       batch_size=batch_size, aggregate=aggregate, **row))
      print_row(rows[-1])
  if not args.no_sgd:
    x, scalars, statics = uap_sgd.sgd_uap_args(
        victim["x_fit"], xi, p, delta, history_size, 32, "margin", None, 0.0,
        None, 500)
    for row in time_algorithm(uap_sgd.sgd_uap_kernel, victim, x, scalars,
                              statics, passes_list, [key]):
      rows.append(dict(dataset=name, algorithm="sgd_uap", method="adam_margin",
                       batch_size=32, aggregate="-", **row))
      print_row(rows[-1])
  info = {k: victim[k] for k in ("arch", "width", "p", "xi", "accuracy",
                                 "train_seconds", "image_shape")}
  info.update(samples=int(victim["x_fit"].shape[0]),
              test_samples=int(victim["x_test"].shape[0]))
  return info, rows


HEADER = (f"{'dataset':<12} {'algorithm':<13} {'method':<11} {'batch':>5} "
          f"{'passes':>6} {'run_s':>7} {'compile_s':>9} {'FR_fit':>6} "
          f"{'FR_test':>7}")


def print_row(r):
  print(f"{r['dataset']:<12} {r['algorithm']:<13} {r['method']:<11} "
        f"{r['batch_size']:>5} {r['passes']:>6} {r['seconds']:>7.2f} "
        f"{r['compile_seconds']:>9.2f} {r['fooling_rate_fit']:>6.3f} "
        f"{r['fooling_rate_test']:>7.3f}", flush=True)


def main():
  args = parse_args()
  machine = dict(platform=platform.platform(), processor=platform.processor(),
                 cpu_count=os.cpu_count(), backend=jax.default_backend(),
                 devices=[str(d) for d in jax.devices()],
                 jax=jax.__version__)
  print(f"machine: {machine}")
  results = {"machine": machine, "settings": vars(args), "datasets": {},
             "rows": []}
  start = time.time()
  print(HEADER)
  for name in args.datasets.split(","):
    info, rows = bench_dataset(name.strip(), args)
    print(f"# {name}: {info}", flush=True)
    results["datasets"][name] = info
    results["rows"].extend(rows)
  results["total_seconds"] = time.time() - start
  print(f"total {results['total_seconds']:.0f} s")
  bench_common.write_json(args.out, results)


if __name__ == "__main__":
  main()
