"""Detection quality over evaluated suspects: one summary for every score.

:func:`detection` is the one core: from one score per suspect (higher: more
likely pirated) and each suspect's verdict it gives the ROC-AUC per piracy
kind and overall, the TPR at 1 % and 5 % FPR and the verdict counts.
:func:`evaluate` feeds it suspects with views (the encoder similarities and
the per-view references, tested by :func:`uap_jax.verify.tests.verify_suspect`);
:func:`evaluate_scores` feeds it one number per model (the SAC-style
references, tested by the one-view ``model`` test).
:data:`DETECTION_FIELDS` are the figures every table of results quotes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from uap_jax.verify import metrics
from uap_jax.verify import population
from uap_jax.verify import splits
from uap_jax.verify import tests

# The figures quoted for every score, test and fold (verify.json's short
# rows, the ablation tables).
DETECTION_FIELDS = ("auc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "accused_independents",
                    "num_independents", "detected_piracy", "num_piracy")
# results.json's top-level figures: the detection fields and the settings.
HEADLINE_FIELDS = DETECTION_FIELDS + ("alpha", "num_views")
VERDICTS = ("pirated", "inconclusive", "not_pirated")


def brief(result: dict) -> dict:
  """The :data:`DETECTION_FIELDS` of a summary.

  Args:
    result: an :func:`evaluate` or :func:`evaluate_scores` dict.

  Returns:
    AUC per kind, TPR at 1 % / 5 % FPR, accused and detected counts.
  """
  return {k: result[k] for k in DETECTION_FIELDS}


def headline(evaluation: dict) -> dict:
  """The summary figures of one :func:`evaluate` result, with its settings.

  Args:
    evaluation: e.g. ``verify.json["protocols"]["random"]``.

  Returns:
    AUC per kind, TPR at 1 % / 5 % FPR, verdict counts, alpha, views, test.
  """
  return dict({k: evaluation[k] for k in HEADLINE_FIELDS}, test=evaluation["method"])


def _sides(families: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Families as strings, and the masks of the piracy and independent sides."""
  fam = np.array([str(f) for f in families], dtype=object)
  return fam, np.isin(fam, splits.POSITIVE_FAMILIES), fam == splits.NEGATIVE_FAMILY


def detection(score, families: Sequence[str], kinds: Sequence[str],
              verdicts: Sequence[str]) -> dict[str, Any]:
  """AUC per kind, TPR at 1 % / 5 % FPR and verdict counts.

  Args:
    score: ``(S,)`` one number per suspect, higher: more likely pirated.
    families: per suspect ``piracy`` or ``independent`` (others, e.g. the
      victim, take no part in the metrics).
    kinds: per suspect its kind.
    verdicts: per suspect ``pirated``, ``inconclusive`` or ``not_pirated``.

  Returns:
    JSON-able dict: ``auc`` per piracy kind and ``all`` (None where
    undefined), ``tpr_at_1pct_fpr``, ``tpr_at_5pct_fpr``,
    ``num_independents``, ``accused_independents``, ``accusation_rate``,
    ``num_piracy``, ``detected_piracy``, ``verdicts`` (counts per family).
  """
  score = np.asarray(score, np.float64)
  fam, positive, negative = _sides(families)
  auc = auc_by_kind(score, families, kinds)
  both = positive.any() and negative.any()
  keep = positive | negative
  tpr = {f: (metrics.tpr_at_fpr(score[keep], positive[keep].astype(int), f)
             if both else None) for f in (0.01, 0.05)}
  verdicts = [str(v) for v in verdicts]
  pirated = np.array([v == "pirated" for v in verdicts], bool)
  counts = {f: {v: int(sum(1 for g, w in zip(fam, verdicts) if g == f and w == v))
                for v in VERDICTS} for f in sorted(set(fam))}
  return {
      "auc": auc,
      "tpr_at_1pct_fpr": tpr[0.01],
      "tpr_at_5pct_fpr": tpr[0.05],
      "num_independents": int(negative.sum()),
      "accused_independents": int((pirated & negative).sum()),
      "accusation_rate": (float((pirated & negative).sum() / negative.sum())
                          if negative.any() else None),
      "num_piracy": int(positive.sum()),
      "detected_piracy": int((pirated & positive).sum()),
      "verdicts": counts,
  }


def auc_by_kind(score, families: Sequence[str], kinds: Sequence[str]
                ) -> dict[str, float | None]:
  """ROC-AUC of each piracy kind, and of all, against every independent.

  Args:
    score: ``(S,)`` one number per model, higher: more likely pirated.
    families: per model ``piracy`` or ``independent`` (others take no part).
    kinds: per model its kind.

  Returns:
    ``{kind: AUC, ..., "all": AUC}`` (None where a side is empty).
  """
  score = np.asarray(score, np.float64)
  _, positive, negative = _sides(families)
  kinds_arr = np.array([str(k) for k in kinds], dtype=object)

  def auc_of(mask_pos):
    if not mask_pos.any() or not negative.any():
      return None
    keep = mask_pos | negative
    return metrics.roc_auc(score[keep], mask_pos[keep].astype(int))

  auc: dict[str, float | None] = {
      k: auc_of(positive & (kinds_arr == k)) for k in sorted(set(kinds_arr[positive]))}
  auc["all"] = auc_of(positive)
  return auc


def auc_against_reference(sims: np.ndarray, meta: Sequence[dict], eval_idx,
                          reference_idx, num_views: int) -> dict[str, float | None]:
  """The evaluated pirates ranked against every independent no encoder saw.

  A split's own AUC ranks the pirates against its evaluated independents,
  which on a small zoo are few (the quickstart's: one); the test compares
  them with the reference. Here the independents are the evaluated ones and
  every reference model, each scored by encoders that never trained on it.

  Args:
    sims: ``(M, V)`` a score per view of every model.
    meta: per model its metadata (family, kind).
    eval_idx: the evaluated suspects.
    reference_idx: the reference models.
    num_views: views per model, as the test reads them.

  Returns:
    :func:`auc_by_kind` of the mean score over those views.
  """
  rows = [i for i in eval_idx if meta[i]["family"] in splits.POSITIVE_FAMILIES]
  rows += sorted({i for i in eval_idx if meta[i]["family"] == splits.NEGATIVE_FAMILY}
                 | {int(i) for i in reference_idx})
  views = num_views or sims.shape[1]
  return auc_by_kind(np.asarray(sims)[rows, :views].mean(1),
                     [meta[i]["family"] for i in rows], [meta[i]["kind"] for i in rows])


def _check_lengths(num: int, families, kinds, what: str) -> None:
  if not num == len(families) == len(kinds):
    raise ValueError(
        f"Got {num} {what}, {len(families)} families and {len(kinds)} kinds; "
        "pass one of each per suspect.")


def evaluate(suspect_similarities: Sequence[np.ndarray] | np.ndarray,
             families: Sequence[str], kinds: Sequence[str],
             reference: np.ndarray, *, names: Sequence[str] | None = None,
             num_views: int = 20, method: str = "welch", alpha: float = 0.01,
             upper: float = 0.5,
             target_confidence: float = 0.9999,
             coverage: tuple[Sequence[float], Any] | None = None) -> dict[str, Any]:
  """Detection quality over evaluated suspects with views.

  Args:
    suspect_similarities: per suspect its ``(V,)`` similarities (an ``(S, V)``
      array or a list).
    families: per suspect ``piracy`` or ``independent`` (others, e.g. the
      victim, get a row but no part in the metrics).
    kinds: per suspect its kind.
    reference: ``(R, V_ref)`` calibration independents' similarities.
    names: per suspect a name (default its index).
    num_views: n views tested per suspect.
    method: the test.
    alpha: accusation level.
    upper: clearing level.
    target_confidence: for ``views_for_target`` (0.9999).
    coverage: ``(point accuracy per suspect, population.Reference)``, or
      with a third item the point confidence per suspect: apply the
      coverage rule (:func:`uap_jax.verify.population.apply_coverage`) to
      every verdict before counting.

  Returns:
    JSON-able dict: method, alpha, num_views, ``score``
    ('similarity_mean': the ROC score), the keys of :func:`detection`, and
    ``suspects`` (one :func:`~uap_jax.verify.tests.verify_suspect` row
    each, with name, family, kind).
  """
  sims = list(suspect_similarities)
  _check_lengths(len(sims), families, kinds, "similarity rows")
  names = list(names) if names is not None else [str(i) for i in range(len(sims))]
  if len(names) != len(sims):
    raise ValueError(f"Got {len(names)} names for {len(sims)} suspects.")
  rows = []
  for s, family, kind, name in zip(sims, families, kinds, names):
    row = tests.verify_suspect(s, reference, num_views=num_views, method=method,
                               alpha=alpha, upper=upper,
                               target_confidence=target_confidence)
    rows.append(dict(name=str(name), family=str(family), kind=str(kind), **row))
  if coverage is not None:
    accuracy, ref = coverage[:2]
    confidence = coverage[2] if len(coverage) > 2 else [None] * len(rows)
    if len(accuracy) != len(rows) or len(confidence) != len(rows):
      raise ValueError(f"Got {len(accuracy)} point accuracies and {len(confidence)} "
                       f"confidences for {len(rows)} suspects.")
    rows = [population.apply_coverage(r, a, ref, c)
            for r, a, c in zip(rows, accuracy, confidence)]
  score = np.array([r["similarity_mean"] for r in rows])
  return {
      "method": method,
      "alpha": alpha,
      "num_views": num_views,
      "score": "similarity_mean",
      **detection(score, families, kinds, [r["verdict"] for r in rows]),
      "suspects": rows,
  }


def evaluate_split(sims: np.ndarray, meta: Sequence[dict], eval_idx, calib_idx,
                   point_accuracy: np.ndarray | None = None, ref: Any = None,
                   **test) -> dict[str, Any]:
  """:func:`evaluate` on one part of a split of a zoo.

  Args:
    sims: ``(M, V)`` a score per view of every model of the zoo.
    meta: per model its metadata (name, family, kind).
    eval_idx: the evaluated suspects.
    calib_idx: the calibration independents (the reference).
    point_accuracy: ``(M,)`` every model's point accuracy, with ``ref``:
      the coverage rule applies.
    ref: the :class:`~uap_jax.verify.population.Reference` (its models
      must be ``calib_idx``).
    **test: ``num_views``, ``method``, ``alpha`` of :func:`evaluate`.

  Returns:
    :func:`evaluate`'s dict.
  """
  coverage = None
  if ref is not None and point_accuracy is not None:
    coverage = ([float(point_accuracy[i]) for i in eval_idx], ref)
    if ref.confidence is not None:
      coverage += ([float(ref.confidence[i]) for i in eval_idx],)
  return evaluate(
      sims[eval_idx], [meta[i]["family"] for i in eval_idx],
      [meta[i]["kind"] for i in eval_idx], sims[calib_idx],
      names=[meta[i]["name"] for i in eval_idx], coverage=coverage, **test)


def evaluate_scores(suspect_scores: np.ndarray | Sequence[float],
                    families: Sequence[str], kinds: Sequence[str],
                    calib_scores: np.ndarray | Sequence[float], *,
                    names: Sequence[str] | None = None,
                    alpha: float = 1e-4) -> dict[str, Any]:
  """Detection figures of one-number-per-model scores.

  Args:
    suspect_scores: ``(S,)`` score per evaluated suspect (higher: pirated).
    families: per suspect ``piracy`` or ``independent``.
    kinds: per suspect its kind.
    calib_scores: ``(R,)`` scores of the calibration independents.
    names: per suspect a name.
    alpha: accusation level of the one-view ``model`` test
      (:func:`~uap_jax.verify.tests.score_p_value`).

  Returns:
    JSON-able dict with :data:`DETECTION_FIELDS` (accusation by the test at
    alpha); plus ``accused_above_calib_max`` / ``detected_above_calib_max``
    (score above every calibration independent), ``test``, ``alpha``,
    ``calib_models`` and ``suspects`` (name, family, kind, score, p_value,
    verdict).
  """
  s = np.asarray(suspect_scores, np.float64).ravel()
  calib = np.asarray(calib_scores, np.float64).ravel()
  _check_lengths(len(s), families, kinds, "scores")
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
  names = [str(n) for n in names] if names is not None else [str(i) for i in range(len(s))]
  p = np.array([tests.score_p_value(v, calib) for v in s])
  verdicts = ["pirated" if pv < alpha else "not_pirated" for pv in p]
  core = detection(s, families, kinds, verdicts)
  fam = [str(f) for f in families]
  above_max = s > calib.max()
  pos = np.array([f in splits.POSITIVE_FAMILIES for f in fam], bool)
  neg = np.array([f == splits.NEGATIVE_FAMILY for f in fam], bool)
  return {
      "test": "prediction (model-level, one score per model)",
      "alpha": alpha,
      **{k: core[k] for k in DETECTION_FIELDS},
      "accused_above_calib_max": int((above_max & neg).sum()),
      "detected_above_calib_max": int((above_max & pos).sum()),
      "calib_models": int(calib.size),
      "suspects": [{"name": n, "family": f, "kind": str(k), "score": float(v),
                    "p_value": float(pv), "verdict": w}
                   for n, f, k, v, pv, w in zip(names, fam, kinds, s, p, verdicts)],
  }
