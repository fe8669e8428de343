"""The owner's commitment: any change to what a verdict compares breaks it."""

import numpy as np
import pytest

from uap_jax.verify import commitment


def _fingerprint(seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 1000, (5, 4)), rng.uniform(-0.1, 0.1, (1, 8, 8, 1)),
          rng.uniform(size=(4, 30)))


def test_the_digest_is_stable_and_covers_every_part():
  points, uaps, victim = _fingerprint()
  base = commitment.digest(points, uaps, victim, 0)
  assert base == commitment.digest(points.copy(), uaps.astype(np.float64), victim, 0)
  changed = [commitment.digest(points[::-1], uaps, victim, 0),
             commitment.digest(points, uaps * 1.01, victim, 0),
             commitment.digest(points, uaps, victim + 1e-3, 0),
             commitment.digest(points, uaps, victim, 1),
             commitment.digest(points.reshape(4, 5), uaps, victim, 0)]
  assert len({base, *changed}) == 6


def test_check_cites_a_matching_commitment_and_refuses_a_changed_fingerprint():
  points, uaps, victim = _fingerprint()
  record = commitment.make(points, uaps, victim, 0, created="2026-12-04T00:00:00+00:00")
  assert commitment.check(record, points, uaps, victim, 0) == {
      "sha256": record["sha256"], "created": "2026-12-04T00:00:00+00:00"}
  tuned = uaps.copy()
  tuned[0, 0, 0, 0] += 0.05  # a UAP tuned after the commitment
  with pytest.raises(ValueError, match="no longer matches the commitment made at 2026-12-04"):
    commitment.check(record, points, tuned, victim, 0)
  assert commitment.missing()["sha256"] is None
  assert commitment.make(points, uaps, victim, 0)["created"].endswith("+00:00")  # UTC
