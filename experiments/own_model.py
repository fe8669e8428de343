"""Protect your own model: the README's walk-through, as a model owner runs it.

A PyTorch CNN is the owner's model (the victim); pirates fine-tune a copy of
it or extract one through its answers; strangers train unrelated torch
models (the same CNN, the CNN with Adam, an MLP). uap-jax fingerprints the
victim, then judges the five suspects white box (their torch modules) and
black box (their answers to the exported queries, as an API would give
them).

Steps (each a command; ``all`` runs them in order, times them and writes
``experiments/results/own_model.md``; the README's "Protect the model you
already have" gives them as a shell block):

  python experiments/own_model.py train     # the torch models
  uap-jax $RUN                              # fingerprint the victim
  uap-jax $RUN --stages=verify --suspect=py:experiments/own_model.py:finetuned,...
  python experiments/own_model.py answer    # the suspects answer queries.npz
  uap-jax $RUN --stages=verify --suspect=runs/own_model/answers

where RUN is ``--preset=quickstart --workdir=runs/own_model
--victim=py:experiments/own_model.py:victim --reference_models=`` the
owner's four independents (``reference_0`` to ``reference_3``).

The functions ``victim``, the :data:`SUSPECTS` and ``reference_i`` are what
the ``py:`` specs name: each returns a torch ``nn.Module`` with its weights
loaded, mapping float [0, 1] NCHW images to logits (uap-jax hands it NHWC
images and transposes them). Needs ``pip install -e '.[torch]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKDIR = os.environ.get("OWN_MODEL_WORKDIR", os.path.join(REPO, "runs", "own_model"))
MODELS = os.path.join(WORKDIR, "torch_models")
SPEC = "py:" + os.path.relpath(os.path.abspath(__file__), REPO)


def _net():
  import torch  # pylint: disable=g-import-not-at-top
  nn = torch.nn
  return nn.Sequential(
      nn.Conv2d(1, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(16, 32, 5, padding=2), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
      nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))


def _mlp():
  import torch  # pylint: disable=g-import-not-at-top
  nn = torch.nn
  return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 256), nn.ReLU(), nn.Linear(256, 10))


def _load(name: str, net=_net):
  import torch  # pylint: disable=g-import-not-at-top
  path = os.path.join(MODELS, f"{name}.pt")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: run `python experiments/own_model.py "
                            "train` first.")
  model = net()
  model.load_state_dict(torch.load(path, map_location="cpu"))
  return model.eval()


def _saved(name: str, doc: str, net=_net):
  """The ``py:`` spec function of one saved model: it loads ``name``."""
  def load():
    return _load(name, net)
  load.__name__, load.__doc__ = name, doc
  return load


victim = _saved("victim", "The owner's model.")
finetuned = _saved("finetuned", "The pirate's copy: the victim fine-tuned on other images.")
extracted = _saved("extracted", "A pirate's copy made through the API: the architecture "
                   "trained from scratch on the victim's probabilities for other images.")
independent = _saved("independent",
                     "A stranger's model: the same architecture, its own seed and images.")
independent_adam = _saved("independent_adam",
                          "Another stranger's: the same architecture trained with Adam.")
independent_mlp = _saved("independent_mlp", "Another stranger's: a torch MLP.", _mlp)
SUSPECTS = ("finetuned", "extracted", "independent", "independent_adam", "independent_mlp")

# The owner's own independents (--reference_models): the victim's architecture
# and recipe from other seeds, on the owner's own images (an owner has those,
# not a stranger's). A py: spec names one model, hence one function each.
NUM_REFERENCES = 4
reference_0, reference_1, reference_2, reference_3 = (
    _saved(f"reference_{i}", f"The owner's independent number {i}.")
    for i in range(NUM_REFERENCES))


def _images(x):
  import torch  # pylint: disable=g-import-not-at-top
  return torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).astype(np.float32) / 255.0)


def _fit(model, x, y, *, epochs: float, lr: float, seed: int, adam: bool = False):
  """SGD with momentum (or Adam) on labels ``(N,)`` or probabilities ``(N, C)``."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  images = _images(x)
  labels = torch.from_numpy(y.astype(np.int64) if y.ndim == 1 else y.astype(np.float32))
  opt = (torch.optim.Adam(model.parameters(), lr=lr) if adam else
         torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4))
  steps = int(round(epochs * len(images) / 64))
  model.train()
  order = torch.cat([torch.randperm(len(images)) for _ in range(int(np.ceil(epochs)) + 1)])
  for step in range(steps):
    idx = order[step * 64:(step + 1) * 64]
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(images[idx]), labels[idx]).backward()
    opt.step()
  return model.eval()


def _accuracy(model, x, y) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    images = _images(x)
    return float((model(images).argmax(1).numpy() == y).mean())


def train() -> dict:
  """Trains the victim on half of mnist5k's training images, the fine-tuned
  copy from it on the other half, the independent model from scratch on
  that other half, and the owner's reference models like the victim with
  other seeds; saves their state_dicts."""
  import torch  # pylint: disable=g-import-not-at-top
  from uap_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(max(1, os.cpu_count() or 1))
  data = data_lib.load_dataset("mnist5k")
  half = len(data.y_train) // 2
  own = (data.x_train[:half], data.y_train[:half])
  other = (data.x_train[half:], data.y_train[half:])
  os.makedirs(MODELS, exist_ok=True)
  torch.manual_seed(0)
  models = {"victim": _fit(_net(), *own, epochs=8, lr=0.05, seed=0)}
  copy = _net()
  copy.load_state_dict(models["victim"].state_dict())
  models["finetuned"] = _fit(copy, *other, epochs=1, lr=0.01, seed=1)
  torch.manual_seed(2)
  models["independent"] = _fit(_net(), *other, epochs=8, lr=0.05, seed=2)
  torch.manual_seed(3)
  models["independent_adam"] = _fit(_net(), *other, epochs=8, lr=1e-3, seed=3, adam=True)
  torch.manual_seed(4)
  models["independent_mlp"] = _fit(_mlp(), *other, epochs=8, lr=0.05, seed=4)
  with torch.no_grad():
    answers = torch.softmax(models["victim"](_images(other[0])), 1).numpy()
  torch.manual_seed(5)
  models["extracted"] = _fit(_net(), other[0], answers, epochs=8, lr=0.05, seed=5)
  for i in range(NUM_REFERENCES):
    torch.manual_seed(10 + i)
    models[f"reference_{i}"] = _fit(_net(), *own, epochs=8, lr=0.05, seed=10 + i)
  accuracy = {}
  for name, model in models.items():
    torch.save(model.state_dict(), os.path.join(MODELS, f"{name}.pt"))
    accuracy[name] = _accuracy(model, data.x_test, data.y_test)
    print(f"{name}: test accuracy {accuracy[name]:.4f} -> {MODELS}/{name}.pt", flush=True)
  return accuracy


def answer() -> list[str]:
  """Each suspect answers the exported queries with its probabilities, as an
  API would; the answers go to WORKDIR/answers/NAME.npz."""
  import torch  # pylint: disable=g-import-not-at-top
  with np.load(os.path.join(WORKDIR, "queries.npz")) as f:
    queries = f["queries"]
  images = _images(queries)
  out = os.path.join(WORKDIR, "answers")
  os.makedirs(out, exist_ok=True)
  paths = []
  for name in SUSPECTS:
    model = globals()[name]()
    with torch.no_grad():
      probs = torch.softmax(model(images), dim=1).numpy()
    paths.append(os.path.join(out, f"{name}.npz"))
    np.savez(paths[-1], outputs=probs, kind="probs")
    print(f"{name}: {len(probs)} answers -> {paths[-1]}", flush=True)
  return paths


REFERENCE_SPECS = ",".join(f"{SPEC}:reference_{i}" for i in range(NUM_REFERENCES))


def _uap_jax(*flags: str) -> None:
  command = [sys.executable, "-m", "uap_jax.main", "--preset=quickstart",
             f"--workdir={WORKDIR}", f"--victim={SPEC}:victim",
             f"--reference_models={REFERENCE_SPECS}", *flags]
  print("$", " ".join(command[2:]), flush=True)
  subprocess.run(command, cwd=REPO, check=True)


def _verdicts(folder: str) -> list[dict]:
  """Every verdict in the run's verdict files (not their index)."""
  rows = []
  for name in sorted(os.listdir(folder)):
    if name.endswith(".json") and name != "index.json":
      with open(os.path.join(folder, name)) as f:
        rows.extend(json.load(f)["verdicts"])
  return rows


def run_all(out: str) -> None:
  """Every step in order, timed; the verdicts and times go to ``out``."""
  times, rows = {}, []
  start = time.time()
  accuracy = train()
  times["train the torch models (victim, 5 suspects, 4 references)"] = time.time() - start
  start = time.time()
  _uap_jax()
  times["fingerprint the victim (the quickstart around it)"] = time.time() - start
  white = ",".join(f"{SPEC}:{name}" for name in SUSPECTS)
  start = time.time()
  _uap_jax("--stages=verify", f"--suspect={white}")
  times["judge the 5 suspects white box"] = time.time() - start
  rows += [("white box", v) for v in _verdicts(os.path.join(WORKDIR, "verdicts"))
           if v["source"].startswith("py:")]
  start = time.time()
  answer()
  _uap_jax("--stages=verify", f"--suspect={os.path.join(WORKDIR, 'answers')}")
  times["answer the queries and judge the answers"] = time.time() - start
  rows += [("black box", v) for v in _verdicts(os.path.join(WORKDIR, "verdicts"))
           if v["source"].endswith(".npz")]
  lines = [
      "# Protect your own model: the walk-through's verdicts",
      "",
      f"Made by `python experiments/own_model.py all` ({time.strftime('%Y-%m-%d')}, "
      f"{os.cpu_count()} CPUs). Torch test accuracy: " + ", ".join(
          f"{k} {v:.4f}" for k, v in accuracy.items()) + ".",
      "",
      "| suspect | access | verdict | p-value | score (mean) | statement |",
      "|---|---|---|---|---|---|",
  ]
  for access, v in rows:
    p = "-" if v.get("p_value") is None else f"{v['p_value']:.2g}"
    sim = "-" if v.get("similarity_mean") is None else f"{v['similarity_mean']:.3f}"
    lines.append(f"| {v['suspect']} | {access} | {v['verdict']} | {p} | {sim} | "
                 f"{v.get('statement', v.get('reason', ''))} |")
  lines += ["", "| step | seconds |", "|---|---|"]
  lines += [f"| {k} | {s:.0f} |" for k, s in times.items()]
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("step", choices=["train", "answer", "all"])
  parser.add_argument("--out", default=os.path.join(REPO, "experiments", "results",
                                                    "own_model.md"))
  args = parser.parse_args()
  if args.step == "train":
    train()
  elif args.step == "answer":
    answer()
  else:
    run_all(args.out)


if __name__ == "__main__":
  main()
