"""Seeded, class-stratified partition of a training set into disjoint parts.

The protocol needs disjoint data for the victim, the attacker's queries and
the independent trainers; ``partition`` makes those parts and
``save_partition`` / ``load_partition`` keep them with a run.
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import numpy as np

_FORMAT = "uap_jax.partition/1"


def partition(labels: np.ndarray, fractions: dict[str, float],
              seed: int) -> dict[str, np.ndarray]:
  """Splits example indices into disjoint, class-stratified named parts.

  Every class is permuted with ``np.random.default_rng([seed, class])`` and
  cut into consecutive blocks of ``floor(fraction * class_size)`` examples,
  one per part in the order of ``fractions``; when the fractions sum to 1 the
  few examples left by rounding go to the parts with the largest remainders,
  so no example is dropped. The result depends only on ``labels``,
  ``fractions`` and ``seed``.

  Args:
    labels: int array [N] of class indices of the training set.
    fractions: part name -> share of every class, each > 0, summing to <= 1;
      e.g. ``{"victim": 0.5, "attacker": 0.25, "independent": 0.25}``.
    seed: partition seed.

  Returns:
    part name -> sorted int64 array of indices into ``labels``; the parts are
    disjoint.

  Raises:
    ValueError: bad fractions, non-1-d or non-integer labels, or a part that
      would be empty.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.dtype.kind not in "iu":
    raise ValueError(f"partition: labels must be a 1-d integer array, got "
                     f"shape {labels.shape} dtype {labels.dtype}; pass "
                     "dataset.y_train.")
  if not isinstance(fractions, dict) or not fractions:
    raise ValueError("partition: fractions must be a non-empty dict name -> "
                     "share, e.g. {'victim': 0.5, 'attacker': 0.25, "
                     "'independent': 0.25}.")
  for part, f in fractions.items():
    if not isinstance(part, str) or not part:
      raise ValueError(f"partition: part names must be non-empty strings, got "
                       f"{part!r}.")
    if isinstance(f, bool) or not isinstance(f, (int, float, np.floating)) or \
        not math.isfinite(f) or f <= 0:
      raise ValueError(f"partition: fraction of {part!r} must be a number > 0, "
                       f"got {f!r}; drop the part instead of giving it 0.")
  total = float(sum(fractions.values()))
  if total > 1.0 + 1e-9:
    raise ValueError(f"partition: fractions sum to {total:g} > 1 "
                     f"({fractions}); scale them so that they sum to at most "
                     "1.")
  names = list(fractions)
  shares = np.asarray([float(fractions[n]) for n in names])
  fill = abs(total - 1.0) <= 1e-9
  chunks = {n: [] for n in names}
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(c) & 0xFFFFFFFF])
    members = rng.permutation(members)
    exact = shares * members.size
    counts = np.floor(exact + 1e-9).astype(np.int64)
    if fill:
      leftover = members.size - int(counts.sum())
      order = np.argsort(-(exact - counts), kind="stable")
      counts[order[:leftover]] += 1
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for i, n in enumerate(names):
      chunks[n].append(members[bounds[i]:bounds[i + 1]])
  parts = {n: np.sort(np.concatenate(chunks[n])).astype(np.int64)
           for n in names}
  empty = [n for n, idx in parts.items() if idx.size == 0]
  if empty:
    raise ValueError(f"partition: parts {empty} would be empty with "
                     f"{labels.size} examples; raise their fractions or use "
                     "more data.")
  return parts


def save_partition(path: str | os.PathLike, parts: dict[str, np.ndarray],
                   *, info: dict | None = None) -> None:
  """Writes a partition as JSON (indices as lists), atomically.

  Args:
    path: the JSON file to write; its folder is created.
    parts: part name -> index array, as returned by ``partition``.
    info: optional JSON-serialisable metadata kept with it (seed, fractions,
      data set name, ...).
  """
  path = pathlib.Path(path)
  payload = {
      "format": _FORMAT,
      "parts": {str(n): [int(i) for i in np.asarray(idx).ravel()]
                for n, idx in parts.items()},
      "info": info or {},
  }
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(payload))
  os.replace(tmp, path)


def load_partition(path: str | os.PathLike, *,
                   num_examples: int | None = None) -> dict[str, np.ndarray]:
  """Reads a partition written by ``save_partition``.

  Args:
    path: the JSON file.
    num_examples: if given, every index must lie in [0, num_examples).

  Returns:
    part name -> int64 index array.

  Raises:
    ValueError: missing or malformed file, overlapping parts, or indices out of
      range.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"No partition file at {path}; create one with "
                     "save_partition(path, partition(labels, fractions, "
                     "seed)).")
  try:
    payload = json.loads(path.read_text())
    if payload.get("format") != _FORMAT:
      raise KeyError("format")
    parts = {str(n): np.asarray(idx, np.int64).reshape(-1)
             for n, idx in payload["parts"].items()}
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"{path} is not a partition file written by "
                     f"save_partition ({type(e).__name__}: {e}); delete it and "
                     "save the partition again.") from e
  seen = np.concatenate([p for p in parts.values()]) if parts else np.zeros(0)
  if np.unique(seen).size != seen.size:
    raise ValueError(f"{path}: parts overlap; delete the file and save the "
                     "partition again.")
  if num_examples is not None and seen.size and (
      seen.min() < 0 or seen.max() >= num_examples):
    raise ValueError(f"{path}: indices reach {int(seen.max())} but the "
                     f"training set has {num_examples} examples; the partition "
                     "belongs to another data set; delete it or use that data "
                     "set.")
  return parts
