"""Control queries and the check that recorded answers are a classifier's.

A black-box suspect's answers are only worth judging if they are a
classifier's answers to the exported queries, in the exported order. A
recording slip (rows shifted by one, rows shuffled without ``query_id``,
wrong ``query_id``) or an API that answers nonsense (uniform rows, one
label for everything, random labels) would otherwise be judged, and can read
as piracy. So the export hides two kinds of control among the fingerprint
queries, all presented in one seeded random order (the manifest, which the
owner keeps, maps positions back):

* **repeats**: copies of some fingerprint queries at other positions. A
  classifier answers a repeated image the same way (through a noisy API,
  nearly always with the same top-1 class); rows that are shifted,
  shuffled or under wrong ids are answers to other images and disagree.
* **held-out labelled images**: images of the task's test split, a
  class-balanced draw whose labels only the owner knows. A classifier of
  this task is far above chance on them; uniform, constant, random or
  misplaced answers are at chance.

Position says nothing about which query is a control or UAP-shifted.
:func:`check_answers` runs both checks (and, for exports made before the
controls, only the checks that need none) before any test; a file that fails
gets the verdict ``invalid_answers`` with the reason, never a verdict on
piracy.

Thresholds (chosen so that a real classifier passes through a noisy API,
answers rounded, labels only, top-1 only or small noise on its logits):

* repeats: the pairs that differ in their top-1 class may be at most
  :data:`REPEAT_SHARE_OF_CHANCE` of what rows out of order would give
  (pairs of rows drawn at random from the same answers);
* held-out: the top-1 accuracy must beat the best image-blind answerer (the
  largest class share of the held-out draw, 1 / C when balanced) with a
  one-sided binomial p-value at most :data:`HOLDOUT_ALPHA`; a row whose top
  classes tie counts 1 / (number tied) when the truth is among them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

# Fingerprint queries copied as repeats: this share of the grid, at least
# MIN_REPEATS (all of it when the grid is smaller).
REPEAT_SHARE = 0.05
MIN_REPEATS = 40
# Held-out labelled images: about this many in all, class-balanced.
HOLDOUT_TOTAL = 200
# Repeated images answered with another top-1 class, as a share of what rows
# out of query order give (1 - the sum of squared top-1 class shares: 0.9 for
# ten balanced classes): a noisy API flips a few near its decision
# boundaries; out-of-order rows differ at that chance rate.
REPEAT_SHARE_OF_CHANCE = 0.5
# One-sided binomial level for held-out accuracy above an image-blind
# answerer; an answerer at chance passes this check with at most this chance.
HOLDOUT_ALPHA = 1e-3

NO_CONTROLS_NOTE = (
    "this export has no control queries (it was made before they existed): "
    "only the checks that need none ran (constant or identical answers), so "
    "rows shifted, shuffled or under wrong query ids cannot be detected; "
    "export the queries again (--stages=export_queries --overwrite) and have "
    "the suspect answer the new export")
_ORDER_FIX = ("the rows are probably not in query order (shifted, shuffled or "
              "under wrong query ids): check the recording, or give query_id "
              "(the index in queries.npz of the query each row answers)")


def num_repeats_for(num_grid_queries: int) -> int:
  """The default number of repeated fingerprint queries for a grid size."""
  return min(int(num_grid_queries),
             max(MIN_REPEATS, math.ceil(REPEAT_SHARE * num_grid_queries)))


def holdout_draw(images: np.ndarray, labels: np.ndarray, num_classes: int, *,
                 total: int = HOLDOUT_TOTAL, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
  """A class-balanced, seeded draw of held-out labelled images.

  Args:
    images: ``(N, H, W, C)`` uint8 images of the task's test split.
    labels: ``(N,)`` their integer labels.
    num_classes: classes of the task.
    total: about how many images in all (``ceil(total / num_classes)`` per
      class, fewer for a class with fewer images).
    seed: seed of the draw.

  Returns:
    ``(H, height, width, channels)`` uint8 images and ``(H,)`` int32 labels.
  """
  labels = np.asarray(labels)
  if len(images) != len(labels):
    raise ValueError(f"{len(images)} held-out images but {len(labels)} labels.")
  per_class = max(1, math.ceil(total / int(num_classes)))
  rng = np.random.default_rng(seed)
  chosen = []
  for c in range(int(num_classes)):
    members = np.flatnonzero(labels == c)
    chosen.append(rng.permutation(members)[:per_class])
  idx = np.sort(np.concatenate(chosen)).astype(np.int64)
  return np.asarray(images)[idx], labels[idx].astype(np.int32)


def add_controls(grid: np.ndarray, *, holdout_images: np.ndarray | None = None,
                 holdout_labels: np.ndarray | None = None,
                 num_repeats: int | None = None, seed: int = 0
                 ) -> tuple[np.ndarray, dict[str, Any]]:
  """Adds the control queries and shuffles every query into one order.

  Args:
    grid: ``(G, H, W, C)`` uint8 fingerprint queries in grid order.
    holdout_images: ``(H, ...)`` uint8 held-out images of the task (or
      None: no held-out control).
    holdout_labels: ``(H,)`` their labels.
    num_repeats: fingerprint queries repeated at a second position; default
      :func:`num_repeats_for`.
    seed: seed of the repeats' choice and of the order.

  Returns:
    ``(Q, H, W, C)`` uint8 queries in the order presented to the suspect,
    and the manifest's ``controls`` entry: ``seed``, ``grid_position``
    (``(G,)``: the position of grid query g), ``repeat_positions``
    (``[[a, b], ...]``: two positions of one image), ``holdout_positions``
    and ``holdout_labels``.
  """
  grid = np.asarray(grid)
  g = len(grid)
  r = num_repeats_for(g) if num_repeats is None else int(num_repeats)
  if not 0 <= r <= g:
    raise ValueError(f"num_repeats must be in [0, {g}] (the fingerprint "
                     f"queries), got {r}.")
  if holdout_images is None:
    holdout_images = np.zeros((0,) + grid.shape[1:], grid.dtype)
    holdout_labels = np.zeros((0,), np.int32)
  holdout_images = np.asarray(holdout_images)
  if holdout_images.shape[1:] != grid.shape[1:] or holdout_images.dtype != grid.dtype:
    raise ValueError(
        f"Held-out images must be {grid.dtype} {grid.shape[1:]} like the "
        f"fingerprint queries, got {holdout_images.dtype} "
        f"{holdout_images.shape[1:]}.")
  rng = np.random.default_rng([int(seed), 0x9E37])
  repeated = np.sort(rng.choice(g, size=r, replace=False)).astype(np.int64)
  # Sources in a fixed layout: grid, repeats, held-out; then one shuffle.
  sources = np.concatenate([grid, grid[repeated], holdout_images])
  order = rng.permutation(len(sources))  # order[position] = source index
  position_of = np.empty_like(order)
  position_of[order] = np.arange(len(order))
  h = len(holdout_images)
  controls = {
      "seed": int(seed),
      "grid_position": position_of[:g].tolist(),
      "repeat_positions": np.stack(
          [position_of[repeated], position_of[g:g + r]], axis=-1).tolist(),
      "holdout_positions": position_of[g + r:g + r + h].tolist(),
      "holdout_labels": np.asarray(holdout_labels, np.int64).tolist(),
  }
  return sources[order], controls


def check_controls_manifest(controls: dict, num_grid: int, num_queries: int,
                            num_classes: int) -> None:
  """Refuses a manifest ``controls`` entry that does not fit its export."""
  try:
    grid = np.asarray(controls["grid_position"], np.int64)
    pairs = np.asarray(controls["repeat_positions"], np.int64).reshape(-1, 2)
    holdout = np.asarray(controls["holdout_positions"], np.int64)
    labels = np.asarray(controls["holdout_labels"], np.int64)
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"The manifest's controls are damaged ({e}); export the "
                     "queries again (--stages=export_queries --overwrite).") from e
  covered = np.concatenate([grid, pairs[:, 1], holdout])
  if (len(grid) != num_grid or len(labels) != len(holdout)
      or not np.array_equal(np.sort(covered), np.arange(num_queries))
      or not np.isin(pairs[:, 0], grid).all()
      or (len(labels) and (labels.min() < 0 or labels.max() >= num_classes))):
    raise ValueError("The manifest's controls do not fit its queries; export "
                     "the queries again (--stages=export_queries --overwrite).")


@dataclasses.dataclass(frozen=True)
class AnswerCheck:
  """Whether recorded answers look like a classifier's, and why not.

  Attributes:
    valid: the answers may be judged.
    reasons: why not (empty when valid), each naming the likely cause and
      the fix.
    stats: the measurements: ``controls`` (whether the export has them),
      ``distinct_top1`` (classes answered), ``repeats``,
      ``repeats_disagreeing``, ``repeats_disagreeing_by_chance`` (what rows
      out of order would give), ``holdout``, ``holdout_correct``
      (tie-shared credit), ``holdout_accuracy``, ``holdout_chance``,
      ``holdout_p_value``, and ``note`` for an export without controls.
  """
  valid: bool
  reasons: tuple[str, ...]
  stats: dict[str, Any]

  def as_json(self) -> dict[str, Any]:
    """The check for a verdict file."""
    return {"valid": self.valid, "reasons": list(self.reasons), **self.stats}


def top1_sets(rows: np.ndarray) -> np.ndarray:
  """``(Q, C)`` bool: the classes tied for the top of each row."""
  rows = np.asarray(rows, np.float32)
  return rows == rows.max(-1, keepdims=True)


def check_answers(rows: np.ndarray, controls: dict | None) -> AnswerCheck:
  """Checks that recorded answers are a classifier's answers, in order.

  Args:
    rows: ``(Q, C)`` answers (probabilities, logits or one-hot labels) in
      the order of ``queries.npz`` (after ``query_id``).
    controls: the manifest's ``controls`` entry (:func:`add_controls`), or
      None for an export made before the controls.

  Returns:
    An :class:`AnswerCheck`.
  """
  rows = np.asarray(rows, np.float32)
  q, c = rows.shape
  tops = top1_sets(rows)
  single = tops.sum(-1) == 1
  top1 = rows.argmax(-1)
  reasons = []
  stats: dict[str, Any] = {
      "controls": controls is not None,
      "distinct_top1": int(len(np.unique(top1[single]))),
  }
  # Checks that need no controls: answers that do not depend on the image.
  if q > 1 and single.all() and np.all(top1 == top1[0]):
    reasons.append(
        f"every one of the {q} queries is answered with class {int(top1[0])}: "
        "a classifier of this task tells its classes apart; check that the "
        "API was really queried and its outputs recorded")
  elif q > 1 and np.all(rows == rows[0]):
    reasons.append(
        f"every one of the {q} rows is the same answer "
        f"({_row_text(rows[0])}): a classifier's answers depend on the image; "
        "check that the API was really queried and its outputs recorded")
  if controls is None:
    stats["note"] = NO_CONTROLS_NOTE
    return AnswerCheck(not reasons, tuple(reasons), stats)

  pairs = np.asarray(controls["repeat_positions"], np.int64).reshape(-1, 2)
  if len(pairs):
    same = _same_answer(tops, pairs[:, 0], pairs[:, 1])
    differing = int((~same).sum())
    # Two rows drawn at random from these answers differ this often: what
    # repeats give when the rows are not in query order.
    shares = np.bincount(top1, minlength=c) / q
    chance = float(1.0 - np.sum(shares ** 2))
    allowed = REPEAT_SHARE_OF_CHANCE * chance
    stats.update(repeats=int(len(pairs)), repeats_disagreeing=differing,
                 repeats_disagreeing_by_chance=round(chance * len(pairs), 2))
    if differing > allowed * len(pairs):
      reasons.append(
          f"{differing} of {len(pairs)} repeated queries answered differently "
          "(a classifier answers a repeated image the same way; rows out of "
          f"query order would differ on about {chance * len(pairs):.0f}, and "
          f"at most {allowed * len(pairs):.0f} may through a noisy API): "
          f"{_ORDER_FIX}")
  positions = np.asarray(controls["holdout_positions"], np.int64)
  if len(positions):
    labels = np.asarray(controls["holdout_labels"], np.int64)
    credit = tops[positions, labels] / tops[positions].sum(-1)
    correct = float(credit.sum())
    chance = float(np.bincount(labels, minlength=c).max() / len(labels))
    p_value = binomial_sf(math.floor(correct + 1e-9), len(labels), chance)
    stats.update(holdout=int(len(labels)), holdout_correct=round(correct, 3),
                 holdout_accuracy=round(correct / len(labels), 4),
                 holdout_chance=round(chance, 4), holdout_p_value=p_value)
    if p_value > HOLDOUT_ALPHA:
      reasons.append(
          f"{correct:.0f} of {len(labels)} held-out labelled images of the task "
          f"answered with their true class ({correct / len(labels):.0%}; an "
          f"answerer that ignores the image gets {chance:.0%}; p = "
          f"{p_value:.2g} > {HOLDOUT_ALPHA:g}): these are not a classifier's "
          f"answers for this task, or {_ORDER_FIX}")
  return AnswerCheck(not reasons, tuple(reasons), stats)


def _same_answer(tops: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Two answers agree when their top classes are the same set."""
  return np.all(tops[a] == tops[b], axis=-1)


def _row_text(row: np.ndarray) -> str:
  shown = ", ".join(f"{v:.3g}" for v in row[:4])
  return f"[{shown}{', ...' if len(row) > 4 else ''}]"


def binomial_sf(k: int, n: int, p: float) -> float:
  """P(X >= k) for X ~ Binomial(n, p), exact (log space)."""
  if k <= 0:
    return 1.0
  if k > n:
    return 0.0
  if p <= 0.0:
    return 0.0
  if p >= 1.0:
    return 1.0
  logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
          + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(k, n + 1)]
  top = max(logs)
  return float(min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs)))


INVALID = "invalid_answers"


def invalid_verdict(check: AnswerCheck) -> dict[str, Any]:
  """The verdict on answers that failed :func:`check_answers`.

  No test ran: p-value and confidence are None, never a verdict on piracy.

  Args:
    check: a failed check.

  Returns:
    ``verdict`` (``invalid_answers``), ``reason``, ``p_value``,
    ``confidence``, ``views_used`` and ``answer_check``.
  """
  return {"verdict": INVALID, "reason": "; ".join(check.reasons),
          "p_value": None, "confidence": None, "views_used": 0,
          "answer_check": check.as_json()}
