"""Similarity of suspects' views to the victim, through the encoder.

The victim's embedding is the normalised MEAN of the embeddings of all its
views (a prototype), not view-by-view pairing: the prototype averages out the
victim's own view-to-view noise, so the spread of a suspect's similarities
reflects the suspect alone, and a suspect may answer any subset of the views.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from uap_jax import config
from uap_jax.fingerprint import layout
from uap_jax.verify import encoder as encoder_lib


def victim_embedding(encoder: Any, victim_fingerprints: np.ndarray) -> np.ndarray:
  """Unit-norm mean of the embeddings of the victim's views.

  Args:
    encoder: an Encoder, TrainedEncoder or ``(state, config)``.
    victim_fingerprints: ``(V, D)`` views of the victim.

  Returns:
    ``(E,)`` unit vector.
  """
  victim_fingerprints = np.asarray(victim_fingerprints)
  if victim_fingerprints.ndim != 2:
    raise ValueError(
        f"victim_fingerprints must be (V, D), got {victim_fingerprints.shape}; "
        "take the victim's row of the fingerprints (fps[i]).")
  mean = encoder_lib.embed(encoder, victim_fingerprints).mean(0)
  return mean / max(float(np.linalg.norm(mean)), 1e-12)


def similarities(encoder: Any, suspect_fingerprints: np.ndarray,
                 victim_fingerprints: np.ndarray) -> np.ndarray:
  """Cosine similarity of every suspect view with the victim's prototype.

  Args:
    encoder: an Encoder, TrainedEncoder or ``(state, config)``.
    suspect_fingerprints: ``(..., V, D)`` views of one or more suspects.
    victim_fingerprints: ``(V_victim, D)`` views of the victim.

  Returns:
    ``(..., V)`` similarities in [-1, 1].
  """
  suspect_fingerprints = np.asarray(suspect_fingerprints)
  if suspect_fingerprints.ndim < 2:
    raise ValueError(
        f"suspect_fingerprints must be (..., V, D), got "
        f"{suspect_fingerprints.shape}.")
  emb = encoder_lib.embed(encoder, suspect_fingerprints)
  return emb @ victim_embedding(encoder, victim_fingerprints)


# The scores a verification can test (--score).
SCORES = config.SCORES


def raw_cosine(suspect_fingerprints: np.ndarray, victim_fingerprints: np.ndarray) -> np.ndarray:
  """Encoder-free: cosine of every raw view with the victim's mean raw view.

  Nothing is learned, so nothing in it can key on what the zoo's pirates
  happened to look like (an architecture, a recipe).

  Args:
    suspect_fingerprints: ``(..., V, D)`` views of one or more suspects.
    victim_fingerprints: ``(V_victim, D)`` views of the victim.

  Returns:
    ``(..., V)`` cosines in [-1, 1].
  """
  unit = lambda f: f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
  proto = unit(np.asarray(victim_fingerprints, np.float64)).mean(0)
  proto = proto / max(float(np.linalg.norm(proto)), 1e-12)
  return (unit(np.asarray(suspect_fingerprints, np.float64)) @ proto).astype(np.float32)


def uap_follow(suspect_fingerprints: np.ndarray, victim_fingerprints: np.ndarray, *,
               num_uaps: int, num_classes: int) -> np.ndarray:
  """Encoder-free: how often a suspect follows the victim where its UAP moves it.

  Only the points whose top-1 the victim's UAP changes count (a few percent
  of them): there the victim's perturbed answer is particular to the victim,
  while on the others every good classifier agrees with it anyway. A copy
  goes where the victim goes; an independent model, even of the victim's
  architecture and accuracy, mostly does not. Top-1 only, so label answers
  are scored exactly as probabilities are.

  Args:
    suspect_fingerprints: ``(..., V, D)`` views of one or more suspects.
    victim_fingerprints: ``(V, D)`` the victim's views of the same points.
    num_uaps: U >= 1 of the fingerprints.
    num_classes: C.

  Returns:
    ``(..., V)`` in [0, 1]: the share of view j's perturbed points on which
    the UAP changes the victim's answer and the suspect gives the victim's
    new answer. A share of all points rather than a rate over the moved
    ones, which number a few per view: the mean over views is the follow
    rate times the victim's (fixed) moved share, and being in [0, 1] it
    suits every test, Fisher's z included.

  Raises:
    ValueError: no UAP, views that do not match the victim's, or a UAP that
      moves none of the victim's points.
  """
  if not num_uaps:
    raise ValueError("--score=uap_follow needs fingerprints with a UAP (--num_uaps >= 1).")
  victim = layout.top1(victim_fingerprints, num_uaps, num_classes)  # (V, K, 1 + U)
  suspect = layout.top1(suspect_fingerprints, num_uaps, num_classes)
  if suspect.shape[-3:] != victim.shape:
    raise ValueError(f"Suspect views of shape {suspect.shape[-3:]} do not match the "
                     f"victim's {victim.shape}: uap_follow compares them point by point.")
  moved = victim[..., 1:] != victim[..., :1]  # (V, K, U)
  if not moved.any():
    raise ValueError("The victim's UAP changes its answer on none of the fingerprint "
                     "points, so --score=uap_follow has nothing to count: use a larger "
                     "--uap_xi or another --score.")
  followed = (suspect[..., 1:] == victim[..., 1:]) & moved
  return followed.mean((-2, -1)).astype(np.float32)


def scores(score: str, encoder: Any, suspect_fingerprints: np.ndarray,
           victim_fingerprints: np.ndarray, *, num_uaps: int,
           num_classes: int, rows=None) -> np.ndarray:
  """The per-view score ``score`` of suspects against the victim.

  Args:
    score: :data:`SCORES`: ``uap_follow`` (:func:`uap_follow`),
      ``uap_cosine`` (:func:`raw_cosine` of the outputs on the UAP-shifted
      points only: where the victim's UAP sends the victim, a copy
      follows, an independent model much less; the clean outputs, on which
      every good classifier agrees, would only dilute it), ``raw_cosine`` (of whole views) or ``encoder``.
    encoder: the trained encoder, or cross-fitted encoders
      (:class:`uap_jax.verify.crossfit.CrossFitted`); only ``encoder`` uses
      it (may be None otherwise).
    suspect_fingerprints: ``(..., V, D)``.
    victim_fingerprints: ``(V_victim, D)``.
    num_uaps: U of the fingerprints (``uap_cosine`` without a UAP is
      ``raw_cosine``).
    num_classes: C.
    rows: for cross-fitted encoders, the run's model index of each suspect
      (None: suspects from outside the run).

  Returns:
    ``(..., V)`` scores, higher meaning closer to the victim.
  """
  if score == "uap_cosine":
    if num_uaps:
      pick = lambda f: layout.join(layout.split(np.asarray(f), num_uaps, num_classes)[..., 1:, :])
      return raw_cosine(pick(suspect_fingerprints), pick(victim_fingerprints))
    score = "raw_cosine"
  if score == "uap_follow":
    return uap_follow(suspect_fingerprints, victim_fingerprints, num_uaps=num_uaps,
                      num_classes=num_classes)
  if score == "raw_cosine":
    return raw_cosine(suspect_fingerprints, victim_fingerprints)
  if score == "encoder":
    if hasattr(encoder, "groups"):  # cross-fitted: each model by encoders that never saw it
      return encoder.similarities(suspect_fingerprints, victim_fingerprints, rows)
    return similarities(encoder, suspect_fingerprints, victim_fingerprints)
  raise ValueError(f"Unknown score {score!r} (--score); choose from {', '.join(SCORES)}.")
