"""results.json: the figures of a run, gathered from its saved artefacts.

Schema (keys; see README "Report format"):
  dataset, victim (victim.json), uap (uap.json without per-pass history),
  suspects: one row per evaluated suspect of the random split with name,
    kind, family, arch, test_accuracy, agreement, similarity_mean, p_value,
    confidence, verdict, views_for_9999,
  auc: per piracy kind and "all"; tpr_at_1pct_fpr; tpr_at_5pct_fpr;
  accused_independents, num_independents, detected_piracy, num_piracy,
  alpha, num_views, test,
  victim_self, leave_kind_out: per held-out kind its AUC, TPR and verdicts,
  other_tests, references: encoder-free scores on the same suspects
    (raw_cosine, raw_cosine_clean_only, agreement_*, sac_m, sac_w,
    error_agreement, ipguard),
  seconds: per stage.
"""

from __future__ import annotations

from typing import Any

from uap_jax.verify import summary

SUSPECT_FIELDS = ("name", "kind", "family", "arch", "test_accuracy", "agreement",
                  "similarity_mean", "p_value", "confidence", "verdict", "views_for_9999")


def build(dataset: str, victim: dict, uap: dict, verification: dict,
          seconds: dict[str, float]) -> dict[str, Any]:
  """The results dict of a run.

  Args:
    dataset: the dataset's name.
    victim: the victim's summary (victim.json).
    uap: the UAP summary (uap.json); its per-UAP ``uaps`` entry is dropped.
    verification: verify.json.
    seconds: seconds per finished stage.

  Returns:
    The JSON-able results (module docstring).
  """
  rnd = verification["protocols"]["random"]
  suspects = []
  for row in rnd["suspects"]:
    row = dict(row, views_for_9999=row.get("views_for_target"))
    suspects.append({k: row.get(k) for k in SUSPECT_FIELDS})
  return {
      "dataset": dataset,
      "victim": victim,
      "uap": {k: v for k, v in uap.items() if k != "uaps"},
      "suspects": suspects,
      **summary.headline(rnd),
      # Runs verified before this figure existed have none.
      "auc_vs_reference": rnd.get("auc_vs_reference"),
      "victim_self": verification["victim_self"],
      "score": verification.get("score"),
      "reference": verification.get("reference"),
      "false_accusations": verification.get("false_accusations"),
      "leave_kind_out": verification["protocols"]["leave_kind_out"],
      "other_tests": verification["other_tests"],
      "references": verification["references"],
      "labels": _label_judge(verification.get("labels")),
      "seconds": seconds,
  }


def _label_judge(on_labels: dict | None) -> dict | None:
  """The label judge's random split, held-out independents and victim_self."""
  if not on_labels:
    return None
  return {**summary.brief(on_labels["protocols"]["random"]),
          "false_accusations": on_labels["false_accusations"],
          "victim_self_p_value": on_labels["victim_self"]["p_value"]}
