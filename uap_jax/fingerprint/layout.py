"""How a fingerprint view is laid out, and its inverse.

One view of a model's fingerprint is ``D = K * (1 + U) * C`` numbers: for
each of the K points (in cluster order) the model's C outputs on the clean
point, then on the point plus each of the U UAPs. ``U = 0`` (no UAP) leaves
the clean outputs only. Everything that reads parts of a fingerprint goes
through :func:`split` rather than reshaping by hand.
"""

from __future__ import annotations

import numpy as np


def join(outputs):
  """``(..., V, K, 1 + U, C)`` outputs -> ``(..., V, D)`` fingerprints.

  Args:
    outputs: per point, the C outputs on the clean point, then on the point
      plus each UAP; numpy or jax.

  Returns:
    The same numbers, ``D = K * (1 + U) * C`` per view, same array type.
  """
  return outputs.reshape(outputs.shape[:-3] + (-1,))


def split(fingerprints, num_uaps: int, num_classes: int):
  """``(..., V, D)`` fingerprints -> ``(..., V, K, 1 + U, C)`` outputs.

  Args:
    fingerprints: fingerprints of one or more models.
    num_uaps: U, the UAPs they were made with (0: clean outputs only).
    num_classes: C.

  Returns:
    The same numbers, with axis ``-2`` 0 for the clean point and ``u`` for
    the point plus UAP ``u - 1``.
  """
  if num_uaps < 0 or num_classes < 1:
    raise ValueError(f"Need num_uaps >= 0 and num_classes >= 1, got {num_uaps} "
                     f"and {num_classes}.")
  d = fingerprints.shape[-1]
  per_point = (1 + num_uaps) * num_classes
  if d % per_point:
    raise ValueError(
        f"A fingerprint of length {d} is not K * (1 + U) * C with U = {num_uaps} "
        f"UAPs and C = {num_classes} classes: these fingerprints were made with "
        "other settings.")
  return fingerprints.reshape(fingerprints.shape[:-1]
                              + (d // per_point, 1 + num_uaps, num_classes))


def clean_only(fingerprints, num_uaps: int, num_classes: int):
  """The clean outputs of fingerprints, as if made with ``U = 0``.

  Args:
    fingerprints: ``(..., V, D)`` fingerprints.
    num_uaps: U, the UAPs they were made with.
    num_classes: C.

  Returns:
    ``(..., V, K * C)``.
  """
  return join(split(fingerprints, num_uaps, num_classes)[..., :1, :])


def top1(fingerprints, num_uaps: int, num_classes: int) -> np.ndarray:
  """Top-1 class of every output of fingerprints.

  Args:
    fingerprints: ``(..., V, D)`` fingerprints.
    num_uaps: U, the UAPs they were made with.
    num_classes: C.

  Returns:
    ``(..., V, K, 1 + U)`` int class indices, as numpy.
  """
  return np.asarray(split(fingerprints, num_uaps, num_classes)).argmax(-1)


def as_labels(fingerprints, num_uaps: int, num_classes: int) -> np.ndarray:
  """Fingerprints as a label-only API would give them: one-hot top-1 outputs.

  Lets a run made with probabilities or logits judge a suspect whose
  answers are labels: the victim's and the references' fingerprints are
  reduced the same way, so every model is compared on what a label-only
  suspect reveals.

  Args:
    fingerprints: ``(..., V, D)`` fingerprints.
    num_uaps: U.
    num_classes: C.

  Returns:
    ``(..., V, D)`` float32 one-hot rows.
  """
  top = top1(fingerprints, num_uaps, num_classes)
  return join(np.eye(num_classes, dtype=np.float32)[top])
