"""Black-box suspects: export the query images, load the recorded answers.

A suspect that is only reachable through an API (or whose owner runs the
queries) is fingerprinted from its answers to a fixed set of query images.
:func:`export_queries` writes them as uint8 pixels in an ``.npz`` with a JSON
manifest; the suspect's answers come back as an ``.npz`` that
:func:`load_recorded_outputs` checks against the manifest and reshapes into
the ``(clean, perturbed)`` arrays of
:func:`uap_jax.fingerprint.fingerprints_from_outputs`.

Query order (documented in the manifest): the queries form a
``(1 + U, V, K)`` grid flattened row-major, query
``q = (u * V + j) * K + i`` is point i of view j, clean for ``u = 0`` and
plus UAP ``u - 1`` (clipped to [0, 1], rounded to uint8) for ``u >= 1``.

Recorded-outputs file: an ``.npz`` with key ``outputs``, either ``(Q, C)``
probabilities or logits, ``(Q, C)`` one-hot labels, or ``(Q,)`` integer
labels, in query order (probability rows must sum to 1: an API that returns
only its top-k probabilities should be recorded as labels). Optional keys: ``query_id`` ``(Q,)``, the query
index each row answers (rows are then put back in query order), and
``queries_sha256``, the manifest's checksum (guards against answers to a
different export).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np

from uap_jax.fingerprint import queries as queries_lib

FORMAT = "uap_jax.queries/v1"
ORDER = ("(1 + U, V, K) row-major: q = (u * V + j) * K + i; point i of view j; "
         "u = 0 clean, u >= 1 the point plus UAP u - 1, clipped to [0, 1] and "
         "rounded to uint8")


def manifest_path_for(path_npz: str) -> str:
  """Default manifest path next to a queries file: ``NAME.json``."""
  root, _ = os.path.splitext(path_npz)
  return root + ".json"


def make_queries(x_points: np.ndarray | jax.Array, uaps: np.ndarray | jax.Array, *,
                 num_classes: int, queries_file: str = "queries.npz"
                 ) -> tuple[np.ndarray, dict[str, Any]]:
  """The query images of a fingerprint and their manifest, without writing.

  Args:
    x_points: ``(K, V, H, W, C)`` fingerprint points, float in [0, 1] or
      uint8.
    uaps: ``(U, H, W, C)`` UAPs (or one ``(H, W, C)``; U may be 0).
    num_classes: classes of the victim's task; answers must have this many.
    queries_file: the name the images will be saved under (recorded).

  Returns:
    ``(Q, H, W, C)`` uint8 images in query order, and the manifest: format,
    order, K (points per view), V (views), U (UAPs), C (image channels),
    num_classes, image_shape ``[H, W, C]``, num_queries ``(1 + U) * V * K``,
    dtype, queries_file, queries_sha256, outputs_file_format.
  """
  if int(num_classes) < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
  queries = queries_lib.query_images(x_points, uaps, quantize=True)
  grid = queries.shape[:3]  # (1 + U, V, K)
  pixels = np.asarray(np.round(np.asarray(queries) * 255.0), np.uint8)
  pixels = pixels.reshape((-1,) + pixels.shape[3:])
  manifest = {
      "format": FORMAT,
      "order": ORDER,
      "K": int(grid[2]),
      "V": int(grid[1]),
      "U": int(grid[0]) - 1,
      "C": int(pixels.shape[-1]),
      "num_classes": int(num_classes),
      "image_shape": [int(s) for s in pixels.shape[1:]],
      "num_queries": int(len(pixels)),
      "dtype": "uint8",
      "queries_file": queries_file,
      "queries_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
      "outputs_file_format": (
          "npz with key 'outputs': (Q, num_classes) probabilities or logits, "
          "(Q, num_classes) one-hot labels or (Q,) integer labels, in query "
          "order; optional 'query_id' (Q,) and 'queries_sha256'"),
  }
  return pixels, manifest


def export_queries(path_npz: str, x_points: np.ndarray | jax.Array,
                   uaps: np.ndarray | jax.Array, *, num_classes: int,
                   manifest_path: str | None = None) -> dict[str, Any]:
  """Writes the query images of a fingerprint and their manifest.

  For use outside a run; a run's ``export_queries`` stage saves the same
  through its work directory (``Artifacts.save_queries``).

  Args:
    path_npz: output ``.npz``; holds ``queries`` ``(Q, H, W, C)`` uint8 and
      ``query_id`` ``(Q,)`` int32.
    x_points: ``(K, V, H, W, C)`` fingerprint points, float in [0, 1] or
      uint8.
    uaps: ``(U, H, W, C)`` UAPs (or one ``(H, W, C)``).
    num_classes: classes of the victim's task; answers must have this many.
    manifest_path: JSON manifest; default :func:`manifest_path_for`.

  Returns:
    The manifest (also written), as :func:`make_queries` gives it.
  """
  pixels, manifest = make_queries(x_points, uaps, num_classes=num_classes,
                                  queries_file=os.path.basename(path_npz))
  os.makedirs(os.path.dirname(os.path.abspath(path_npz)), exist_ok=True)
  with open(path_npz, "wb") as f:
    np.savez_compressed(f, queries=pixels,
                        query_id=np.arange(len(pixels), dtype=np.int32))
  with open(manifest_path or manifest_path_for(path_npz), "w") as f:
    json.dump(manifest, f, indent=2)
  return manifest


def load_manifest(manifest: dict | str) -> dict[str, Any]:
  """Reads and checks a manifest (a dict or a JSON path)."""
  if isinstance(manifest, (str, os.PathLike)):
    with open(manifest) as f:
      manifest = json.load(f)
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise ValueError(
        f"Not a uap-jax query manifest (format {FORMAT!r} expected); pass the "
        "JSON written by export_queries.")
  missing = [k for k in ("K", "V", "U", "num_classes", "num_queries")
             if k not in manifest]
  if missing:
    raise ValueError(f"Manifest lacks {missing}; re-export the queries.")
  expected = (manifest["U"] + 1) * manifest["V"] * manifest["K"]
  if manifest["num_queries"] != expected:
    raise ValueError(
        f"Manifest says {manifest['num_queries']} queries but (1 + U) * V * K = "
        f"{expected}; re-export the queries.")
  return manifest


def load_queries(path_npz: str) -> np.ndarray:
  """The ``(Q, H, W, C)`` uint8 query images of an export."""
  with np.load(path_npz) as data:
    return np.asarray(data["queries"])


def load_recorded_outputs(path_npz: str, manifest: dict | str
                          ) -> tuple[np.ndarray, np.ndarray]:
  """Loads a suspect's recorded answers and arranges them for fingerprints.

  Args:
    path_npz: the suspect's answers (see the module docstring).
    manifest: the manifest of the export answered (dict or JSON path).

  Returns:
    ``clean`` ``(V, K, C)`` and ``perturbed`` ``(U, V, K, C)`` float32:
    probabilities or logits as recorded; labels as one-hot rows. Pass them to
    :func:`uap_jax.fingerprint.fingerprints_from_outputs`.
  """
  manifest = load_manifest(manifest)
  k, v, u, c = (manifest[n] for n in ("K", "V", "U", "num_classes"))
  q = manifest["num_queries"]
  with np.load(path_npz, allow_pickle=False) as data:
    if "outputs" not in data:
      raise ValueError(
          f"{path_npz} has no 'outputs' array (keys: {sorted(data.keys())}); "
          "save the answers with np.savez(path, outputs=answers).")
    outputs = np.asarray(data["outputs"])
    query_id = np.asarray(data["query_id"]) if "query_id" in data else None
    digest = (str(data["queries_sha256"]) if "queries_sha256" in data
              else None)
  if digest is not None and manifest.get("queries_sha256") not in (None, digest):
    raise ValueError(
        "The answers are for a different set of queries (queries_sha256 does "
        "not match the manifest); answer the queries of this export.")
  if outputs.shape[:1] != (q,) or outputs.ndim not in (1, 2):
    raise ValueError(
        f"outputs must be (Q, {c}) or (Q,) with Q = (1 + U) * V * K = {q} "
        f"answers in the manifest's query order, got shape {outputs.shape}; "
        "answer every query of the export, one row per query.")
  if query_id is not None:
    if (query_id.shape != (q,) or not np.issubdtype(query_id.dtype, np.integer)
        or not np.array_equal(np.sort(query_id), np.arange(q))):
      raise ValueError(
          f"query_id must be a permutation of 0..{q - 1} naming the query each "
          "row answers; fix the ids or drop query_id and save rows in query "
          "order.")
    ordered = np.empty_like(outputs)
    ordered[query_id] = outputs
    outputs = ordered
  if outputs.ndim == 1 or np.issubdtype(outputs.dtype, np.integer):
    if outputs.ndim != 1:
      raise ValueError(
          f"Integer outputs must be labels of shape (Q,) = ({q},), got "
          f"{outputs.shape}; save probabilities/logits as floats.")
    if not np.issubdtype(outputs.dtype, np.integer):
      raise ValueError(
          f"(Q,) outputs must be integer class labels, got dtype "
          f"{outputs.dtype}; cast them with .astype(int).")
    if outputs.min() < 0 or outputs.max() >= c:
      raise ValueError(
          f"Labels must lie in [0, {c - 1}] for the victim's {c} classes, got "
          f"[{outputs.min()}, {outputs.max()}]; map the suspect's labels to "
          "the victim's class indices.")
    outputs = np.eye(c, dtype=np.float32)[outputs]
  if outputs.shape[1] != c:
    raise ValueError(
        f"The answers have {outputs.shape[1]} classes but the victim has {c}; "
        "record the suspect's outputs over the victim's classes, in its class "
        "order.")
  outputs = outputs.astype(np.float32)
  if not np.all(np.isfinite(outputs)):
    raise ValueError("The answers contain NaN or inf; re-record them.")
  grid = outputs.reshape(u + 1, v, k, c)
  return grid[0], grid[1:]
