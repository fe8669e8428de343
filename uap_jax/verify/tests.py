"""The statistical tests of a suspect against a reference, and the verdict.

The tests themselves (``welch``, ``model``, ``model_z``, ``empirical``) are
described in the :mod:`uap_jax.verify` package docstring. A reference is the
``(R, V)`` similarities of R calibration independents; one number per model
(a SAC score, say) is the one-view case, ``(R, 1)`` with n = 1.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy import stats

from uap_jax import config

METHODS = config.TESTS
# Cosines are clipped this far inside (-1, 1) before artanh.
FISHER_Z_CLIP = 1e-6


def check_reference(reference, method: str) -> np.ndarray:
  """The reference as float64, after checking it suits the test.

  Args:
    reference: ``(R, V)`` (``welch`` also takes a flat ``(N,)``).
    method: the test.

  Returns:
    The reference as a float64 array.
  """
  reference = np.asarray(reference, np.float64)
  if method not in METHODS:
    raise ValueError(f"Unknown test {method!r}; choose one of "
                     f"{', '.join(METHODS)}.")
  if method == "welch":
    if reference.ndim not in (1, 2) or reference.size < 2:
      raise ValueError(
          f"The reference must hold >= 2 similarities of independent models, "
          f"(R, V) or (N,), got shape {reference.shape}; fingerprint a "
          "calibration set of independents.")
  elif reference.ndim != 2 or reference.shape[0] < 3 or reference.shape[1] < 1:
    raise ValueError(
        f"method={method!r} needs the reference per model, shape (R, V) with "
        f"R >= 3 calibration independents, got {reference.shape}; fingerprint "
        "more calibration independents or use method='welch'.")
  if not np.all(np.isfinite(reference)):
    raise ValueError("The reference similarities contain NaN or inf.")
  return reference


def check_sims(sims, minimum: int = 2) -> np.ndarray:
  """A suspect's similarities as a float64 1-D array of >= ``minimum`` values."""
  sims = np.asarray(sims, np.float64)
  if sims.ndim != 1 or sims.size < minimum:
    raise ValueError(
        f"A suspect needs >= {minimum} similarities (one per view) as a 1-D "
        f"array, got shape {sims.shape}.")
  if not np.all(np.isfinite(sims)):
    raise ValueError("The suspect's similarities contain NaN or inf.")
  return sims


def p_value(sims, reference, method: str = "welch") -> float:
  """One-sided p-value of "the suspect is more similar than independents".

  Args:
    sims: ``(n,)`` the suspect's similarities; n >= 2 for ``welch``, n >= 1
      for the model-level tests (n = 1: one number per model).
    reference: ``(R, V)`` calibration independents' similarities (``welch``
      also takes a flat ``(N,)``).
    method: ``welch``, ``model``, ``model_z`` or ``empirical`` (package
      docstring).

  Returns:
    The p-value in [0, 1].
  """
  reference = check_reference(reference, method)
  # Welch needs a sample variance of the suspect; the model-level tests take
  # the spread from the reference models and so accept a single value.
  sims = check_sims(sims, 2 if method == "welch" else 1)
  return _p_value(sims, reference, method)


def score_p_value(score: float, reference_scores) -> float:
  """The ``model`` test of one number per model (one view, n = 1).

  With one view the within-model spread vanishes and the test is the
  Gaussian prediction test ``t = (s - mean) / (std * sqrt(1 + 1 / R))``
  with ``R - 1`` degrees of freedom.

  Args:
    score: the suspect's score (higher: more likely pirated).
    reference_scores: ``(R,)`` scores of calibration independents, R >= 3.

  Returns:
    The p-value in [0, 1].
  """
  reference = np.asarray(reference_scores, np.float64).reshape(-1, 1)
  return p_value([score], reference, "model")


def fisher_z(sims) -> np.ndarray:
  """Fisher's z = artanh(cosine), cosines clipped into (-1, 1) first.

  Args:
    sims: similarities of any shape.

  Returns:
    float64 array of the same shape.
  """
  bound = 1.0 - FISHER_Z_CLIP
  return np.arctanh(np.clip(np.asarray(sims, np.float64), -bound, bound))


def _p_value(sims: np.ndarray, reference: np.ndarray, method: str) -> float:
  if method == "model_z":
    sims, reference, method = fisher_z(sims), fisher_z(reference), "model"
  n = sims.size
  s = sims.mean()
  if method == "welch":
    ref = reference.ravel()
    if sims.var() == 0 and ref.var() == 0:
      # scipy answers NaN when neither sample varies; the means then decide.
      return 0.0 if s > ref.mean() else 1.0
    with warnings.catch_warnings():
      # scipy warns of precision loss when a sample is nearly constant (a
      # suspect identical to the victim); the statistic is still right.
      warnings.simplefilter("ignore", RuntimeWarning)
      return float(stats.ttest_ind(sims, ref, equal_var=False,
                                   alternative="greater").pvalue)
  num_models = reference.shape[0]
  if method == "empirical":
    ref_means = reference[:, :n].mean(1)
    return float((1 + np.sum(ref_means >= s)) / (num_models + 1))
  ref_means = reference.mean(1)
  var_means = ref_means.var(ddof=1)
  views = reference.shape[1]
  var_within = reference.var(1, ddof=1).mean() if views > 1 else 0.0
  var_between = max(var_means - var_within / views, 0.0)
  scale = math.sqrt(var_between + var_within / n + var_means / num_models)
  if scale == 0.0:
    return 0.0 if s > ref_means.mean() else 1.0
  t = (s - ref_means.mean()) / scale
  return float(stats.t.sf(t, df=num_models - 1))


def decide(p: float, mean_similarity: float, reference_mean: float, *,
           alpha: float = 0.01, upper: float = 0.5) -> str:
  """The verdict for a p-value.

  Args:
    p: the test's p-value.
    mean_similarity: the suspect's mean similarity.
    reference_mean: the reference's mean similarity.
    alpha: accuse when ``p < alpha``.
    upper: clear when ``p >= upper`` (or the mean is not above the
      reference mean).

  Returns:
    ``pirated``, ``not_pirated`` or ``inconclusive``.
  """
  if not 0.0 < alpha < upper <= 1.0:
    raise ValueError(
        f"Need 0 < alpha < upper <= 1, got alpha={alpha}, upper={upper}.")
  if p < alpha and mean_similarity > reference_mean:
    return "pirated"
  if p >= upper or mean_similarity <= reference_mean:
    return "not_pirated"
  return "inconclusive"


def views_for_confidence(sims, reference, confidence: float = 0.9999,
                         method: str = "welch") -> int | None:
  """Fewest views (first n of ``sims``) whose test reaches a confidence.

  Args:
    sims: ``(V,)`` the suspect's similarities in view order.
    reference: as in :func:`p_value`.
    confidence: the target ``1 - p``.
    method: the test.

  Returns:
    The smallest n >= 2 with ``1 - p >= confidence``, or None if even all
    views fall short.
  """
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
  reference = check_reference(reference, method)
  sims = check_sims(sims)
  for n in range(2, sims.size + 1):
    if 1.0 - _p_value(sims[:n], reference, method) >= confidence:
      return n
  return None


def verify_suspect(sims, reference, *, num_views: int = 20,
                   method: str = "welch", alpha: float = 0.01,
                   upper: float = 0.5,
                   target_confidence: float = 0.9999) -> dict[str, Any]:
  """The verdict on one suspect from its similarities.

  Args:
    sims: ``(V,)`` similarities of the suspect's views, in view order.
    reference: ``(R, V_ref)`` calibration independents' similarities.
    num_views: n, the first n views are tested (all if fewer).
    method: the test (package docstring).
    alpha: accuse when ``p < alpha``.
    upper: clear when ``p >= upper``.
    target_confidence: for ``views_for_target`` (0.9999 by default).

  Returns:
    JSON-able dict: views_used, similarity_mean / std / min / max,
    reference_mean, reference_std, method, p_value, confidence, verdict,
    alpha, views_for_target, target_confidence.
  """
  if num_views < 2:
    raise ValueError(f"num_views must be >= 2, got {num_views}.")
  reference = check_reference(reference, method)
  all_sims = check_sims(sims)
  used = all_sims[:num_views]
  p = _p_value(used, reference, method)
  ref_mean = float(reference.mean())
  return {
      "views_used": int(used.size),
      "similarity_mean": float(used.mean()),
      "similarity_std": float(used.std(ddof=1)),
      "similarity_min": float(used.min()),
      "similarity_max": float(used.max()),
      "reference_mean": ref_mean,
      "reference_std": float(reference.std()),
      "reference_models": int(reference.shape[0]) if reference.ndim == 2 else None,
      "method": method,
      "p_value": p,
      "confidence": 1.0 - p,
      "verdict": decide(p, float(used.mean()), ref_mean, alpha=alpha,
                        upper=upper),
      "alpha": alpha,
      "target_confidence": target_confidence,
      "views_for_target": views_for_confidence(
          all_sims, reference, target_confidence, method),
  }
