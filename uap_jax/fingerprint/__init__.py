"""Fingerprint points and fingerprints of every model of a stack.

Fingerprint points (Peng et al. 2022, Sec. 3.3): the victim's logits over its
training data are clustered with k-means (K clusters); in each cluster the
point nearest the centroid is the *seed*, and the seed's V nearest neighbours
in logit space (the seed itself first) are the cluster's points. *View* j of
the fingerprint uses the j-th neighbour of every cluster, so every view holds
K points and point i of every view comes from the same cluster: the features
of different views line up.

Fingerprint of one model on one view: for every point ``x_i`` of the view,
the model's output on ``x_i`` followed by its outputs on ``clip(x_i + v_u)``
for each UAP ``v_u``; concatenated over the points. With C classes and U UAPs
a view gives ``D = K * (1 + U) * C`` numbers laid out as ``(K, 1 + U, C)``.

Query images are quantised to uint8 pixel levels by default, because a
black-box suspect can only be sent 8-bit images (see
:mod:`uap_jax.fingerprint.blackbox`): the fingerprint of a checkpoint and the fingerprint
from the same model's recorded answers then see identical inputs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from uap_jax.runtime import engine

PyTree = Any

POINT_RULES = ("kmeans", "margin", "random")
MODES = ("probs", "logits", "labels")
OUTPUT_KINDS = ("probs", "logits", "labels")


# --------------------------------------------------------------------------
# Point selection.


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


# --------------------------------------------------------------------------
# Query images.


def query_images(x_points: np.ndarray | jax.Array, uaps: np.ndarray | jax.Array,
                 *, quantize: bool = True) -> jax.Array:
  """The images a model is queried with, in the export order.

  Args:
    x_points: ``(K, V, H, W, C)`` fingerprint points, float in [0, 1] or
      uint8.
    uaps: ``(U, H, W, C)`` perturbations (or one ``(H, W, C)``), pixel units.
    quantize: round every query to the nearest uint8 level (what a black-box
      suspect receives), so model and recorded-output paths agree.

  Returns:
    ``(1 + U, V, K, H, W, C)`` float32 in [0, 1]: index 0 the clean points,
    index u the points plus UAP u-1, clipped to [0, 1].
  """
  x_points, uaps = check_points_and_uaps(x_points, uaps)
  clean = jnp.swapaxes(x_points, 0, 1)  # (V, K, H, W, C)
  perturbed = jnp.clip(clean[None] + uaps[:, None, None], 0.0, 1.0)
  queries = jnp.concatenate([clean[None], perturbed], axis=0)
  if quantize:
    queries = jnp.round(queries * 255.0) / 255.0
  return queries


def check_points_and_uaps(x_points, uaps) -> tuple[jax.Array, jax.Array]:
  """Validates and converts points and UAPs; returns float32 arrays."""
  x_points = np.asarray(x_points)
  if x_points.ndim != 5:
    raise ValueError(
        f"x_points must be (K, V, H, W, C), got shape {x_points.shape}; gather "
        "them as x_train[select_points(...)].")
  if x_points.dtype == np.uint8:
    x_points = x_points.astype(np.float32) / 255.0
  x_points = x_points.astype(np.float32)
  if x_points.size and (x_points.min() < 0.0 or x_points.max() > 1.0):
    raise ValueError(
        f"x_points must be pixels in [0, 1] (or uint8), got values in "
        f"[{x_points.min():.3g}, {x_points.max():.3g}]; divide uint8 images by "
        "255.")
  uaps = np.asarray(uaps, np.float32)
  if uaps.ndim == 3:
    uaps = uaps[None]
  if uaps.ndim != 4 or uaps.shape[1:] != x_points.shape[2:]:
    raise ValueError(
        f"uaps must be (U, H, W, C) = (U, {', '.join(map(str, x_points.shape[2:]))}) "
        f"to match the points, got shape {uaps.shape}; stack several UAPs with "
        "np.stack.")
  if uaps.shape[0] < 1:
    raise ValueError("uaps is empty; pass at least one UAP of the victim.")
  if not np.all(np.isfinite(uaps)):
    raise ValueError("uaps contain NaN or inf; recompute the UAP.")
  return jnp.asarray(x_points), jnp.asarray(uaps)


# --------------------------------------------------------------------------
# Fingerprints.


def outputs_to_features(outputs: jax.Array, mode: str) -> jax.Array:
  """Maps raw logits to the per-query features of a fingerprint mode."""
  if mode == "probs":
    return jax.nn.softmax(outputs, axis=-1)
  if mode == "logits":
    return outputs
  if mode == "labels":
    return jax.nn.one_hot(jnp.argmax(outputs, axis=-1), outputs.shape[-1],
                          dtype=outputs.dtype)
  raise ValueError(f"Unknown fingerprint mode {mode!r}; choose one of "
                   f"{', '.join(MODES)}.")


def _assemble(features: jax.Array) -> jax.Array:
  """``(1 + U, V, K, C)`` features -> ``(V, K * (1 + U) * C)`` fingerprints."""
  per_view = jnp.transpose(features, (1, 2, 0, 3))  # (V, K, 1 + U, C)
  return per_view.reshape(per_view.shape[0], -1)


@functools.lru_cache(maxsize=None)
def _fingerprint_fn(logits_fn: Callable, mode: str, strategy: str,
                    views_per_batch: int):
  def one_model(variables, queries):
    # queries: (V, 1 + U, K, H, W, C); one forward pass per view batch keeps
    # activation memory at views_per_batch * (1 + U) * K images per model.
    def one_view(q):
      flat = q.reshape((-1,) + q.shape[2:])
      return logits_fn(variables, flat).reshape(q.shape[:2] + (-1,))
    logits = jax.lax.map(one_view, queries, batch_size=views_per_batch)
    features = outputs_to_features(logits, mode)  # (V, 1 + U, K, C)
    return _assemble(jnp.swapaxes(features, 0, 1))
  return engine.over_models(one_model, strategy)


def fingerprints(model: Any, x_points: np.ndarray | jax.Array,
                 uaps: np.ndarray | jax.Array, *, mode: str = "probs",
                 strategy: str = "auto", quantize: bool = True,
                 images_per_batch: int | None = 1024) -> jax.Array:
  """Fingerprints of every model of a stack, all views in one compiled call.

  Args:
    model: a :class:`uap_jax.runtime.stack.Stack`, or a pair ``(logits_fn,
      variables)`` where ``logits_fn(variables, x)`` is ONE model's forward
      pass and ``variables`` carries a leading model axis of size M.
    x_points: ``(K, V, H, W, C)`` points, float in [0, 1] or uint8.
    uaps: ``(U, H, W, C)`` UAPs of the victim (or one ``(H, W, C)``).
    mode: ``probs`` (softmax, the paper), ``logits``, or ``labels`` (one-hot
      of the top-1: what a label-only suspect reveals).
    strategy: model-axis strategy of :func:`uap_jax.runtime.engine.over_models`.
    quantize: query with uint8-rounded images (see :func:`query_images`).
    images_per_batch: most query images per model in one forward pass
      inside the compiled call (whole views: at least one view, ``(1 + U) *
      K`` images); ``None`` runs all views at once. With ``vmap`` the device
      holds this times the stack size at once: lower it for big models.

  Returns:
    ``(M, V, D)`` float32 fingerprints, ``D = K * (1 + U) * C``, each view laid
    out as ``(K, 1 + U, C)``.
  """
  if mode not in MODES:
    raise ValueError(f"Unknown fingerprint mode {mode!r}; choose one of "
                     f"{', '.join(MODES)}.")
  if hasattr(model, "logits_fn") and hasattr(model, "variables"):
    logits_fn, variables = model.logits_fn, model.variables
  elif isinstance(model, (tuple, list)) and len(model) == 2 and callable(model[0]):
    logits_fn, variables = model
  else:
    raise ValueError(
        "model must be a uap_jax.runtime.stack.Stack or a pair (logits_fn, variables) "
        f"with a leading model axis, got {type(model).__name__}.")
  queries = query_images(x_points, uaps, quantize=quantize)
  if images_per_batch is not None and images_per_batch < 1:
    raise ValueError(
        f"images_per_batch must be >= 1 or None, got {images_per_batch}.")
  per_view = queries.shape[0] * queries.shape[2]
  num_views = queries.shape[1]
  # lax.map with batch_size b vmaps b views per step (b = V: one step).
  views_per_batch = num_views if images_per_batch is None else min(
      num_views, max(1, images_per_batch // per_view))
  fn = _fingerprint_fn(logits_fn, mode, engine.resolve(strategy),
                       views_per_batch)
  return fn(variables, jnp.swapaxes(queries, 0, 1))


def detect_output_kind(outputs: np.ndarray) -> str:
  """Guesses whether recorded outputs are ``labels``, ``probs`` or ``logits``.

  Args:
    outputs: ``(..., C)`` float outputs, or integer labels ``(...)``.

  Returns:
    ``labels`` for integer arrays or rows that are exactly one-hot,
    ``probs`` for non-negative rows summing to 1, else ``logits``.
  """
  outputs = np.asarray(outputs)
  if np.issubdtype(outputs.dtype, np.integer) or outputs.dtype == bool:
    return "labels"
  if outputs.size and np.all((outputs == 0) | (outputs == 1)) and np.all(
      outputs.sum(-1) == 1):
    return "labels"
  if outputs.size and outputs.min() >= 0 and np.allclose(
      outputs.sum(-1), 1.0, atol=1e-3):
    return "probs"
  return "logits"


def fingerprints_from_outputs(clean: np.ndarray | jax.Array,
                              perturbed: np.ndarray | jax.Array, *,
                              mode: str = "probs",
                              outputs: str = "auto") -> jax.Array:
  """Fingerprints of ONE suspect from its recorded answers to the queries.

  Gives the same vector as :func:`fingerprints` of the same model on the same
  (quantised) queries.

  Args:
    clean: ``(V, K, C)`` outputs on the clean points.
    perturbed: ``(U, V, K, C)`` outputs on the points plus each UAP.
    mode: fingerprint mode, as in :func:`fingerprints`.
    outputs: what was recorded: ``logits``, ``probs``, ``labels`` (one-hot
      rows) or ``auto`` (:func:`detect_output_kind`). Logits serve every
      mode; probabilities serve ``probs`` and ``labels``; labels only
      ``labels``.

  Returns:
    ``(V, D)`` float32 fingerprints.
  """
  if mode not in MODES:
    raise ValueError(f"Unknown fingerprint mode {mode!r}; choose one of "
                     f"{', '.join(MODES)}.")
  clean = np.asarray(clean)
  perturbed = np.asarray(perturbed)
  if clean.ndim != 3 or perturbed.ndim != 4 or perturbed.shape[1:] != clean.shape:
    raise ValueError(
        f"clean must be (V, K, C) and perturbed (U, V, K, C) with the same V, "
        f"K, C; got {clean.shape} and {perturbed.shape}. Load them with "
        "uap_jax.fingerprint.blackbox.load_recorded_outputs.")
  stacked = np.concatenate([clean[None], perturbed], axis=0).astype(np.float32)
  if not np.all(np.isfinite(stacked)):
    raise ValueError("Recorded outputs contain NaN or inf.")
  if outputs == "auto":
    outputs = detect_output_kind(stacked)
  if outputs not in OUTPUT_KINDS:
    raise ValueError(f"Unknown recorded output kind {outputs!r}; choose one of "
                     f"auto, {', '.join(OUTPUT_KINDS)}.")
  x = jnp.asarray(stacked)
  if outputs == "logits":
    features = outputs_to_features(x, mode)
  elif outputs == "probs":
    if mode == "logits":
      raise ValueError(
          "mode='logits' needs recorded logits, but the suspect's outputs are "
          "probabilities; use mode='probs' (or 'labels').")
    features = x if mode == "probs" else outputs_to_features(x, "labels")
  else:
    if mode != "labels":
      raise ValueError(
          f"The suspect's outputs are labels only; mode={mode!r} needs more. "
          "Use mode='labels' with an encoder trained on label fingerprints.")
    features = outputs_to_features(x, "labels")
  return _assemble(features)
