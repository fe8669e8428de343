r"""distill_removal's trade-off: how hard the pirate repels, what it costs,
what the owner still sees.

For each ``--removal_repel`` weight a copy of the owner's finished run (the
same victim and partition) trains only the ``distill_removal`` kind
(``--stages=victim,zoo``), and the owner's encoder, test and reference bank
judge its copies (``adaptive_table.unaware_owner``: the owner who never
imagined the attack).

    python experiments/removal_sweep.py --owner_workdir=runs/std_fashion \
        --preset=fashion_mnist_fresh --weights=0,0.25,0.5,0.75,1 \
        --workroot=runs/sweep --out=experiments/results/removal_sweep_fashion

Writes OUT.md, OUT.json and OUT.png (AUC and detection against the
pirates' accuracy cost).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _adaptive_table():
  spec = importlib.util.spec_from_file_location("adaptive_table",
                                                os.path.join(HERE, "adaptive_table.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def train_weight(owner: str, workdir: str, preset: str, weight: float) -> None:
  """A copy of the owner's run that trains distill_removal at one weight."""
  if not os.path.isdir(workdir):
    shutil.copytree(owner, workdir, symlinks=True)
  subprocess.run([sys.executable, "-m", "uap_jax.main", f"--preset={preset}",
                  f"--workdir={workdir}", "--zoo_kinds=distill_removal",
                  f"--removal_repel={weight}", "--stages=victim,zoo"], check=True)


def row(owner: str, workdir: str, weight: float, table) -> dict:
  with open(os.path.join(workdir, "victim.json")) as f:
    victim_acc = json.load(f)["test_accuracy"]
  with open(os.path.join(workdir, "zoo.json")) as f:
    models = [m for m in json.load(f)["models"] if m["kind"] == "distill_removal"]
  judged = table.unaware_owner(workdir, owner)["distill_removal"]
  cost = [victim_acc - m["test_accuracy"] for m in models]
  return {"repel": weight, "models": len(models), "accuracy_cost": float(np.mean(cost)),
          "accuracy_cost_max": float(np.max(cost)),
          "agreement": float(np.mean([m["agreement"] for m in models])), **judged}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--owner_workdir", required=True,
                      help="a finished run of the standard kinds: the unaware owner")
  parser.add_argument("--preset", required=True, help="the owner run's preset(s)")
  parser.add_argument("--weights", default="0,0.25,0.5,0.75,1")
  parser.add_argument("--workroot", required=True, help="where the copies go")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  weights = [float(w) for w in args.weights.split(",")]
  if any(not 0.0 <= w <= 1.0 for w in weights):
    raise SystemExit(f"--weights must lie in [0, 1], got {args.weights}.")
  table = _adaptive_table()
  rows = []
  for w in weights:
    workdir = os.path.join(args.workroot, f"repel_{w:g}")
    train_weight(args.owner_workdir, workdir, args.preset, w)
    rows.append(row(args.owner_workdir, workdir, w, table))
    print(json.dumps(rows[-1]), flush=True)
  lines = [f"# distill_removal's trade-off, judged by the owner of {args.owner_workdir}", "",
           "| repel | models | accuracy cost (mean / max, points) | agreement | AUC vs evaluated "
           "independents | AUC vs all untrained independents | detected |",
           "|---" * 7 + "|"]
  lines += [f"| {r['repel']:g} | {r['models']} | {100 * r['accuracy_cost']:.1f} / "
            f"{100 * r['accuracy_cost_max']:.1f} | {r['agreement']:.3f} | {r['auc']:.3f} | "
            f"{r['auc_untrained']:.3f} | {r['detected'][0]}/{r['detected'][1]} |" for r in rows]
  text = "\n".join(lines) + "\n"
  print(text)
  if args.out:
    with open(args.out + ".md", "w") as f:
      f.write(text)
    with open(args.out + ".json", "w") as f:
      json.dump(rows, f, indent=1)
    plot(rows, args.out + ".png")


def plot(rows: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  cost = [100 * r["accuracy_cost"] for r in rows]
  ax.plot(cost, [r["auc"] for r in rows], "-o", label="AUC vs evaluated independents")
  ax.plot(cost, [r["detected"][0] / max(1, r["detected"][1]) for r in rows], "--s",
          label="fraction detected (alpha 1e-4)")
  for c, r in zip(cost, rows):
    ax.annotate(f"{r['repel']:g}", (c, r["auc"]), fontsize=8)
  ax.set_xlabel("pirates' test-accuracy cost (points)")
  ax.set_ylim(-0.05, 1.05)
  ax.set_title("distill_removal: repel weight (labels) against detection")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  main()
