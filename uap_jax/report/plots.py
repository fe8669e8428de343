"""The report's figures, one function each, from a results dict.

Each returns a :class:`matplotlib.figure.Figure` made without pyplot (no
global figure state, no backend to choose); the caller saves it.
"""

from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure
import numpy as np

from uap_jax.report import tables
from uap_jax.verify import metrics
from uap_jax.verify import tests

# Scores in auc_per_kind.png (report.md tabulates every reference).
PLOTTED_SCORES = ("encoder", "raw_cosine", "raw_cosine_clean_only", "sac_m")


def _suspect_arrays(res: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  rows = res["suspects"]
  return (np.array([r["similarity_mean"] for r in rows]),
          np.array([r["family"] for r in rows]), np.array([r["kind"] for r in rows]))


def roc(res: dict) -> Figure:
  """ROC curve of every piracy kind against the evaluated independents.

  Args:
    res: a results dict (:func:`uap_jax.report.results.build`).

  Returns:
    The figure.
  """
  score, fam, kinds = _suspect_arrays(res)
  neg = fam == "independent"
  fig = Figure(figsize=(5.5, 5))
  ax = fig.subplots()
  for kind in sorted(set(kinds[fam == "piracy"])):
    pos = kinds == kind
    keep = pos | neg
    if neg.any():
      fpr, tpr, _ = metrics.roc_points(score[keep], pos[keep].astype(int))
      ax.plot(fpr, tpr, label=f"{kind} (AUC {res['auc'].get(kind, float('nan')):.2f})")
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax.set(xlabel="false positive rate (independents)", ylabel="true positive rate",
         title="ROC per piracy kind")
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def similarity(res: dict) -> Figure:
  """Mean similarity of every suspect, grouped by kind, with the boundary.

  Args:
    res: a results dict.

  Returns:
    The figure.
  """
  rows = res["suspects"]
  score, fam, kinds = _suspect_arrays(res)
  fig = Figure(figsize=(8, 4.5))
  ax = fig.subplots()
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
  return fig


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


def auc_per_kind(res: dict) -> Figure:
  """AUC per piracy kind: the paper's recipe against encoder-free references.

  Args:
    res: a results dict.

  Returns:
    The figure; its one Axes holds one bar container per plotted score, in
    :data:`PLOTTED_SCORES` order.
  """
  cols = {k: a for k, a in tables.auc_columns(res).items() if k in PLOTTED_SCORES}
  kinds = [k for k in res["auc"] if k != "all"] + ["all"]
  fig = Figure(figsize=(max(7, 0.9 * len(kinds) + 3.5), 4.5))
  ax = fig.subplots()
  auc_bars(ax, cols, kinds)
  ax.axhline(0.5, color="k", lw=0.8, ls=":")
  ax.set(title="AUC per piracy kind: encoder (paper) vs references")
  fig.tight_layout()
  return fig


def confidence_vs_views(res: dict, similarities: np.ndarray, reference: np.ndarray,
                        index: dict[str, int]) -> Figure:
  """p-value as views accumulate, for the first suspect of every kind.

  Args:
    res: a results dict.
    similarities: ``(M, V)`` the similarities the verify stage saved.
    reference: ``(R, V)`` those of the calibration independents.
    index: each model's row in ``similarities``, by name.

  Returns:
    The figure.
  """
  fig = Figure(figsize=(6, 4.5))
  ax = fig.subplots()
  seen = set()
  for r in res["suspects"]:
    if r["kind"] in seen:
      continue
    seen.add(r["kind"])
    s = similarities[index[r["name"]]]
    ns = np.arange(2, len(s) + 1)
    conf = [1 - tests.p_value(s[:n], reference, res["test"]) for n in ns]
    ax.plot(ns, np.clip(1 - np.asarray(conf), 1e-12, 1), label=r["kind"],
            ls="-" if r["family"] == "piracy" else "--")
  ax.axhline(1e-4, color="k", lw=0.8, ls=":", label="99.99 % confidence")
  ax.set_yscale("log")
  ax.set(xlabel="views n", ylabel="1 - confidence (p-value)",
         title=f"Confidence vs views ({res['test']} test)")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  return fig


def figures(res: dict, similarities: np.ndarray, calib: Sequence[int],
            names: Sequence[str]) -> dict[str, Figure]:
  """Every figure of the report, by file stem.

  Args:
    res: a results dict.
    similarities: ``(M, V)`` the similarities the verify stage saved.
    calib: the calibration independents' rows.
    names: per row of ``similarities`` the model's name.

  Returns:
    ``roc``, ``similarity``, ``auc_per_kind``, ``confidence_vs_views``.
  """
  index = {n: i for i, n in enumerate(names)}
  return {"roc": roc(res), "similarity": similarity(res), "auc_per_kind": auc_per_kind(res),
          "confidence_vs_views": confidence_vs_views(res, similarities, similarities[calib],
                                                     index)}
