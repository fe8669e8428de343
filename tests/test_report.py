"""The report library: results.json fields, report.md tables, the figures."""

import numpy as np
import pytest

from uap_jax.report import plots
from uap_jax.report import results
from uap_jax.report import tables
from uap_jax.verify import metrics


def _suspect(name, kind, family, sim, verdict, views=None):
  return {"name": name, "kind": kind, "family": family, "arch": "mlp",
          "test_accuracy": 0.9, "agreement": 0.8, "similarity_mean": sim,
          "p_value": 1e-5 if verdict == "pirated" else 0.6, "confidence": 0.9,
          "verdict": verdict, "views_for_target": views}


def _verification():
  suspects = [_suspect("p0", "prune", "piracy", 0.9, "pirated", 3),
              _suspect("p1", "prune", "piracy", 0.4, "not_pirated"),
              _suspect("e0", "extract", "piracy", 0.8, "pirated", 4),
              _suspect("i0", "seed", "independent", 0.5, "pirated"),
              _suspect("i1", "seed", "independent", 0.1, "not_pirated"),
              _suspect("i2", "seed", "independent", 0.2, "inconclusive")]
  fold = {"auc": {"all": 0.5}, "tpr_at_1pct_fpr": 0.25, "tpr_at_5pct_fpr": 0.5,
          "accused_independents": 0, "num_independents": 3, "detected_piracy": 1,
          "num_piracy": 2, "family": "piracy", "auc_held_out": 0.75,
          "held_out_verdicts": {"pirated": 2, "inconclusive": 0, "not_pirated": 1},
          "similarity_mean": 0.6}
  ref = {"auc": {"prune": 0.4, "extract": None, "all": 0.45}, "tpr_at_1pct_fpr": 0.0,
         "tpr_at_5pct_fpr": 0.1, "accused_independents": 2, "num_independents": 3,
         "detected_piracy": 1, "num_piracy": 3}
  return {"protocols": {
      "random": {"method": "model", "alpha": 1e-4, "num_views": 20, "score": "similarity_mean",
                 "auc": {"extract": 1.0, "prune": 0.5, "all": 0.6667},
                 "tpr_at_1pct_fpr": 0.3333, "tpr_at_5pct_fpr": 0.6667,
                 "num_independents": 3, "accused_independents": 1, "accusation_rate": 1 / 3,
                 "num_piracy": 3, "detected_piracy": 2, "verdicts": {}, "suspects": suspects},
      "leave_kind_out": {"prune": fold, "seed": {"family": "independent", "error": "R >= 3"}}},
      "other_tests": {"welch": dict(ref, auc={"all": 0.9}), "empirical": {"error": "too few"}},
      "references": {"raw_cosine": ref, "sac_m": dict(ref, auc={"prune": 0.2, "all": 0.3})},
      "victim_self": {"reference_mean": 0.3}}


@pytest.fixture
def res():
  victim = {"arch": "mlp", "width": 8, "test_accuracy": 0.91234, "parameters": 1000,
            "train_seconds": 12.0}
  uap = {"algorithm": "sgd", "p": "inf", "xi": 0.1, "fooling_rate_train": 0.5,
         "fooling_rate_test": 0.4, "num_uaps": 1, "uaps": [{"history": [1, 2]}]}
  return results.build("mnist", victim, uap, _verification(), {"victim": 3.0, "verify": 1.5})


def test_results_take_the_random_split_headline(res):
  assert res["test"] == "model" and res["alpha"] == 1e-4 and res["num_views"] == 20
  assert res["auc"]["all"] == 0.6667 and res["detected_piracy"] == 2
  assert "uaps" not in res["uap"] and res["uap"]["xi"] == 0.1
  assert [s["views_for_9999"] for s in res["suspects"]] == [3, None, 4, None, None, None]
  assert list(res["suspects"][0]) == list(results.SUSPECT_FIELDS)
  assert "accusation_rate" not in res and res["seconds"] == {"victim": 3.0, "verify": 1.5}


def _rows(text, heading):
  """The table rows under a Markdown heading, as lists of cells."""
  part = text.split(heading, 1)[1].split("\n## ", 1)[0]
  return [[c.strip() for c in line.strip("|").split("|")]
          for line in part.splitlines() if line.startswith("|") and "---" not in line]


def test_markdown_tables_hold_the_figures(res):
  text = tables.markdown(res)
  assert text.startswith("# uap-jax report: mnist")
  assert ("Independents accused: 1 of 3; piracy detected: 2 of 3." in text)
  assert "test accuracy 0.9123" in text
  assert _rows(text, "## Detection") == [
      ["kind", "AUC", "AUC against every untrained independent"], ["extract", "1.000", "–"],
      ["prune", "0.500", "–"], ["all", "0.667", "–"]]
  assert "TPR at 1 % FPR: 0.333; at 5 % FPR: 0.667." in text
  # The failed fold is left out; the other gives its held-out verdicts.
  assert _rows(text, "## Leave-kind-out")[1:] == [
      ["prune", "piracy", "0.750", "0.250", "2", "0", "1"]]
  refs = _rows(text, "## References")
  assert refs[1] == ["raw_cosine", "0.450", "0.000", "2/3"]
  assert refs[2] == ["sac_m", "0.300", "0.000", "2/3"]
  # The AUC table: one column per score, a missing AUC as a dash.
  assert refs[3] == ["kind", "encoder", "raw_cosine", "sac_m"]
  assert refs[4:] == [["extract", "1.000", "–", "–"], ["prune", "0.500", "0.400", "0.200"],
                      ["all", "0.667", "0.450", "0.300"]]
  others = _rows(text, "## Other tests")
  assert others[1:] == [["welch", "0.900", "2/3", "1/3"], ["empirical", "–", "too few", "–"]]
  suspects = _rows(text, "## Suspects")
  assert len(suspects) == 1 + 6 and suspects[1][:3] == ["p0", "prune", "piracy"]
  assert suspects[1][-2:] == ["pirated", "3"]
  assert _rows(text, "## Seconds per stage")[1:] == [["victim", "3.000"], ["verify", "1.500"]]


def test_the_report_says_when_not_even_the_victim_reaches_alpha(res):
  assert "The victim judged as a suspect" not in tables.markdown(res)  # not judged
  res["victim_self"] = {"reference_mean": 0.3, "p_value": 2e-3, "verdict": "inconclusive"}
  text = tables.markdown(res)
  assert "p = 0.002 (inconclusive). Not even the victim reaches alpha = 0.0001" in text
  assert "--zoo_count" in text
  res["victim_self"].update(p_value=3e-8, verdict="pirated")
  text = tables.markdown(res)
  assert "p = 3e-08 (pirated)." in text and "Not even" not in text


def test_the_report_says_when_the_victim_is_less_accurate_than_the_reference(res):
  # Seed 5 of the quickstart: a victim trained to 0.643 made every faithful
  # copy read inconclusive; the report must say why and what to do.
  res["victim_self"] = {"reference_mean": 0.3, "p_value": 3e-8, "verdict": "pirated",
                        "point_accuracy": 0.62, "outside_reference": None}
  assert "less accurate on the fingerprint points" not in tables.markdown(res)
  res["victim_self"]["outside_reference"] = "accuracy"
  text = tables.markdown(res)
  assert "less accurate on the fingerprint points (0.620)" in text
  assert "retrain the victim" in text


def test_auc_per_kind_bars_follow_the_aucs(res, tmp_path):
  fig = plots.auc_per_kind(res)
  ax = fig.axes[0]
  # One bar container per plotted score present: encoder, raw_cosine, sac_m.
  assert [c.get_label() for c in ax.containers] == ["encoder", "raw_cosine", "sac_m"]
  heights = [[b.get_height() for b in c] for c in ax.containers]
  np.testing.assert_allclose(heights, [[1.0, 0.5, 0.6667], [np.nan, 0.4, 0.45],
                                       [np.nan, 0.2, 0.3]])
  assert [t.get_text() for t in ax.get_xticklabels()] == ["extract", "prune", "all"]
  path = tmp_path / "auc_per_kind.png"
  fig.savefig(path, dpi=50)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_roc_and_confidence_figures(res):
  fig = plots.roc(res)
  lines = fig.axes[0].get_lines()
  assert len(lines) == 3  # extract, prune and the diagonal
  score = np.array([s["similarity_mean"] for s in res["suspects"]])
  keep = np.array([0, 1, 3, 4, 5])
  fpr, tpr, _ = metrics.roc_points(score[keep], np.array([1, 1, 0, 0, 0]))
  np.testing.assert_allclose(lines[1].get_xdata(), fpr)
  np.testing.assert_allclose(lines[1].get_ydata(), tpr)
  rng = np.random.default_rng(0)
  sims = rng.normal(0, 0.1, (6, 8))
  sims[0] += 0.8
  names = [s["name"] for s in res["suspects"]]
  figs = plots.figures(res, sims, [3, 4, 5], names)
  assert list(figs) == ["roc", "similarity", "auc_per_kind", "confidence_vs_views"]
  conf = figs["confidence_vs_views"].axes[0].get_lines()
  # One line per kind (first suspect each) and the 99.99 % line; p falls
  # with views for the copy far above the calibration models.
  assert [ln.get_label() for ln in conf[:3]] == ["prune", "extract", "seed"]
  assert conf[0].get_ydata()[-1] < conf[0].get_ydata()[0]
