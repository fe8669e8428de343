"""DeepFool-UAP against IBM ART's ``UniversalPerturbation``, side by side.

One LeNet-5 is trained in JAX on the embedded MNIST images, copied weight
for weight into an equivalent PyTorch module (the script checks that the two
give the same logits), and both libraries compute a DeepFool-UAP of it on the
same images with the same settings: L-inf radius ``--xi``, DeepFool
overshoot ``--overshoot`` and at most ``--max_iter`` DeepFool steps per
image. ART runs its sequential algorithm
(``UniversalPerturbation(attacker="deepfool")`` on a ``PyTorchClassifier``,
every class a DeepFool candidate); uap-jax runs each of ``--methods``, written
``METHOD[:BATCH[:CANDIDATES]]`` (candidate classes default to all 10).
Every run does exactly ``--passes``
passes (``delta`` tiny), and each UAP's fooling rate is measured by the same
JAX function on the fitting images and on held-out test images.

Needs the benchmark extra (ART and a CPU torch)::

    pip install torch==2.13.0 && pip install -e '.[bench]'
    python experiments/bench_uap_art.py --out runs/bench_uap_art.json

One pass's fooling rate depends much on the order the images are visited
in, so each uap-jax method runs ``--seeds`` times (ART ``--art_seeds``
times). Prints one row per method with the mean seconds per pass, the mean
fooling rates (and the test range over seeds) and the speed-up over ART per
pass, and writes the rows and the machine to JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import bench_common  # experiments/bench_common.py, beside this script
import bench_uap
from uap_jax import attacks
from uap_jax.attacks import uap_deepfool


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="bench_uap_art.json")
  parser.add_argument("--samples", type=int, default=1000,
                      help="Training images the UAPs are computed on.")
  parser.add_argument("--test_samples", type=int, default=1000)
  parser.add_argument("--train_images", type=int, default=4000)
  parser.add_argument("--epochs", type=float, default=2.0,
                      help="Epochs of Adam for the LeNet-5.")
  parser.add_argument("--xi", type=float, default=0.3)
  parser.add_argument("--overshoot", type=float, default=0.02)
  parser.add_argument("--max_iter", type=int, default=50,
                      help="DeepFool steps per image at most.")
  parser.add_argument("--passes", type=int, default=1)
  parser.add_argument("--methods",
                      default="sequential,minibatch:32,pipelined:32",
                      help="uap-jax runs, METHOD[:BATCH[:CANDIDATES]].")
  parser.add_argument("--no_art", action="store_true",
                      help="Skip ART (e.g. to tune the uap-jax side).")
  parser.add_argument("--art_seconds", type=float, default=None,
                      help="ART's seconds per pass from an earlier run, "
                           "for the ratio with --no_art.")
  parser.add_argument("--seeds", type=int, default=3,
                      help="Runs per uap-jax method (UAP keys 0..N-1): one "
                           "pass's fooling rate varies a lot with the order.")
  parser.add_argument("--art_seeds", type=int, default=1,
                      help="ART runs (Python's random seeds 0..N-1).")
  parser.add_argument("--seed", type=int, default=0, help="The LeNet's seed.")
  args = parser.parse_args()
  if min(args.seeds, args.art_seeds, args.passes) < 1:
    parser.error("--seeds, --art_seeds and --passes must be >= 1.")
  return args


def torch_lenet(variables):
  """The JAX LeNet-5 (28x28x1, width 1) as a PyTorch module, same weights."""
  import torch   # pylint: disable=g-import-not-at-top

  params, _ = variables
  get = lambda name, leaf: np.array(params[name][leaf][...])   # a writable copy

  class LeNet(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = torch.nn.Conv2d(1, 6, 5, padding=2)
      self.conv2 = torch.nn.Conv2d(6, 16, 5)
      self.fc1 = torch.nn.Linear(400, 120)
      self.fc2 = torch.nn.Linear(120, 84)
      self.head = torch.nn.Linear(84, 10)

    def forward(self, x):   # NCHW in [0, 1]
      x = (x - 0.5) / 0.25
      x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
      x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
      # Flatten in the JAX model's (H, W, C) order.
      x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
      x = torch.relu(self.fc1(x))
      x = torch.relu(self.fc2(x))
      return self.head(x)

  model = LeNet()
  with torch.no_grad():
    for name in ("conv1", "conv2"):
      layer = getattr(model, name)
      layer.weight.copy_(torch.from_numpy(get(name, "kernel").transpose(3, 2, 0, 1)))
      layer.bias.copy_(torch.from_numpy(get(name, "bias")))
    for name in ("fc1", "fc2", "head"):
      layer = getattr(model, name)
      layer.weight.copy_(torch.from_numpy(get(name, "kernel").T))
      layer.bias.copy_(torch.from_numpy(get(name, "bias")))
  return model.eval()


def run_art(model, x_fit, args, seed):
  """ART's DeepFool-UAP of ``model``: the perturbation (NHWC) and seconds."""
  import random   # pylint: disable=g-import-not-at-top
  import torch   # pylint: disable=g-import-not-at-top
  try:
    from art.attacks.evasion import UniversalPerturbation  # pylint: disable=g-import-not-at-top
    from art.estimators.classification import PyTorchClassifier  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise SystemExit(
        f"IBM ART is not installed ({error}): pip install -e '.[bench]', or "
        "run with --no_art --art_seconds=S.") from error

  classifier = PyTorchClassifier(
      model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
      nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
  attack = UniversalPerturbation(
      classifier, attacker="deepfool",
      attacker_params=dict(max_iter=args.max_iter, epsilon=args.overshoot,
                           nb_grads=10, verbose=False),
      delta=1e-6, max_iter=args.passes, eps=args.xi, norm=np.inf,
      verbose=False)
  x_nchw = np.ascontiguousarray(np.asarray(x_fit).transpose(0, 3, 1, 2))
  random.seed(seed)   # ART shuffles each pass with Python's random
  start = time.time()
  attack.generate(x_nchw)
  seconds = time.time() - start
  return np.asarray(attack.noise)[0].transpose(1, 2, 0), seconds


def parse_method(text):
  method, *rest = text.split(":")
  batch = int(rest[0]) if rest else 1
  candidates = int(rest[1]) if len(rest) > 1 else 10
  return method, batch, candidates


def main():
  args = parse_args()
  machine = dict(platform=platform.platform(), cpu_count=os.cpu_count(),
                 backend=jax.default_backend(), jax=jax.__version__)
  print(f"machine: {machine}")
  victim = bench_uap.train_victim("mnist5k", args)
  logits_fn, variables = victim["logits_fn"], victim["variables"]
  x_fit, x_test = victim["x_fit"], victim["x_test"]
  print(f"LeNet-5 test accuracy {victim['accuracy']:.3f}")

  rate = lambda v, x: float(attacks.fooling_rate(logits_fn, variables, x,
                                                 jnp.asarray(v)))
  rows = []
  art_seconds = args.art_seconds
  if not args.no_art:
    import torch   # pylint: disable=g-import-not-at-top
    model = torch_lenet(variables)
    with torch.no_grad():
      torch_logits = model(torch.from_numpy(
          np.asarray(x_test).transpose(0, 3, 1, 2).copy())).numpy()
    gap = float(np.max(np.abs(torch_logits - np.asarray(
        logits_fn(variables, x_test)))))
    if gap > 1e-3:
      raise SystemExit(f"The torch copy's logits differ from JAX's by {gap}.")
    print(f"torch copy: largest logit difference {gap:.2e}")
    runs = []
    for seed in range(args.art_seeds):
      v, seconds = run_art(model, x_fit, args, seed)
      runs.append(dict(seconds=seconds, fooling_rate_fit=rate(v, x_fit),
                       fooling_rate_test=rate(v, x_test)))
    rows.append(summarize(runs, args.passes, library="art",
                          method="sequential", batch_size=1,
                          num_candidates=10, compile_seconds=0.0))
    art_seconds = rows[-1]["seconds_per_pass"]
    print_row(rows[-1], art_seconds)

  for text in args.methods.split(","):
    method, batch, candidates = parse_method(text)
    x, scalars, statics = uap_deepfool.uap_args(
        x_fit, "inf", args.xi, 1e-6, args.passes, batch, method, "sum",
        candidates, args.max_iter, args.overshoot, 2, 500)
    runs = bench_uap.time_algorithm(
        uap_deepfool.deepfool_uap_kernel, victim, x, scalars, statics,
        [args.passes], [jax.random.key(seed) for seed in range(args.seeds)])
    rows.append(summarize(runs, args.passes, library="uap_jax", method=method,
                          batch_size=batch, num_candidates=candidates,
                          compile_seconds=runs[0]["compile_seconds"]))
    print_row(rows[-1], art_seconds)

  for row in rows:
    row["speedup_over_art"] = (art_seconds / row["seconds_per_pass"]
                               if art_seconds else None)
  bench_common.write_json(args.out, dict(machine=machine, settings=vars(args),
                                         accuracy=victim["accuracy"],
                                         rows=rows))


def summarize(runs, passes, **fields):
  """One table row from several seeds' runs: mean seconds per pass and the
  mean, least and greatest fooling rates."""
  row = dict(fields, runs=len(runs),
             seconds_per_pass=float(np.mean([r["seconds"] for r in runs]))
             / passes)
  for name in ("fooling_rate_fit", "fooling_rate_test"):
    values = [r[name] for r in runs]
    row.update({name: float(np.mean(values)), name + "_min": min(values),
                name + "_max": max(values)})
  return row


def print_row(row, art_seconds):
  speedup = (f"{art_seconds / row['seconds_per_pass']:8.1f}x"
             if art_seconds else "       -")
  print(f"{row['library']:<8} {row['method']:<11} batch {row['batch_size']:>4} "
        f"cand {row['num_candidates']:>2}  {row['seconds_per_pass']:8.3f} s/pass "
        f"(compile {row['compile_seconds']:5.1f} s)  fooling fit "
        f"{row['fooling_rate_fit']:.3f} test {row['fooling_rate_test']:.3f} "
        f"[{row['fooling_rate_test_min']:.3f}, {row['fooling_rate_test_max']:.3f}]"
        f" over {row['runs']}  {speedup}", flush=True)


if __name__ == "__main__":
  main()
