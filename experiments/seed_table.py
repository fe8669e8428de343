r"""Headline figures over several runs (run seeds) of one setting: mean and range.

    python experiments/seed_table.py runs/quickstart_seed0 runs/quickstart_seed1 \
        runs/quickstart_seed2 --name=quickstart --out=experiments/results/seeds_quickstart

Per run, from its verify.json: piracy detected and independents accused on
the random split; every held-out independent of every protocol and how many
were accused (``false_accusations``); the weakest piracy kind's AUC; the
victim judged as its own suspect (the most the run can accuse); the same
counts for the label judge (``labels``, where the run has one); the
stages' wall time. Then one row of the sums (held-out independents over all
runs, with the Clopper-Pearson 95 % upper bound) and the mean and range of
the rest. Writes OUT.md and OUT.json (default: print only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uap_jax.runtime.workdir import Workdir  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.verify import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position


def run_row(path: str) -> dict:
  """The figures of one finished run directory."""
  wd = Workdir(path, writer=False)
  v = wd.read_json("verify.json")
  r = v["protocols"]["random"]
  fa = v["false_accusations"]
  kinds = {k: a for k, a in r["auc"].items() if k != "all"}
  config = wd.read_json("config.json")
  on_labels = v.get("labels")
  return {
      "run": os.path.basename(os.path.normpath(path)), "seed": config.get("seed"),
      "test": r["method"], "score": v.get("score"),
      "detected": r["detected_piracy"], "num_piracy": r["num_piracy"],
      "accused": r["accused_independents"], "num_independents": r["num_independents"],
      "held_out": fa["held_out"], "held_out_accused": fa["accused"],
      "auc_all": r["auc"]["all"],
      "auc_vs_reference": (r.get("auc_vs_reference") or {}).get("all"),
      "weakest_kind": min(kinds, key=kinds.get) if kinds else None,
      "auc_weakest": min(kinds.values()) if kinds else None,
      "reference_models": v.get("reference", {}).get("models"),
      "victim_self_p": v["victim_self"]["p_value"],
      "labels_detected": (on_labels["protocols"]["random"]["detected_piracy"]
                          if on_labels else None),
      "labels_held_out_accused": (on_labels["false_accusations"]["accused"]
                                  if on_labels else None),
      "wall_seconds": float(sum(wd.stage_seconds(
          ["victim", "zoo", "reference", "uap", "fingerprint", "encoder", "verify",
           "export_queries", "report"]).values())),
  }


def summarise(rows: list[dict]) -> dict:
  """Sums of counts and mean / range of the rates over the runs."""
  rate = lambda a, b: [x[a] / x[b] for x in rows if x[b]]
  span = lambda xs: {"mean": float(np.mean(xs)), "min": float(np.min(xs)),
                     "max": float(np.max(xs))} if xs else None
  held = sum(x["held_out"] for x in rows)
  accused = sum(x["held_out_accused"] for x in rows)
  judged = [x for x in rows if x.get("labels_detected") is not None]
  return {
      "runs": len(rows),
      "detected": f"{sum(x['detected'] for x in rows)}/{sum(x['num_piracy'] for x in rows)}",
      "detection_rate": span(rate("detected", "num_piracy")),
      "held_out_accused": f"{accused}/{held}",
      "held_out_upper_95": metrics.clopper_pearson_upper(accused, held),
      "auc_all": span([x["auc_all"] for x in rows]),
      "auc_vs_reference": span([x["auc_vs_reference"] for x in rows
                                if x["auc_vs_reference"] is not None]),
      "auc_weakest": span([x["auc_weakest"] for x in rows if x["auc_weakest"] is not None]),
      "wall_seconds": span([x["wall_seconds"] for x in rows]),
      "labels_detected": (f"{sum(x['labels_detected'] for x in judged)}/"
                          f"{sum(x['num_piracy'] for x in judged)}" if judged else None),
      "labels_held_out_accused": (f"{sum(x['labels_held_out_accused'] for x in judged)}/"
                                  f"{sum(x['held_out'] for x in judged)}" if judged else None),
  }


def markdown(name: str, rows: list[dict], total: dict) -> str:
  f = lambda s: "–" if s is None else f"{s['mean']:.3f} ({s['min']:.3f}–{s['max']:.3f})"
  lines = [f"# {name}: {total['runs']} run seeds", "",
           "| run | seed | test / score | piracy detected | eval. indep. accused | "
           "held-out indep. accused | AUC all | AUC vs reference | weakest kind | "
           "reference models | victim itself, p | label judge: detected / held-out "
           "accused | wall s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  num = lambda v: "–" if v is None else f"{v:.3f}"
  judge = lambda x: ("–" if x.get("labels_detected") is None else
                     f"{x['labels_detected']}/{x['num_piracy']} / "
                     f"{x['labels_held_out_accused']}/{x['held_out']}")
  for x in rows:
    lines.append(
        f"| {x['run']} | {x['seed']} | {x['test']} / {x['score']} | "
        f"{x['detected']}/{x['num_piracy']} | {x['accused']}/{x['num_independents']} | "
        f"{x['held_out_accused']}/{x['held_out']} | {x['auc_all']:.3f} | "
        f"{num(x['auc_vs_reference'])} | "
        f"{x['weakest_kind']} {x['auc_weakest']:.3f} | {x['reference_models']} | "
        f"{x['victim_self_p']:.2g} | {judge(x)} | {x['wall_seconds']:.0f} |")
  upper = total["held_out_upper_95"]
  lines += ["", f"All runs: piracy detected {total['detected']} (rate {f(total['detection_rate'])}); "
            f"held-out independents accused {total['held_out_accused']} (95 % upper bound "
            f"{'–' if upper is None else f'{upper:.3f}'}); AUC all {f(total['auc_all'])}; "
            f"AUC against the evaluated independents and every reference model "
            f"{f(total['auc_vs_reference'])}; "
            f"weakest kind AUC {f(total['auc_weakest'])}; wall {f(total['wall_seconds'])} s."
            + (f" The label judge: piracy detected {total['labels_detected']}, held-out "
               f"independents accused {total['labels_held_out_accused']}."
               if total["labels_detected"] else ""), ""]
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("runs", nargs="+", help="finished run directories")
  parser.add_argument("--name", default="runs")
  parser.add_argument("--out", default="", help="write OUT.md and OUT.json")
  args = parser.parse_args(argv)
  rows = [run_row(p) for p in args.runs]
  total = summarise(rows)
  text = markdown(args.name, rows, total)
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".md", "w") as f:
      f.write(text)
    with open(args.out + ".json", "w") as f:
      json.dump({"runs": rows, "total": total}, f, indent=2)


if __name__ == "__main__":
  main()
