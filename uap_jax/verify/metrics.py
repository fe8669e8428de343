"""Detection metrics over suspects: ROC-AUC and TPR at a fixed FPR.

Scores are "higher means more likely pirated"; labels are 1 for piracy and 0
for independent models. Both metrics are computed exactly (ties counted
half, as scikit-learn does) and are tested against scikit-learn.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
  scores = np.asarray(scores, np.float64).ravel()
  labels = np.asarray(labels).ravel()
  if scores.shape != labels.shape:
    raise ValueError(
        f"scores and labels must have the same length, got {scores.shape} and "
        f"{labels.shape}.")
  if not np.all(np.isin(labels, (0, 1))):
    raise ValueError("labels must be 1 (piracy) or 0 (independent).")
  labels = labels.astype(np.int64)
  if labels.sum() == 0 or labels.sum() == len(labels):
    raise ValueError(
        f"ROC metrics need both positives and negatives, got {int(labels.sum())}"
        f" positives of {len(labels)}; evaluate piracy and independent "
        "suspects together.")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores contain NaN or inf.")
  return scores, labels


def roc_points(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """False and true positive rates at every distinct threshold.

  Args:
    scores: ``(N,)`` scores.
    labels: ``(N,)`` 0/1 labels.

  Returns:
    ``fpr``, ``tpr`` (both starting at 0) and the thresholds (``inf`` first):
    a suspect is accused when its score is >= the threshold.
  """
  scores, labels = _check(scores, labels)
  order = np.argsort(-scores, kind="stable")
  sorted_scores = scores[order]
  sorted_labels = labels[order]
  # The last index of every run of equal scores is where a threshold sits.
  last = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(scores) - 1]
  tp = np.cumsum(sorted_labels)[last]
  fp = (last + 1) - tp
  tpr = np.r_[0.0, tp / labels.sum()]
  fpr = np.r_[0.0, fp / (len(labels) - labels.sum())]
  return fpr, tpr, np.r_[np.inf, sorted_scores[last]]


def roc_auc(scores, labels) -> float:
  """Area under the ROC curve (trapezoids: ties count one half).

  Args:
    scores: ``(N,)`` scores, higher = more likely piracy.
    labels: ``(N,)`` 1 piracy, 0 independent.

  Returns:
    The AUC in [0, 1].
  """
  fpr, tpr, _ = roc_points(scores, labels)
  return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def tpr_at_fpr(scores, labels, fpr: float) -> float:
  """Highest TPR of a threshold whose FPR does not exceed ``fpr``.

  Args:
    scores: ``(N,)`` scores.
    labels: ``(N,)`` 0/1 labels.
    fpr: the largest false positive rate allowed, in [0, 1].

  Returns:
    The TPR (no interpolation between thresholds: an achievable operating
    point). With fewer than ``1 / fpr`` negatives only thresholds with no
    false positive qualify.
  """
  if not 0.0 <= fpr <= 1.0:
    raise ValueError(f"fpr must be in [0, 1], got {fpr}.")
  fprs, tprs, _ = roc_points(scores, labels)
  return float(tprs[fprs <= fpr + 1e-12].max())



def clopper_pearson_upper(successes: int, trials: int, confidence: float = 0.95) -> float | None:
  """One-sided Clopper-Pearson upper bound on a binomial rate.

  Args:
    successes: events seen (accusations).
    trials: trials (held-out independents judged).
    confidence: the bound's confidence.

  Returns:
    The rate below which the true rate lies with that confidence (for 0 of
    n: ``1 - (1 - confidence) ** (1 / n)``); None without trials.
  """
  if trials <= 0:
    return None
  if successes >= trials:
    return 1.0
  return float(stats.beta.ppf(confidence, successes + 1, trials - successes))
