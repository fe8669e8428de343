"""The owner's commitment to its fingerprint, made before any suspect is seen.

An owner who could choose its UAP or its fingerprint points after meeting a
suspect could tune them to one innocent model (UAPs transfer between
independent models) and accuse it. The guard: when the fingerprint stage
finishes, the run writes ``commitment.json``: a SHA-256 over everything a
verdict compares (the point indices, the UAPs, the victim's own
fingerprint) with the seed that drew them and the time (UTC). The owner
publishes or timestamps that digest before it looks at a suspect; every
verdict cites it, and the verify stage refuses to judge when the saved
fingerprint no longer matches it. The digest proves nothing about time by
itself: it is worth what the place the owner published it (a trusted
timestamp, a registry) proves.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import numpy as np

FILE = "commitment.json"


def digest(points: np.ndarray, uaps: np.ndarray, victim_fingerprint: np.ndarray,
           seed: int) -> str:
  """SHA-256 hex of the fingerprint a verdict compares against.

  Args:
    points: ``(K, V)`` training-set indices of the fingerprint points.
    uaps: ``(U, H, W, C)`` the victim's UAPs.
    victim_fingerprint: ``(V, D)`` the victim's fingerprint.
    seed: the run seed that drew them.

  Returns:
    64 hex characters.
  """
  h = hashlib.sha256()
  for name, array, dtype in (("points", points, np.int64), ("uaps", uaps, np.float32),
                             ("victim", victim_fingerprint, np.float32)):
    a = np.ascontiguousarray(np.asarray(array, dtype))
    h.update(f"{name}{a.shape}".encode())
    h.update(a.tobytes())
  h.update(f"seed={int(seed)}".encode())
  return h.hexdigest()


def make(points: np.ndarray, uaps: np.ndarray, victim_fingerprint: np.ndarray,
         seed: int, created: str | None = None) -> dict[str, Any]:
  """The commitment record (JSON-able) of a fingerprint.

  Args:
    points, uaps, victim_fingerprint, seed: as :func:`digest` takes them.
    created: the UTC time to record (default: now).

  Returns:
    ``{"sha256", "created", "seed", "points", "num_uaps", "covers"}``.
  """
  return {"sha256": digest(points, uaps, victim_fingerprint, seed),
          "created": created or datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec="seconds"),
          "seed": int(seed), "points": list(np.asarray(points).shape),
          "num_uaps": int(np.asarray(uaps).shape[0]),
          "covers": "the fingerprint points' indices, the victim's UAPs and the victim's "
                    "fingerprint: publish sha256 before judging any suspect"}


def missing() -> dict[str, Any]:
  """What a verdict cites for a run made before commitments were written."""
  return {"sha256": None,
          "note": "this run has no commitment.json (made before 2026-12-04): rerun "
                  "its fingerprint stage (--stages=fingerprint --overwrite) to make one"}


def check(record: dict, points: np.ndarray, uaps: np.ndarray,
          victim_fingerprint: np.ndarray, seed: int) -> dict[str, Any]:
  """What a verdict cites: the commitment, checked against the saved fingerprint.

  Args:
    record: the saved ``commitment.json``.
    points, uaps, victim_fingerprint, seed: the fingerprint being used.

  Returns:
    ``{"sha256", "created"}``.

  Raises:
    ValueError: the fingerprint no longer matches the commitment.
  """
  now = digest(points, uaps, victim_fingerprint, seed)
  if now != record.get("sha256"):
    raise ValueError(
        f"The saved fingerprint (points, UAPs, victim) no longer matches the commitment "
        f"made at {record.get('created')} (sha256 {str(record.get('sha256'))[:16]}..., now "
        f"{now[:16]}...): a verdict on it would not be the one committed to. Restore the "
        "committed fingerprint, or commit anew (--stages=fingerprint --overwrite) before "
        "looking at any suspect.")
  return {"sha256": record["sha256"], "created": record["created"]}
