r"""The detection protocol's headline figures of finished runs, one row each.

    python experiments/protocol_table.py runs/cifar10_cpu runs/cifar10_cpu_fresh \
        runs/fashion_mnist runs/fashion_mnist_fresh \
        --out=experiments/results/protocol_issue8

Per run (its report/results.json, zoo.json and stage markers): the victim's
accuracy; the suspects evaluated; whether the extracted copies in the
victim's architecture agree with the victim more than same-data independents
do; on the random model split the ROC-AUC over all piracy kinds and of the
weakest kind, TPR at 1 % FPR, independents accused and piracy detected at
the run's alpha with its test and with the model-level test on Fisher z;
median views for 99.99 % confidence; on leave-kind-out the weakest held-out
piracy kind's AUC and how many held-out independents were accused; and the
wall time of all stages. Writes OUT.md and OUT.json (default: print only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uap_jax import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.runtime.workdir import Workdir  # pylint: disable=g-import-not-at-top,wrong-import-position

COLUMNS = (
    ("run", "run"), ("victim acc.", "victim_accuracy"),
    ("evaluated piracy / indep.", "evaluated"),
    ("extraction agreement vs same-data indep.", "faithfulness"),
    ("AUC all", "auc_all"), ("weakest kind AUC", "auc_weakest"),
    ("TPR@1%FPR", "tpr_at_1pct_fpr"), ("test", "test"),
    ("indep. accused", "accused"), ("piracy detected", "detected"),
    ("model_z: accused / detected", "model_z"), ("median views 99.99 %", "median_views"),
    ("LKO weakest piracy AUC", "lko_piracy_min"), ("LKO indep. accused", "lko_accused"),
    ("wall min", "wall_minutes"),
)


def _faithfulness(zoo: dict, victim_arch: str) -> str:
  faith = zoo.get("extraction_faithfulness") or {}
  same = faith.get("same_data_independents", {})
  own = [v["mean"] for k, v in faith.items() if k.endswith(f"__{victim_arch}")]
  if not own or "max" not in same:
    return "–"
  return f"{min(own):.2f}–{max(own):.2f} vs ≤ {same['max']:.2f}"


def run_row(workdir: str) -> dict:
  """The headline figures of one finished run.

  Args:
    workdir: a run's work directory (report stage finished).

  Returns:
    A JSON-able dict keyed as :data:`COLUMNS`.
  """
  path = os.path.join(workdir, "report", "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: finish the run (its report stage) first.")
  with open(path) as f:
    res = json.load(f)
  with open(os.path.join(workdir, "zoo.json")) as f:
    zoo = json.load(f)
  piracy = [s for s in res["suspects"] if s["family"] == "piracy"]
  views = sorted((s["views_for_9999"] for s in piracy),
                 key=lambda v: float("inf") if v is None else v)
  kinds = {k: v for k, v in res["auc"].items() if k != "all"}
  lko = res["leave_kind_out"]
  lko_piracy = [f["auc_held_out"] for f in lko.values() if f.get("family") == "piracy"]
  lko_ind = {k: f for k, f in lko.items() if f.get("family") == "independent"}
  mz = res["other_tests"].get("model_z", {})
  return {
      "run": os.path.basename(os.path.normpath(workdir)),
      "victim_accuracy": round(res["victim"]["test_accuracy"], 3),
      "evaluated": f"{res['num_piracy']} / {res['num_independents']}",
      "faithfulness": _faithfulness(zoo, res["victim"]["arch"]),
      "auc_all": round(res["auc"]["all"], 3),
      "auc_weakest": (f"{min(kinds.values()):.3f} (" + (
          min(kinds, key=kinds.get) if min(kinds.values()) < max(kinds.values())
          else "every kind") + ")"),
      "tpr_at_1pct_fpr": round(res["tpr_at_1pct_fpr"], 3),
      "test": res["test"],
      "accused": f"{res['accused_independents']}/{res['num_independents']}",
      "detected": f"{res['detected_piracy']}/{res['num_piracy']}",
      "model_z": (f"{mz['accused_independents']}/{mz['num_independents']} / "
                  f"{mz['detected_piracy']}/{mz['num_piracy']}") if mz else "–",
      "median_views": views[(len(views) - 1) // 2] if views else None,
      "lko_piracy_min": round(min(lko_piracy), 3) if lko_piracy else None,
      "lko_accused": ", ".join(
          f"{k.removeprefix('independent_')} {f['held_out_verdicts']['pirated']}/"
          f"{sum(f['held_out_verdicts'].values())}" for k, f in sorted(lko_ind.items())),
      "wall_minutes": round(sum(Workdir(workdir).stage_seconds(config_lib.STAGES).values()) / 60, 1),
  }


def markdown(rows: list[dict]) -> str:
  """The rows as one Markdown table, in :data:`COLUMNS` order."""
  def cell(v):
    return "–" if v is None else str(v)
  lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(cell(r[k]) for _, k in COLUMNS) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+", help="Finished run directories.")
  parser.add_argument("--out", help="Output prefix: writes OUT.md and OUT.json.")
  args = parser.parse_args(argv)
  rows = [run_row(w) for w in args.workdirs]
  table = markdown(rows)
  print(table)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".md", "w") as f:
      f.write(table)
    with open(args.out + ".json", "w") as f:
      json.dump({"runs": rows, "workdirs": args.workdirs}, f, indent=2)


if __name__ == "__main__":
  main(sys.argv[1:])
