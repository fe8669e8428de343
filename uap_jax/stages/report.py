"""Stage `report`: results.json, report.md and plots in ``WORKDIR/report/``.

results.json schema (keys; see README "Report format"):
  dataset, victim (victim.json), uap (uap.json without per-pass history),
  suspects: one row per evaluated suspect of the random split with name,
    kind, family, arch, test_accuracy, agreement, similarity_mean, p_value,
    confidence, verdict, views_for_9999,
  auc: per piracy kind and "all"; tpr_at_1pct_fpr; tpr_at_5pct_fpr;
  accused_independents, num_independents, test, alpha, num_views,
  leave_kind_out: per held-out kind its AUC, TPR and verdicts,
  references: encoder-free scores on the same suspects (raw_cosine,
    raw_cosine_clean_only, sac_m: SAC-m-style sample correlation),
  seconds: per stage.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from uap_jax.verify import metrics
from uap_jax import config as config_lib
from uap_jax import verify
from uap_jax.runtime.context import RunContext

# Scores in auc_per_kind.png (report.md tabulates every reference).
PLOTTED_SCORES = ("encoder", "raw_cosine", "raw_cosine_clean_only", "sac_m")
SUSPECT_FIELDS = ("name", "kind", "family", "arch", "test_accuracy", "agreement",
                  "similarity_mean", "p_value", "confidence", "verdict", "views_for_9999")


HEADLINE_FIELDS = ("auc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "accused_independents",
                   "num_independents", "detected_piracy", "num_piracy", "alpha",
                   "num_views")


def headline(evaluation: dict) -> dict:
  """The summary figures of one :func:`uap_jax.verify.evaluate` result.

  Args:
    evaluation: e.g. ``verify.json["protocols"]["random"]``.

  Returns:
    AUC per kind, TPR at 1 % / 5 % FPR, verdict counts, test, alpha, views.
  """
  return dict({k: evaluation[k] for k in HEADLINE_FIELDS}, test=evaluation["method"])


def build_results(ctx: RunContext) -> dict:
  art = ctx.artifacts
  ver = art.verification()
  rnd = ver["protocols"]["random"]
  uap = {k: v for k, v in art.uap_summary().items() if k != "uaps"}
  suspects = []
  for row in rnd["suspects"]:
    row = dict(row, views_for_9999=row.get("views_for_target"))
    suspects.append({k: row.get(k) for k in SUSPECT_FIELDS})
  return {
      "dataset": ctx.cfg.dataset,
      "victim": art.victim_summary(),
      "uap": uap,
      "suspects": suspects,
      **headline(rnd),
      "victim_self": ver["victim_self"],
      "leave_kind_out": ver["protocols"]["leave_kind_out"],
      "other_tests": ver["other_tests"],
      "references": ver["references"],
      "seconds": ctx.workdir.stage_seconds(config_lib.STAGES),
  }


def _fmt(v, digits=3):
  if v is None:
    return "–"
  if isinstance(v, float):
    return f"{v:.{digits}g}" if (abs(v) < 1e-3 and v != 0) else f"{v:.{digits}f}"
  return str(v)


def _table(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
  return "\n".join(lines)


def auc_columns(res: dict) -> dict[str, dict]:
  """AUC per kind of every score: the encoder (the paper's recipe) and the references."""
  return {"encoder": res["auc"], **{name: r["auc"] for name, r in res["references"].items()}}


def _auc_table(res: dict) -> str:
  cols = auc_columns(res)
  kinds = [k for k in res["auc"] if k != "all"] + ["all"]
  return _table(["kind", *cols], [[k, *[c.get(k) for c in cols.values()]] for k in kinds])


def markdown(res: dict) -> str:
  v, u = res["victim"], res["uap"]
  out = [f"# uap-jax report: {res['dataset']}", "",
         f"Victim: {v['arch']} (width {v['width']}), test accuracy {v['test_accuracy']:.4f}, "
         f"{v['parameters']} parameters, trained in {v['train_seconds']:.0f} s.", "",
         (f"UAP: {u['algorithm']}, p = {u['p']}, xi = {u['xi']}; fooling rate on the victim "
          f"{_fmt(u['fooling_rate_train'])} (train) / {_fmt(u['fooling_rate_test'])} (test)."
          if u.get("num_uaps", 1) else "No UAP (--num_uaps=0): fingerprints of clean outputs only."), "",
         f"Test: {res['test']}, alpha = {res['alpha']}, {res['num_views']} views per suspect. "
         f"Independents accused: {res['accused_independents']} of {res['num_independents']}; "
         f"piracy detected: {res['detected_piracy']} of {res['num_piracy']}.", "",
         "## Detection (random split of models)", "",
         _table(["kind", "AUC"], [[k, a] for k, a in res["auc"].items()]), "",
         f"TPR at 1 % FPR: {_fmt(res['tpr_at_1pct_fpr'])}; at 5 % FPR: "
         f"{_fmt(res['tpr_at_5pct_fpr'])}.", "",
         "## Leave-kind-out (encoder and calibration never saw the kind)", "",
         _table(["held-out kind", "family", "AUC", "TPR@1%FPR", "pirated", "inconclusive",
                 "not pirated"],
                [[k, f["family"], f["auc_held_out"], f["tpr_at_1pct_fpr"],
                  f["held_out_verdicts"]["pirated"], f["held_out_verdicts"]["inconclusive"],
                  f["held_out_verdicts"]["not_pirated"]]
                 for k, f in res["leave_kind_out"].items() if "error" not in f]), "",
         "## References on the same suspects (no encoder)", "",
         _table(["score", "AUC all", "TPR@1%FPR", "independents accused"],
                [[name, r["auc"].get("all"), r["tpr_at_1pct_fpr"],
                  f"{r['accused_independents']}/{r['num_independents']}"]
                 for name, r in res["references"].items()]), "",
         "AUC per piracy kind, the same suspects and calibration models for every score "
         "(sac_m: one score per model, accused by a model-level prediction test at alpha):", "",
         _auc_table(res), "",
         "## Other tests on the same similarities", "",
         _table(["test", "AUC all", "independents accused", "piracy detected"],
                [[name, r["auc"].get("all"), f"{r['accused_independents']}/{r['num_independents']}",
                  f"{r['detected_piracy']}/{r['num_piracy']}"] if "error" not in r
                 else [name, "–", r["error"], "–"]
                 for name, r in res["other_tests"].items()]), "",
         "## Suspects", "",
         _table(list(SUSPECT_FIELDS), [[s[k] for k in SUSPECT_FIELDS] for s in res["suspects"]]),
         "", "## Seconds per stage", "",
         _table(["stage", "seconds"], [[k, s] for k, s in res["seconds"].items()]), ""]
  return "\n".join(out)


def auc_bars(ax, scores: dict[str, dict], kinds: list[str]) -> None:
  """Grouped bars of ROC-AUC: one group per kind, one bar per score.

  Args:
    ax: a matplotlib Axes.
    scores: ``{score name: {kind: AUC or None}}``, in legend order.
    kinds: the kinds (x groups), in order.
  """
  width = 0.8 / max(len(scores), 1)
  for j, (name, auc) in enumerate(scores.items()):
    vals = [np.nan if auc.get(k) is None else auc[k] for k in kinds]
    ax.bar(np.arange(len(kinds)) + (j - (len(scores) - 1) / 2) * width, vals, width,
           label=name)
  ax.set_xticks(range(len(kinds)), kinds, rotation=35, ha="right", fontsize=8)
  ax.set(ylim=(0, 1.02), ylabel="ROC-AUC (piracy kind vs independents)")
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def plots(ctx: RunContext, res: dict) -> list[str]:
  """roc.png, similarity.png, auc_per_kind.png, confidence_vs_views.png."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = res["suspects"]
  score = np.array([r["similarity_mean"] for r in rows])
  fam = np.array([r["family"] for r in rows])
  kinds = np.array([r["kind"] for r in rows])
  neg = fam == "independent"
  written = []

  fig, ax = plt.subplots(figsize=(5.5, 5))
  for kind in sorted(set(kinds[fam == "piracy"])):
    pos = kinds == kind
    keep = pos | neg
    if neg.any():
      fpr, tpr, _ = metrics.roc_curve(score[keep], pos[keep].astype(int))
      ax.plot(fpr, tpr, label=f"{kind} (AUC {res['auc'].get(kind, float('nan')):.2f})")
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax.set(xlabel="false positive rate (independents)", ylabel="true positive rate",
         title="ROC per piracy kind")
  ax.legend(fontsize=7)
  fig.tight_layout()
  written.append(ctx.workdir.save_figure("report/roc.png", fig, dpi=120))
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(8, 4.5))
  order = sorted(set(kinds), key=lambda k: (fam[kinds == k][0] != "piracy", k))
  for i, kind in enumerate(order):
    vals = score[kinds == kind]
    colour = "tab:red" if fam[kinds == kind][0] == "piracy" else "tab:blue"
    ax.scatter(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, c=colour, s=18)
  accused = score[[r["verdict"] == "pirated" for r in rows]]
  cleared = score[[r["verdict"] != "pirated" for r in rows]]
  if len(accused) and len(cleared):
    ax.axhline((accused.min() + cleared[cleared < accused.min()].max()) / 2
               if (cleared < accused.min()).any() else accused.min(), color="k", ls="--",
               lw=1, label="decision boundary (observed)")
  ax.axhline(res["victim_self"]["reference_mean"], color="tab:blue", ls=":", lw=1,
             label="calibration independents (mean)")
  ax.set_xticks(range(len(order)), order, rotation=35, ha="right", fontsize=8)
  ax.set(ylabel="mean similarity to the victim", title="Similarity per suspect kind "
         "(red: piracy, blue: independent)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  written.append(ctx.workdir.save_figure("report/similarity.png", fig, dpi=120))
  plt.close(fig)

  # AUC per kind: the paper's recipe against the encoder-free references.
  cols = {k: a for k, a in auc_columns(res).items() if k in PLOTTED_SCORES}
  kinds_auc = [k for k in res["auc"] if k != "all"] + ["all"]
  fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(kinds_auc) + 3.5), 4.5))
  auc_bars(ax, cols, kinds_auc)
  ax.axhline(0.5, color="k", lw=0.8, ls=":")
  ax.set(title="AUC per piracy kind: encoder (paper) vs references")
  fig.tight_layout()
  written.append(ctx.workdir.save_figure("report/auc_per_kind.png", fig, dpi=120))
  plt.close(fig)

  # Confidence as views accumulate, one suspect per kind, from the
  # similarities the verify stage computed.
  sims = ctx.artifacts.similarities()
  reference = sims[ctx.artifacts.split()["calib"]]
  index = {m["name"]: i for i, m in enumerate(ctx.artifacts.fingerprints.models)}
  fig, ax = plt.subplots(figsize=(6, 4.5))
  seen = set()
  for r in rows:
    if r["kind"] in seen:
      continue
    seen.add(r["kind"])
    s = sims[index[r["name"]]]
    ns = np.arange(2, len(s) + 1)
    conf = [1 - verify.p_value(s[:n], reference, res["test"]) for n in ns]
    ax.plot(ns, np.clip(1 - np.asarray(conf), 1e-12, 1), label=r["kind"],
            ls="-" if r["family"] == "piracy" else "--")
  ax.axhline(1e-4, color="k", lw=0.8, ls=":", label="99.99 % confidence")
  ax.set_yscale("log")
  ax.set(xlabel="views n", ylabel="1 - confidence (p-value)",
         title=f"Confidence vs views ({res['test']} test)")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  written.append(ctx.workdir.save_figure("report/confidence_vs_views.png", fig, dpi=120))
  plt.close(fig)
  return written


def run(ctx: RunContext) -> dict:
  res = build_results(ctx)
  # The report's own time is not known until it is written; it is in stages/.
  ctx.workdir.write_json("report/results.json", res)
  ctx.workdir.write_text("report/report.md", markdown(res))
  files = plots(ctx, res)
  logging.info("Report: %s", ctx.workdir.path("report"))
  logging.info("\n%s", markdown(res).split("## Suspects")[0])
  return {"files": ["results.json", "report.md"] + [f.rsplit("/", 1)[-1] for f in files]}
