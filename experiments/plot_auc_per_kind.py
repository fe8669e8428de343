r"""Bar chart of ROC-AUC per piracy kind for chosen rows of ablation tables.

One panel per ablation JSON (as written by ``experiments/ablate.py``), one bar
group per piracy kind plus "all", one bar per row (a recipe or a reference):

  python experiments/plot_auc_per_kind.py \
      --tables=experiments/results/fresh_cifar10_cpu.json,experiments/results/fresh_fashion_mnist.json \
      --titles="CIFAR-10 (fresh zoo),Fashion-MNIST (fresh zoo)" \
      --rows=paper,best,ref:sac_m --out=experiments/results/auc_per_kind.png
"""

from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uap_jax.report import plots as report_plots  # pylint: disable=g-import-not-at-top,wrong-import-position

_TABLES = flags.DEFINE_list("tables", None, "Ablation JSON files, one panel each.")
_TITLES = flags.DEFINE_list("titles", [], "Panel titles (default: the files' names).")
_ROWS = flags.DEFINE_list("rows", ["paper", "ref:sac_m"], "Rows (variant or ref:NAME) to plot.")
_OUT = flags.DEFINE_string("out", None, "Output PNG path.")


def load_rows(path: str, names: list[str]) -> dict[str, dict[str, float]]:
  """``{row: {kind: auc}}`` for the named rows of one ablation JSON.

  Args:
    path: an ablation JSON.
    names: the rows wanted.

  Returns:
    The AUCs of each row, ``all`` included.
  """
  with open(path) as f:
    variants = json.load(f)["variants"]
  missing = [n for n in names if n not in variants or "auc" not in variants[n]]
  if missing:
    raise ValueError(f"{path} has no AUCs for row(s) {missing}; its rows: "
                     f"{', '.join(variants)}. Fix --rows.")
  return {n: variants[n]["auc"] for n in names}


def plot(panels: list[tuple[str, dict[str, dict[str, float]]]], out: str) -> None:
  """Draws one grouped-bar panel per table and saves the figure.

  Args:
    panels: ``(title, {row: {kind: auc}})`` per panel.
    out: PNG path.
  """
  fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)), squeeze=False)
  for ax, (title, rows) in zip(axes[:, 0], panels):
    kinds = sorted({k for r in rows.values() for k in r if k != "all"}) + ["all"]
    # The target line first, so that auc_bars' legend lists it too.
    ax.axhline(0.99, color="k", linestyle=":", linewidth=1, label="target 0.99")
    report_plots.auc_bars(ax, rows, kinds)
    ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  if not _TABLES.value or not _OUT.value:
    raise app.UsageError("--tables and --out are required.")
  titles = _TITLES.value or _TABLES.value
  if len(titles) != len(_TABLES.value):
    raise app.UsageError(f"--titles has {len(titles)} entries for "
                         f"{len(_TABLES.value)} tables.")
  panels = [(t, load_rows(p, _ROWS.value)) for t, p in zip(titles, _TABLES.value)]
  plot(panels, _OUT.value)
  print(f"Wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
