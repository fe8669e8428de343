"""Choosing the fingerprint points among the victim's training data.

Three rules (:data:`POINT_RULES`): ``kmeans`` (Peng et al. 2022, Sec. 3.3:
k-means on the victim's logits, each cluster's seed point nearest its
centroid and the seed's nearest neighbours in logit space), ``margin`` (the
victim's least confident points, one predicted class per slot) and
``random``. Every rule returns a ``(K, V)`` grid of distinct indices: row i
is slot (cluster) i, column j is view j.
"""

from __future__ import annotations

import jax
import numpy as np

from uap_jax import config

POINT_RULES = config.POINT_RULES


def select_points(victim_logits: np.ndarray | jax.Array, num_points: int,
                  num_views: int, rule: str = "kmeans",
                  seed: int = 0) -> np.ndarray:
  """Chooses the fingerprint points among the victim's training data.

  Args:
    victim_logits: ``(N, C)`` victim logits on its training images.
    num_points: K, points per view (clusters for ``kmeans``).
    num_views: V, views; every view has one point per cluster / slot.
    rule: ``kmeans`` (the paper: k-means on logits, the seed point nearest
      each centroid and its nearest neighbours in logit space), ``margin``
      (the points of lowest top-1 minus top-2 logit margin: slots are dealt
      round-robin over the predicted classes; a class with ``s`` slots
      gives view j of its r-th slot its ``(j * s + r)``-th lowest-margin
      point, so view 0 holds the lowest margins), or ``random``.
    seed: seed of k-means / of the random choice.

  Returns:
    ``(K, V)`` int64 indices into the training data, all distinct; column j
    is view j. Gather the images as ``x_train[idx]`` -> ``(K, V, H, W, C)``.
  """
  logits = np.asarray(victim_logits, np.float64)
  if logits.ndim != 2 or logits.shape[1] < 2:
    raise ValueError(
        f"victim_logits must be (N, num_classes) with num_classes >= 2, got "
        f"shape {logits.shape}; pass the victim's logits on its training data.")
  if not np.all(np.isfinite(logits)):
    raise ValueError("victim_logits contain NaN or inf; check the victim model.")
  if rule not in POINT_RULES:
    raise ValueError(
        f"Unknown point rule {rule!r}; choose one of {', '.join(POINT_RULES)}.")
  n = logits.shape[0]
  if num_points < 1 or num_views < 1:
    raise ValueError(
        f"num_points (K) and num_views (V) must be >= 1, got K={num_points}, "
        f"V={num_views}.")
  if num_points * num_views > n:
    raise ValueError(
        f"K * V = {num_points} * {num_views} = {num_points * num_views} points "
        f"are needed but only N = {n} training points are available; lower K "
        "or V, or select from more training data.")
  if rule == "kmeans":
    return _kmeans_points(logits, num_points, num_views, seed)
  if rule == "margin":
    return _margin_points(logits, num_points, num_views)
  rng = np.random.default_rng(seed)
  return rng.permutation(n)[:num_points * num_views].reshape(
      num_points, num_views).astype(np.int64)


def _kmeans_points(logits: np.ndarray, k: int, v: int, seed: int) -> np.ndarray:
  from sklearn.cluster import KMeans  # pylint: disable=g-import-not-at-top
  from sklearn.neighbors import NearestNeighbors  # pylint: disable=g-import-not-at-top
  n = logits.shape[0]
  distinct = np.unique(logits, axis=0).shape[0]
  if distinct < k:
    raise ValueError(
        f"k-means needs K={k} clusters but the victim's logits have only "
        f"{distinct} distinct rows; lower K or use rule='random'.")
  # One k-means++ start (scikit-learn's default): more starts cost their
  # multiple and the seeds only need to spread over the logit space.
  kmeans = KMeans(n_clusters=k, random_state=seed, n_init=1).fit(logits)
  finder = NearestNeighbors().fit(logits)
  _, nearest = finder.kneighbors(kmeans.cluster_centers_, n_neighbors=1)
  seeds = nearest[:, 0]
  # Neighbourhoods of different clusters may overlap, so a seed may need more
  # than V candidates. A few times V is enough unless clusters overlap
  # heavily; K * V candidates per seed always are (at most K*V - 1 points are
  # taken by others), at a cost that grows with K * V.
  widths = sorted({min(n, 4 * v + k), min(n, k * v)})
  for width in widths:
    _, candidates = finder.kneighbors(logits[seeds], n_neighbors=width)
    # Put each seed point first: ties at distance 0 may order it after a copy.
    for c in range(k):
      pos = np.nonzero(candidates[c] == seeds[c])[0]
      if pos.size and pos[0] != 0:
        candidates[c] = np.concatenate([[seeds[c]],
                                        np.delete(candidates[c], pos[0])])
    try:
      return _round_robin(candidates, v)
    except _OutOfCandidates:
      if width == widths[-1]:
        raise
  raise AssertionError("unreachable")


class _OutOfCandidates(ValueError):
  pass


def _round_robin(candidates: list[np.ndarray] | np.ndarray, v: int) -> np.ndarray:
  """Gives each slot, view by view, its next candidate not taken yet."""
  k = len(candidates)
  used: set[int] = set()
  cursor = [0] * k
  out = np.empty((k, v), np.int64)
  for j in range(v):
    for c in range(k):
      row = candidates[c]
      while cursor[c] < len(row) and int(row[cursor[c]]) in used:
        cursor[c] += 1
      if cursor[c] == len(row):
        raise _OutOfCandidates(
            f"Ran out of distinct points for slot {c} at view {j}; lower K or V.")
      out[c, j] = row[cursor[c]]
      used.add(int(out[c, j]))
  return out


def _margin_points(logits: np.ndarray, k: int, v: int) -> np.ndarray:
  top2 = np.sort(logits, axis=1)[:, -2:]
  margin = top2[:, 1] - top2[:, 0]
  predicted = logits.argmax(1)
  order = np.argsort(margin, kind="stable")
  by_class = [order[predicted[order] == c] for c in range(logits.shape[1])]
  # Slots go round-robin over the classes that still have V unclaimed points,
  # so all views of a slot come from one class (features line up across
  # views); slots that find no such class share the lowest-margin points left.
  capacity = np.array([len(p) // v for p in by_class])
  slots_of_class = np.zeros(len(by_class), np.int64)
  assigned, c = 0, 0
  while assigned < k and capacity.sum() > 0:
    if capacity[c] > 0:
      slots_of_class[c] += 1
      capacity[c] -= 1
      assigned += 1
    c = (c + 1) % len(by_class)
  out = np.empty((k, v), np.int64)
  used = np.zeros(logits.shape[0], bool)
  slot = 0
  views = np.arange(v)
  for cls, count in enumerate(slots_of_class):
    for r in range(count):
      # View j of the class's r-th slot is its (j * count + r)-th lowest
      # margin: view 0 holds the lowest margins, and the slots of a class
      # see the same range of margins.
      out[slot] = by_class[cls][views * count + r]
      slot += 1
  used[out[:slot].ravel()] = True
  rest = order[~used[order]]
  left = k - slot
  for r in range(left):
    out[slot + r] = rest[views * left + r]
  return out
