"""Each model's answers at one confidence: a softmax temperature per model.

How sure a model is (its softmax temperature) says little about where it
came from: label smoothing, shorter training or an API's temperature all
change it, and an encoder that learned from a handful of zoo models reads
it as evidence. On the quickstart (seed 0) the bank's label-smoothed
LeNet-5s, which no encoder saw, scored closest to the victim of all its
independents, and that spread kept every pirate from reaching alpha.
:func:`at_confidence` takes that cue away: every model's answers are
re-tempered, one temperature per model over all its views, so that its mean
top-1 probability is a given one (the victim's); the ranking of classes in
every answer, and how the UAP moves it, are kept. Probabilities are
floored at :data:`PROB_FLOOR` before their log is taken, so what a very
sharp (or rounded) answer puts below it is lost.
"""

from __future__ import annotations

import numpy as np

# Temperatures are searched in [exp(-LOG_T_RANGE), exp(LOG_T_RANGE)].
LOG_T_RANGE = 8.0
# Safeguarded Newton steps on log T; each costs one softmax of the answers.
SEARCH_STEPS = 30
# A model is done when its mean top-1 probability is this close to the target.
TOLERANCE = 1e-6
# Probabilities are floored here before their log is taken.
PROB_FLOOR = 1e-12
OUTPUT_KINDS = ("probs", "logits")


def _log_scores(fingerprints: np.ndarray, num_classes: int, kind: str) -> np.ndarray:
  """``(..., V, D)`` -> ``(..., N, C)`` logits (log-probabilities for probs)."""
  if kind not in OUTPUT_KINDS:
    raise ValueError(f"Confidence needs answers of kind {' or '.join(OUTPUT_KINDS)}, "
                     f"got {kind!r}: labels have no temperature.")
  x = np.asarray(fingerprints, np.float64)
  if x.ndim < 2 or x.shape[-1] % num_classes:
    raise ValueError(f"Fingerprints must be (..., V, D) with D a multiple of the "
                     f"{num_classes} classes, got shape {x.shape}.")
  rows = x.reshape(x.shape[:-2] + (-1, num_classes))
  return np.log(np.maximum(rows, PROB_FLOOR)) if kind == "probs" else rows


def _softmax(z: np.ndarray) -> np.ndarray:
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _mean_top1_and_slope(z: np.ndarray, log_t: np.ndarray):
  """Mean top-1 probability at ``T = exp(log_t)`` and its derivative in log T."""
  beta = np.exp(-log_t)[..., None, None]
  p = _softmax(z * beta)
  top = p.max(-1)
  # d p_top / d beta = p_top (z_top - E_p[z]); d beta / d log T = -beta.
  spread = z.max(-1) - (p * z).sum(-1)
  return top.mean(-1), -(beta[..., 0] * top * spread).mean(-1)


def _log_temperature(z: np.ndarray, confidence: float) -> np.ndarray:
  """Per model the log T that brings its mean top-1 probability to ``confidence``.

  Newton's method on log T, kept inside a bracket that every step narrows
  (the mean top-1 probability falls as T rises), with bisection wherever
  Newton would leave it; about 5 steps where bisection needed 60.
  """
  lo = np.full(z.shape[:-2], -LOG_T_RANGE)
  hi = np.full(z.shape[:-2], LOG_T_RANGE)
  log_t = np.zeros(z.shape[:-2])
  for _ in range(SEARCH_STEPS):
    value, slope = _mean_top1_and_slope(z, log_t)
    gap = value - confidence
    if np.all(np.abs(gap) < TOLERANCE):
      break
    lo, hi = np.where(gap > 0, log_t, lo), np.where(gap > 0, hi, log_t)
    with np.errstate(divide="ignore", invalid="ignore"):
      newton = log_t - gap / slope
    inside = np.isfinite(newton) & (newton > lo) & (newton < hi)
    log_t = np.where(np.abs(gap) < TOLERANCE, log_t,
                     np.where(inside, newton, (lo + hi) / 2))
  return log_t


def mean_confidence(fingerprints: np.ndarray, num_classes: int, kind: str) -> np.ndarray:
  """Each model's mean top-1 probability over every answer of its views.

  Args:
    fingerprints: ``(..., V, D)`` one model's views per leading index.
    num_classes: C.
    kind: ``probs`` or ``logits`` (a softmax is taken).

  Returns:
    ``(...)`` in [1 / C, 1].
  """
  z = _log_scores(fingerprints, num_classes, kind)
  return _softmax(z).max(-1).mean(-1)


def at_confidence(fingerprints: np.ndarray, confidence: float, num_classes: int,
                  kind: str) -> np.ndarray:
  """Every model's answers re-tempered to one mean top-1 probability.

  One temperature T per model (per index of the leading axes, over all its
  views): its answers become ``softmax(logits / T)`` (``logits / T`` for
  logits), with T found by a safeguarded Newton search so that the mean
  top-1 probability is ``confidence``. Answers that cannot reach it
  (uniform rows, or a temperature outside ``exp(+-LOG_T_RANGE)``) keep the
  nearest one.

  Args:
    fingerprints: ``(..., V, D)`` one model's views per leading index.
    confidence: the target mean top-1 probability, in (1 / C, 1).
    num_classes: C.
    kind: ``probs`` or ``logits``: what the fingerprints hold, and give back.

  Returns:
    float32 fingerprints of the same shape and kind.
  """
  if not 1.0 / num_classes < confidence < 1.0:
    raise ValueError(f"A target confidence must lie in (1/{num_classes}, 1), got "
                     f"{confidence}.")
  shape = np.shape(fingerprints)
  z = _log_scores(fingerprints, num_classes, kind)
  scaled = z / np.exp(_log_temperature(z, confidence))[..., None, None]
  out = _softmax(scaled) if kind == "probs" else scaled
  return out.reshape(shape).astype(np.float32)
