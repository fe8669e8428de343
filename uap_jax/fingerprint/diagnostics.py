"""What the victim's UAPs do to each model, read off the fingerprints.

Written into ``fingerprints.json`` by the fingerprint stage: they show,
without an encoder, whether the UAPs move the models at all and how close
each model's outputs are to the victim's.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from uap_jax.fingerprint import layout


def per_model(fps: np.ndarray, meta: Sequence[dict], num_uaps: int,
              num_classes: int) -> list[dict]:
  """Per model, on the fingerprint points: how the victim's UAPs move it.

  Args:
    fps: ``(M, V, D)`` fingerprints, the victim first.
    meta: M dicts with the models' ``name``, ``kind`` and ``family``.
    num_uaps: U, the UAPs the fingerprints were made with (0: none).
    num_classes: C.

  Returns:
    M rows: name, kind, family; ``uap_fooling_rate``, the share of
    (point, UAP) pairs whose top-1 differs from the clean point's;
    ``clean_agreement`` and ``perturbed_agreement``, top-1 agreement with the
    victim on clean and on perturbed points (the UAP rows are ``None`` when
    ``U = 0``); ``raw_cosine``, the cosine of the whole (encoder-free)
    fingerprint with the victim's.
  """
  fps = np.asarray(fps)
  top1 = layout.top1(fps, num_uaps, num_classes)  # (M, V, K, 1 + U)
  clean, perturbed = top1[..., 0], top1[..., 1:]
  raw = fps.reshape(fps.shape[0], -1)
  raw = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
  rows = []
  for i, mt in enumerate(meta):
    rows.append({
        "name": mt.get("name"), "kind": mt.get("kind"), "family": mt.get("family"),
        "uap_fooling_rate": (float((perturbed[i] != clean[i][..., None]).mean())
                             if num_uaps else None),
        "clean_agreement": float((clean[i] == clean[0]).mean()),
        "perturbed_agreement": (float((perturbed[i] == perturbed[0]).mean())
                                if num_uaps else None),
        "raw_cosine": float(raw[i] @ raw[0]),
    })
  return rows
