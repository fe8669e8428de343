"""Similarity of suspects' views to the victim, through the encoder.

The victim's embedding is the normalised MEAN of the embeddings of all its
views (a prototype), not view-by-view pairing: the prototype averages out the
victim's own view-to-view noise, so the spread of a suspect's similarities
reflects the suspect alone, and a suspect may answer any subset of the views.
"""

from __future__ import annotations

from typing import Any

import numpy as np

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
