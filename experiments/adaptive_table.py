r"""Pirates who know the method: one row per piracy kind of a finished run.

For a run whose zoo holds the removal kinds (``experiments/adaptive.flags``,
:mod:`uap_jax.zoo.removal`) beside the standard ones, per piracy kind:

* the pirates' test-accuracy cost (the victim's accuracy minus theirs) and
  their top-1 agreement with the victim on the test set;
* uap-jax's default recipe (the run's test and reference population) on the
  random split, where the encoder trained on some models of every kind
  (the owner anticipated the attack): ROC-AUC of the kind against the
  evaluated independents, pirates detected at the run's alpha;
* the same with the kind held out of the encoder's training and of the
  calibration (leave-kind-out: an attack the owner never imagined);
* the paper's recipe (Welch over 20 views, calibrated on the zoo's
  independents only, no reference bank) on the random split;
* SAC-m and IPGuard, the run's baselines, on the same suspects.

The last rows give the independents each recipe accused. A plot shows, per
pirate, its accuracy cost against the default recipe's evidence
(``-log10 p``), with the run's alpha as a line: a strength knob such as
fine_prune's ratio moves a pirate along it.

    python experiments/adaptive_table.py --workdir=runs/adaptive_fashion \
        [--owner_workdir=runs/fashion_mnist_fresh] --out=experiments/results/adaptive_fashion

With ``--owner_workdir`` (a run of the same victim whose zoo held the
standard kinds only: for example a copy of the adaptive run rerun without
``adaptive``, which reuses every saved model), every model of each removal
kind is also judged by that owner's encoder, test and reference: the owner
who never imagined the attack.

Writes OUT.md, OUT.json and OUT.png (default: print only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uap_jax import api  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.config import REMOVAL_KINDS  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.runtime.context import RunContext  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.runtime.workdir import Workdir  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.stages import verify as verify_stage  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.verify import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.verify import protocols  # pylint: disable=g-import-not-at-top,wrong-import-position

# The paper's recipe (experiments/recipe_paper.flags).
PAPER_TEST, PAPER_VIEWS = "welch", 20


def paper_verdicts(ctx) -> dict[str, dict]:
  """The paper's recipe on the random split's evaluated suspects.

  Returns:
    ``{name: verdict dict}``.
  """
  art = ctx.artifacts
  fp, split = art.fingerprints, art.split()
  fps = np.asarray(fp.fps)
  zoo_calib = [i for i in split["calib"] if fp.models[i].get("kind") != "reference"]
  settings = dataclasses.replace(verify_stage._settings(ctx), method=PAPER_TEST,  # pylint: disable=protected-access
                                 num_views=min(PAPER_VIEWS, fps.shape[1]))
  eval_idx = list(split["eval"])
  verdicts = protocols.judge(art.encoder(), fps[eval_idx], fps, fp.models, fp.victim_index,
                             zoo_calib, settings, num_uaps=len(art.uaps),
                             num_classes=ctx.data.num_classes,
                             point_labels=verify_stage.point_labels(ctx))
  return {fp.models[i]["name"]: v for i, v in zip(eval_idx, verdicts)}


def _pirated(rows, kind=None) -> tuple[int, int]:
  chosen = [r for r in rows if kind is None or r["kind"] == kind]
  return sum(r["verdict"] == "pirated" for r in chosen), len(chosen)


def _auc(rows_kind, rows_indep, key, sign=1.0) -> float | None:
  if not rows_kind or not rows_indep:
    return None
  scores = np.array([sign * r[key] for r in rows_kind + rows_indep], float)
  labels = np.array([1] * len(rows_kind) + [0] * len(rows_indep))
  return metrics.roc_auc(scores, labels)


def _broad_aucs(ctx) -> dict:
  """Per piracy kind the AUC of its evaluated models' mean similarity against
  every independent the encoder did not train on (the evaluated and the
  calibration independents and the reference bank): a wider negative set
  than the random split's evaluated independents alone."""
  art = ctx.artifacts
  meta, split = art.fingerprints.models, art.split()
  mean = art.similarities().mean(1)
  trained = set(split["train"])
  negatives = [i for i, m in enumerate(meta) if m["family"] == "independent" and i not in trained]
  kinds = {meta[i]["kind"] for i in split["eval"] if meta[i]["family"] == "piracy"}
  auc = {}
  for kind in kinds:
    pos = [i for i in split["eval"] if meta[i]["kind"] == kind]
    auc[kind] = metrics.roc_auc(mean[pos + negatives],
                                np.array([1] * len(pos) + [0] * len(negatives)))
  return {"auc": auc, "negatives": len(negatives)}


def _zoo_context(workdir: str) -> RunContext:
  """The context of a run that has finished its zoo (later stages need not)."""
  wd = Workdir(workdir)
  if not wd.stage_done("zoo"):
    raise SystemExit(f"{workdir} has not finished its zoo stage.")
  return RunContext(api.saved_config(wd), wd)


def unaware_owner(workdir: str, owner_workdir: str) -> dict[str, dict]:
  """The removal pirates of ``workdir`` judged by an owner who never
  imagined them: the encoder, test and reference of ``owner_workdir``, a
  run of the same victim whose zoo held the standard kinds only.

  Returns:
    Per removal kind ``{"auc", "auc_untrained", "detected"}``.
  """
  from uap_jax import fingerprint as fp_lib  # pylint: disable=g-import-not-at-top
  ctx = _zoo_context(workdir)
  owner = api.Verifier.from_workdir(owner_workdir).ctx
  digest = lambda c: c.workdir.read_json("zoo.json").get("victim_digest")
  if digest(ctx) != digest(owner):
    raise SystemExit(f"{owner_workdir} has another victim than {workdir}: the unaware "
                     "owner must be a run of the same victim (its --stages=victim reused).")
  art = owner.artifacts
  fp, split = art.fingerprints, art.split()
  fps = np.asarray(fp.fps)
  settings = verify_stage._settings(owner)  # pylint: disable=protected-access
  x_points = owner.data.x_train[fp.points]
  mean = art.similarities().mean(1)
  trained = set(split["train"])
  evaluated = [i for i in split["eval"] if fp.models[i]["family"] == "independent"]
  untrained = [i for i, m in enumerate(fp.models)
               if m["family"] == "independent" and i not in trained]
  out = {}
  for stack in ctx.artifacts.zoo:
    kind = stack.meta[0]["kind"]
    if kind not in REMOVAL_KINDS:
      continue
    suspect_fps = np.asarray(fp_lib.fingerprints(stack, x_points, art.uaps, mode=fp.mode))
    verdicts = protocols.judge(art.encoder(), suspect_fps, fps, fp.models, fp.victim_index,
                               split["calib"], settings, num_uaps=len(art.uaps),
                               num_classes=owner.data.num_classes,
                               point_labels=verify_stage.point_labels(owner),
                               label_judge=art.label_judge())
    sims = np.array([v["similarity_mean"] for v in verdicts])
    row = out.setdefault(kind, {"sims": [], "pirated": 0, "models": 0})
    row["sims"] += sims.tolist()
    row["pirated"] += sum(v["verdict"] == "pirated" for v in verdicts)
    row["models"] += len(verdicts)
  for row in out.values():
    pos = np.array(row.pop("sims"))
    for name, neg in (("auc", evaluated), ("auc_untrained", untrained)):
      row[name] = metrics.roc_auc(np.concatenate([pos, mean[neg]]),
                                  np.array([1] * len(pos) + [0] * len(neg)))
    row["detected"] = (row.pop("pirated"), row.pop("models"))
  return out


def build(workdir: str, owner_workdir: str = "") -> dict:
  """Every figure of the table, from one finished run.

  Args:
    workdir: a run's work directory (verify stage finished).

  Returns:
    ``{"rows": [...], "accused": {...}, "points": [...], ...}`` (JSON-able).
  """
  ctx = api.Verifier.from_workdir(workdir).ctx
  wd = ctx.workdir
  victim_acc = wd.read_json("victim.json")["test_accuracy"]
  zoo = {m["name"]: m for m in wd.read_json("zoo.json")["models"]}
  ver = wd.read_json("verify.json")
  random = ver["protocols"]["random"]
  lko = ver["protocols"].get("leave_kind_out", {})
  refs = ver.get("references", {})
  paper = paper_verdicts(ctx)
  broad = _broad_aucs(ctx)
  suspects = random["suspects"]
  paper_rows = [dict(paper[s["name"]], kind=s["kind"], family=s["family"]) for s in suspects]
  indep = [s for s in suspects if s["family"] == "independent"]
  kinds = sorted({m["kind"] for m in zoo.values() if m["family"] == "piracy"},
                 key=lambda k: (k in REMOVAL_KINDS, k))
  unaware = unaware_owner(workdir, owner_workdir) if owner_workdir else {}
  rows = []
  for kind in kinds:
    models = [m for m in zoo.values() if m["kind"] == kind]
    acc = [m["test_accuracy"] for m in models]
    row = {"kind": kind, "removal": kind in REMOVAL_KINDS, "models": len(models),
           "accuracy_cost": float(victim_acc - np.mean(acc)),
           "accuracy_cost_max": float(victim_acc - np.min(acc)),
           "agreement": float(np.mean([m["agreement"] for m in models])),
           "default_auc": random["auc"].get(kind),
           "default_auc_untrained": broad["auc"].get(kind),
           "default_detected": _pirated(suspects, kind),
           "paper_detected": _pirated(paper_rows, kind)}
    fold = lko.get(kind, {})
    if "error" not in fold and fold:
      pirated = fold["held_out_verdicts"]["pirated"]
      row["held_out_auc"] = fold.get("auc_held_out")
      row["held_out_detected"] = (pirated, sum(fold["held_out_verdicts"].values()))
    if kind in unaware:
      row.update({f"unaware_{k}": v for k, v in unaware[kind].items()})
    for name in ("sac_m", "ipguard"):
      if name in refs:
        row[f"{name}_auc"] = refs[name]["auc"].get(kind)
        row[f"{name}_detected"] = _pirated(refs[name]["suspects"], kind)
    rows.append(row)
  accused = {"default (random split)": _pirated(indep),
             "paper recipe": _pirated([r for r in paper_rows if r["family"] == "independent"])}
  for name in ("sac_m", "ipguard"):
    if name in refs:
      accused[name] = _pirated([s for s in refs[name]["suspects"]
                                if s["family"] == "independent"])
  held = [f for f in lko.values() if f.get("family") == "independent" and "error" not in f]
  accused["default (leave-kind-out folds)"] = (
      sum(f["held_out_verdicts"]["pirated"] for f in held),
      sum(sum(f["held_out_verdicts"].values()) for f in held))
  points = [{"name": s["name"], "kind": s["kind"], "p_value": s["p_value"],
             "verdict": s["verdict"],
             "accuracy_cost": float(victim_acc - zoo[s["name"]]["test_accuracy"]),
             "hparams": zoo[s["name"]].get("hparams", {})}
            for s in suspects if s["family"] == "piracy"]
  return {"run": os.path.basename(os.path.normpath(workdir)), "victim_accuracy": victim_acc,
          "owner_run": owner_workdir or None,
          "alpha": random["alpha"], "test": random["method"], "rows": rows,
          "accused": accused, "points": points,
          "independents_evaluated": len(indep),
          "independents_untrained": broad["negatives"]}


def _frac(pair) -> str:
  return "–" if pair is None else f"{pair[0]}/{pair[1]}"


def _num(v) -> str:
  return "–" if v is None else f"{v:.3f}"


def table(result: dict) -> str:
  lines = [f"# Pirates who know the method: {result['run']}", "",
           f"Victim test accuracy {result['victim_accuracy']:.3f}; alpha "
           f"{result['alpha']:g}; default test {result['test']}. Removal kinds "
           "(uap_jax.zoo.removal) in bold. AUC: the kind against the evaluated "
           "independents; detected: pirated verdicts of the kind's evaluated models.", "",
           f"AUC (untrained): against all {result['independents_untrained']} "
           "independents the encoder never trained on (evaluated, calibration, bank); "
           f"default AUC: against the {result['independents_evaluated']} evaluated ones.", "",
           "| kind | models | accuracy cost (mean / max) | agreement | default AUC | "
           "AUC (untrained) | "
           "default detected | held-out AUC | held-out detected | paper detected | "
           "SAC-m AUC | SAC-m detected | IPGuard AUC | IPGuard detected |",
           "|---" * 14 + "|"] + _kind_rows(result)
  unaware = [r for r in result["rows"] if "unaware_detected" in r]
  if unaware:
    lines += ["", f"The owner who never imagined these attacks ({result['owner_run']}: the same "
              "victim, a zoo of the standard kinds only, its encoder, test and reference "
              "bank) judging every model of each removal kind:", "",
              "| kind | models | AUC vs its evaluated independents | AUC vs all its untrained "
              "independents | detected |", "|---" * 5 + "|"]
    lines += [f"| {r['kind']} | {r['unaware_detected'][1]} | {_num(r['unaware_auc'])} | "
              f"{_num(r['unaware_auc_untrained'])} | {_frac(r['unaware_detected'])} |"
              for r in unaware]
  return "\n".join(lines) + "\n"


def _kind_rows(result: dict) -> list[str]:
  lines = []
  for r in result["rows"]:
    kind = f"**{r['kind']}**" if r["removal"] else r["kind"]
    lines.append(
        f"| {kind} | {r['models']} | {r['accuracy_cost']:.3f} / {r['accuracy_cost_max']:.3f} "
        f"| {r['agreement']:.3f} | {_num(r['default_auc'])} "
        f"| {_num(r.get('default_auc_untrained'))} | {_frac(r['default_detected'])} "
        f"| {_num(r.get('held_out_auc'))} | {_frac(r.get('held_out_detected'))} "
        f"| {_frac(r['paper_detected'])} | {_num(r.get('sac_m_auc'))} "
        f"| {_frac(r.get('sac_m_detected'))} | {_num(r.get('ipguard_auc'))} "
        f"| {_frac(r.get('ipguard_detected'))} |")
  return lines + ["", "Independents accused: " + "; ".join(
      f"{k} {_frac(v)}" for k, v in result["accused"].items()) + "."]


def plot(result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  kinds = sorted({p["kind"] for p in result["points"]})
  markers = "os^vD<>phX*P"
  for n, kind in enumerate(kinds):
    pts = [p for p in result["points"] if p["kind"] == kind]
    ax.scatter([100 * p["accuracy_cost"] for p in pts],
               [-np.log10(max(p["p_value"], 1e-300)) for p in pts],
               marker=markers[n % len(markers)], label=kind,
               edgecolors="k" if kind in REMOVAL_KINDS else "none")
  ax.axhline(-np.log10(result["alpha"]), color="k", ls="--", lw=1,
             label=f"alpha = {result['alpha']:g}")
  ax.set_xlabel("pirate's test-accuracy cost (points)")
  ax.set_ylabel("-log10 p (default recipe, random split)")
  ax.set_title(f"Detection against the pirate's cost: {result['run']}")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a finished run")
  parser.add_argument("--owner_workdir", default="",
                      help="a run of the same victim with the standard kinds only: its "
                           "encoder, test and reference judge the removal pirates")
  parser.add_argument("--out", default="", help="write OUT.md, OUT.json, OUT.png")
  args = parser.parse_args(argv)
  result = build(args.workdir, args.owner_workdir)
  text = table(result)
  print(text)
  if args.out:
    with open(args.out + ".md", "w") as f:
      f.write(text)
    with open(args.out + ".json", "w") as f:
      json.dump(result, f, indent=1)
    plot(result, args.out + ".png")


if __name__ == "__main__":
  main()
