"""Black-box suspects: export the query images, load the recorded answers.

A suspect that is only reachable through an API (or whose owner runs the
queries) is fingerprinted from its answers to a fixed set of query images.
:func:`export_queries` writes them as uint8 pixels in an ``.npz`` with a JSON
manifest; the suspect's answers come back as an ``.npz`` that
:func:`load_recorded_outputs` checks against the manifest and reshapes into
the ``(clean, perturbed)`` arrays of
:func:`uap_jax.fingerprint.fingerprints_from_outputs`.

Query order (documented in the manifest): the fingerprint queries form a
``(1 + U, V, K)`` grid flattened row-major, grid query
``g = (u * V + j) * K + i`` is point i of view j, clean for ``u = 0`` and
plus UAP ``u - 1`` (clipped to [0, 1], rounded to uint8) for ``u >= 1``.
The export adds control queries (:mod:`uap_jax.fingerprint.controls`:
repeats of some grid queries and held-out labelled images of the task) and
presents every query in one seeded random order: ``queries.npz`` position
``p`` holds the query the manifest's ``controls`` map says (grid query g is
at ``grid_position[g]``). The manifest is the owner's; only the images go to
the suspect. Exports made before the controls (format ``v1``) present the
grid in grid order and are still read.

Recorded-outputs file: an ``.npz`` with key ``outputs``, either ``(Q, C)``
probabilities or logits, ``(Q, C)`` one-hot labels, or ``(Q,)`` integer
labels, one row per query of ``queries.npz``, in its order. Optional keys: ``kind`` (``'probs'``, ``'logits'`` or
``'labels'``: what ``outputs`` holds), ``query_id`` ``(Q,)``, the index in ``queries.npz`` of the query
each row answers (rows are then put back in query order), and
``queries_sha256``, the manifest's checksum (guards against answers to a
different export).

What the answers are taken to be (:func:`load_answers`):

* ``kind='logits'``: any finite floats.
* ``kind='probs'``: every row non-negative and summing to 1 (within
  :data:`~uap_jax.fingerprint.compute.PROBS_ATOL`), else refused.
* ``kind='labels'``: ``(Q,)`` integers or exactly one-hot rows.
* No ``kind``: ``(Q,)`` integers are labels. Float rows with no negative
  value are probabilities and must each sum to 1, else the file is refused
  (non-negative logits need ``kind='logits'``). Rows with negative values are
  logits, unless they look like broken probabilities (every row, or at least
  half of them, sums to 1): then the file is refused and must say
  ``kind='logits'`` if they really are logits. An API that returns only its
  top-k probabilities should be recorded as labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
import zlib
from typing import Any

import jax
import numpy as np

from uap_jax.fingerprint import compute
from uap_jax.fingerprint import controls as controls_lib
from uap_jax.fingerprint import queries as queries_lib

FORMAT = "uap_jax.queries/v2"
# v1: the grid alone, in grid order (no control queries).
FORMAT_V1 = "uap_jax.queries/v1"
KINDS = ("probs", "logits", "labels")
_SAVE_HINT = "np.savez(path, outputs=answers)"
ORDER = ("grid (1 + U, V, K) row-major: g = (u * V + j) * K + i; point i of "
         "view j; u = 0 clean, u >= 1 the point plus UAP u - 1, clipped to "
         "[0, 1] and rounded to uint8. With control queries (repeats of grid "
         "queries, held-out labelled images) in one seeded random order: grid "
         "query g is at position controls.grid_position[g] of queries.npz")


def manifest_path_for(path_npz: str) -> str:
  """Default manifest path next to a queries file: ``NAME.json``."""
  root, _ = os.path.splitext(path_npz)
  return root + ".json"


def make_queries(x_points: np.ndarray | jax.Array, uaps: np.ndarray | jax.Array, *,
                 num_classes: int, queries_file: str = "queries.npz",
                 holdout: tuple[np.ndarray, np.ndarray] | None = None,
                 num_repeats: int | None = None, seed: int = 0
                 ) -> tuple[np.ndarray, dict[str, Any]]:
  """The query images of a fingerprint and their manifest, without writing.

  Args:
    x_points: ``(K, V, H, W, C)`` fingerprint points, float in [0, 1] or
      uint8.
    uaps: ``(U, H, W, C)`` UAPs (or one ``(H, W, C)``; U may be 0).
    num_classes: classes of the victim's task; answers must have this many.
    queries_file: the name the images will be saved under (recorded).
    holdout: ``(images, labels)``: held-out labelled uint8 images of the
      task (:func:`uap_jax.fingerprint.controls.holdout_draw`), mixed in as
      controls; None for none.
    num_repeats: fingerprint queries repeated at a second position as
      controls; default
      :func:`uap_jax.fingerprint.controls.num_repeats_for`, 0 for none.
    seed: seed of the repeats and of the presented order.

  Returns:
    ``(Q, H, W, C)`` uint8 images in the order presented to the suspect,
    and the manifest: format, order, K (points per view), V (views), U
    (UAPs), C (image channels), num_classes, image_shape ``[H, W, C]``,
    num_grid_queries ``(1 + U) * V * K``, num_queries (grid plus
    controls), dtype, queries_file, queries_sha256, outputs_file_format and
    controls (:func:`uap_jax.fingerprint.controls.add_controls`).
  """
  if int(num_classes) < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
  queries = queries_lib.query_images(x_points, uaps, quantize=True)
  grid = queries.shape[:3]  # (1 + U, V, K)
  pixels = np.asarray(np.round(np.asarray(queries) * 255.0), np.uint8)
  pixels = pixels.reshape((-1,) + pixels.shape[3:])
  images, labels = holdout if holdout is not None else (None, None)
  if labels is not None and len(labels) and (
      np.min(labels) < 0 or np.max(labels) >= int(num_classes)):
    raise ValueError(f"Held-out labels must lie in [0, {int(num_classes) - 1}].")
  presented, controls = controls_lib.add_controls(
      pixels, holdout_images=images, holdout_labels=labels,
      num_repeats=num_repeats, seed=seed)
  manifest = {
      "format": FORMAT,
      "order": ORDER,
      "K": int(grid[2]),
      "V": int(grid[1]),
      "U": int(grid[0]) - 1,
      "C": int(pixels.shape[-1]),
      "num_classes": int(num_classes),
      "image_shape": [int(s) for s in pixels.shape[1:]],
      "num_grid_queries": int(len(pixels)),
      "num_queries": int(len(presented)),
      "dtype": "uint8",
      "queries_file": queries_file,
      "queries_sha256": hashlib.sha256(presented.tobytes()).hexdigest(),
      "outputs_file_format": (
          "npz with key 'outputs': (Q, num_classes) probabilities or logits, "
          "(Q, num_classes) one-hot labels or (Q,) integer labels, one row per "
          "query of queries.npz in its order; optional 'kind', 'query_id' (Q,) "
          "and 'queries_sha256'"),
      "controls": controls,
  }
  return presented, manifest


def export_queries(path_npz: str, x_points: np.ndarray | jax.Array,
                   uaps: np.ndarray | jax.Array, *, num_classes: int,
                   manifest_path: str | None = None,
                   holdout: tuple[np.ndarray, np.ndarray] | None = None,
                   num_repeats: int | None = None, seed: int = 0
                   ) -> dict[str, Any]:
  """Writes the query images of a fingerprint and their manifest.

  For use outside a run; a run's ``export_queries`` stage saves the same
  through its work directory (``Artifacts.save_queries``).

  Args:
    path_npz: output ``.npz``; holds ``queries`` ``(Q, H, W, C)`` uint8 and
      ``query_id`` ``(Q,)`` int32, what the suspect is sent.
    x_points: ``(K, V, H, W, C)`` fingerprint points, float in [0, 1] or
      uint8.
    uaps: ``(U, H, W, C)`` UAPs (or one ``(H, W, C)``).
    num_classes: classes of the victim's task; answers must have this many.
    manifest_path: JSON manifest, kept by the owner (it says which queries
      are controls); default :func:`manifest_path_for`.
    holdout, num_repeats, seed: the control queries, as for
      :func:`make_queries`.

  Returns:
    The manifest (also written), as :func:`make_queries` gives it.
  """
  pixels, manifest = make_queries(x_points, uaps, num_classes=num_classes,
                                  queries_file=os.path.basename(path_npz),
                                  holdout=holdout, num_repeats=num_repeats,
                                  seed=seed)
  os.makedirs(os.path.dirname(os.path.abspath(path_npz)), exist_ok=True)
  with open(path_npz, "wb") as f:
    np.savez_compressed(f, queries=pixels,
                        query_id=np.arange(len(pixels), dtype=np.int32))
  with open(manifest_path or manifest_path_for(path_npz), "w") as f:
    json.dump(manifest, f, indent=2)
  return manifest


def load_manifest(manifest: dict | str) -> dict[str, Any]:
  """Reads and checks a manifest (a dict or a JSON path).

  A manifest of format v1 (before the control queries) is read as it was:
  ``num_grid_queries`` = ``num_queries`` and ``controls`` None.
  """
  if isinstance(manifest, (str, os.PathLike)):
    manifest = _read_manifest_json(os.fspath(manifest))
  if not isinstance(manifest, dict) or manifest.get("format") not in (
      FORMAT, FORMAT_V1):
    raise ValueError(
        f"Not a uap-jax query manifest (format {FORMAT!r} expected); pass the "
        "JSON written by export_queries.")
  missing = [k for k in ("K", "V", "U", "num_classes", "num_queries")
             if k not in manifest]
  if manifest["format"] == FORMAT:
    missing += [k for k in ("num_grid_queries", "controls") if k not in manifest]
  if missing:
    raise ValueError(f"Manifest lacks {missing}; re-export the queries.")
  manifest = dict(manifest)
  if manifest["format"] == FORMAT_V1:
    manifest.update(num_grid_queries=manifest["num_queries"], controls=None)
  expected = (manifest["U"] + 1) * manifest["V"] * manifest["K"]
  if manifest["num_grid_queries"] != expected:
    raise ValueError(
        f"Manifest says {manifest['num_grid_queries']} fingerprint queries but "
        f"(1 + U) * V * K = {expected}; re-export the queries.")
  if manifest["controls"] is not None:
    controls_lib.check_controls_manifest(
        manifest["controls"], expected, manifest["num_queries"],
        manifest["num_classes"])
  return manifest


def _read_manifest_json(path: str) -> Any:
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"Query manifest {path}: no such file; export the queries first "
        "(--stages=export_queries, or export_queries()).")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(
        f"Query manifest {path} is unreadable ({e}); export the queries again "
        "(--stages=export_queries) and have the suspect answer the new "
        "export.") from e


def read_npz(path: str, *, what: str = "answers file",
             fix: str = f"save the answers with {_SAVE_HINT}") -> dict[str, np.ndarray]:
  """Every array of an ``.npz``, read in full, or one message naming the fix.

  Reading every member here means a corrupted member is found now, not
  later as a zip or zlib traceback.

  Args:
    path: the file.
    what: what the file is, for messages ("answers file").
    fix: how to write a good one, for messages.

  Returns:
    key -> array.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not an .npz, truncated, corrupted, or holding object arrays.
  """
  if os.path.isdir(path):
    raise ValueError(f"The {what} {path} is a directory, not an .npz file; {fix}.")
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"The {what} {path}: no such file (relative paths start at "
        f"{os.getcwd()}); check the path.")
  with open(path, "rb") as f:
    head = f.read(6)
  if head.startswith(b"\x93NUMPY"):
    raise ValueError(f"The {what} {path} is a single .npy array, not an .npz "
                     f"archive of named arrays; {fix}.")
  if not head.startswith(b"PK"):
    # numpy would blame "pickled data" here, which misleads.
    raise ValueError(f"The {what} {path} is not an .npz file (an .npz is a zip "
                     f"archive; this one is {_describe(head)}); {fix}.")
  try:
    with np.load(path, allow_pickle=False) as archive:
      return {key: np.asarray(archive[key]) for key in archive.files}
  except zipfile.BadZipFile as e:
    reason = ("a member is corrupted" if "CRC" in str(e)
              else "it is truncated or damaged")
    raise ValueError(f"The {what} {path} cannot be read: {reason} ({e}); copy "
                     f"it again, or {fix}.") from e
  except (zlib.error, EOFError, OSError) as e:
    raise ValueError(f"The {what} {path} cannot be read: a member is corrupted "
                     f"({e}); copy it again, or {fix}.") from e
  except ValueError as e:
    if "allow_pickle" in str(e):
      raise ValueError(f"The {what} {path} holds object (pickled) arrays, which "
                       f"are not loaded for safety; store numeric arrays: "
                       f"{fix}.") from e
    raise ValueError(f"The {what} {path} cannot be read ({e}); copy it again, "
                     f"or {fix}.") from e


def _describe(head: bytes) -> str:
  return "empty" if not head else f"a file starting with {head[:4]!r}"


def load_queries(path_npz: str) -> np.ndarray:
  """The ``(Q, H, W, C)`` uint8 query images of an export."""
  arrays = read_npz(path_npz, what="queries file",
                    fix="export the queries again (--stages=export_queries)")
  if "queries" not in arrays:
    raise ValueError(f"The queries file {path_npz} has no 'queries' array; "
                     "export the queries again (--stages=export_queries).")
  return arrays["queries"]


@dataclasses.dataclass(frozen=True)
class RecordedAnswers:
  """A suspect's answers, checked and arranged for fingerprints.

  Attributes:
    clean: ``(V, K, C)`` float32 answers on the clean points.
    perturbed: ``(U, V, K, C)`` float32 answers on the points plus each UAP.
    kind: what they are, ``probs``, ``logits`` or ``labels`` (the
      ``outputs=`` of :func:`uap_jax.fingerprint.fingerprints_from_outputs`).
    declared: whether the file said so (key ``kind``) or it was inferred.
    rows: ``(Q, C)`` float32, every answer (labels as one-hot rows) in the
      order of ``queries.npz``, controls included.
    controls: the manifest's ``controls`` (which rows are controls), None
      for an export made before them.
  """
  clean: np.ndarray
  perturbed: np.ndarray
  kind: str
  declared: bool
  rows: np.ndarray | None = None
  controls: dict | None = None

  def check(self) -> controls_lib.AnswerCheck:
    """Whether these answers look like a classifier's, in query order
    (:func:`uap_jax.fingerprint.controls.check_answers`)."""
    return controls_lib.check_answers(self.rows, self.controls)


def load_recorded_outputs(path_npz: str, manifest: dict | str
                          ) -> tuple[np.ndarray, np.ndarray]:
  """Loads a suspect's recorded answers and arranges them for fingerprints.

  Args:
    path_npz: the suspect's answers (see the module docstring).
    manifest: the manifest of the export answered (dict or JSON path).

  Returns:
    ``clean`` ``(V, K, C)`` and ``perturbed`` ``(U, V, K, C)`` float32:
    probabilities or logits as recorded; labels as one-hot rows. Pass them to
    :func:`uap_jax.fingerprint.fingerprints_from_outputs` (with
    ``outputs=`` :attr:`RecordedAnswers.kind` of :func:`load_answers` when
    the file declares its ``kind``).
  """
  answers = load_answers(path_npz, manifest)
  return answers.clean, answers.perturbed


def load_answers(path_npz: str, manifest: dict | str) -> RecordedAnswers:
  """Loads, checks and arranges a suspect's recorded answers.

  The answers must be what they claim (module docstring): probabilities that
  are non-negative rows summing to 1, logits, or labels.

  Args:
    path_npz: the suspect's answers (see the module docstring).
    manifest: the manifest of the export answered (dict or JSON path).

  Returns:
    The answers as :class:`RecordedAnswers`.

  Raises:
    FileNotFoundError: the file or the manifest is missing.
    ValueError: naming the problem and the fix, for anything else.
  """
  manifest = load_manifest(manifest)
  k, v, u, c = (manifest[n] for n in ("K", "V", "U", "num_classes"))
  q, controls = manifest["num_queries"], manifest["controls"]
  data = read_answers(path_npz)
  outputs = data["outputs"]
  declared = _declared_kind(data, path_npz)
  digest = str(data["queries_sha256"]) if "queries_sha256" in data else None
  if digest is not None and manifest.get("queries_sha256") not in (None, digest):
    raise ValueError(
        "The answers are for a different set of queries (queries_sha256 does "
        "not match the manifest); answer the queries of this export.")
  if outputs.shape[:1] != (q,) or outputs.ndim not in (1, 2):
    rows = ("Q = (1 + U) * V * K" if controls is None else
            f"Q = (1 + U) * V * K = {manifest['num_grid_queries']} "
            "fingerprint queries + "
            f"{q - manifest['num_grid_queries']} controls")
    raise ValueError(
        f"outputs must be (Q, {c}) or (Q,) with {rows} = {q} answers, one per "
        f"image of queries.npz in its order, got shape {outputs.shape}; answer "
        "every query of the export, one row per query.")
  outputs = _in_query_order(outputs, data.get("query_id"), q)
  labels = outputs.ndim == 1 or np.issubdtype(outputs.dtype, np.integer)
  if labels:
    if declared not in (None, "labels"):
      raise ValueError(
          f"{path_npz} says kind={declared!r} but holds integer labels; save "
          "it with kind='labels' (or without kind).")
    outputs = _labels_to_one_hot(outputs, q, c)
  if outputs.shape[1] != c:
    raise ValueError(
        f"The answers have {outputs.shape[1]} classes but the victim has {c}; "
        "record the suspect's outputs over the victim's classes, in its class "
        "order.")
  outputs = outputs.astype(np.float32)
  if not np.all(np.isfinite(outputs)):
    raise ValueError("The answers contain NaN or inf; re-record them.")
  kind = "labels" if labels else _float_kind(outputs, declared, path_npz)
  grid = outputs if controls is None else outputs[
      np.asarray(controls["grid_position"], np.int64)]
  grid = grid.reshape(u + 1, v, k, c)
  return RecordedAnswers(clean=grid[0], perturbed=grid[1:], kind=kind,
                         declared=declared is not None, rows=outputs,
                         controls=controls)


def read_answers(path_npz: str) -> dict[str, np.ndarray]:
  """The arrays of an answers file that reads and holds ``outputs``.

  The checks that need no manifest, so that a bad file is refused before any
  work.

  Args:
    path_npz: the suspect's answers (see the module docstring).

  Returns:
    key -> array; ``kind``, when present, is valid.

  Raises:
    FileNotFoundError: no such file.
    ValueError: unreadable, no ``outputs``, or a bad ``kind``.
  """
  data = read_npz(path_npz)
  if "outputs" not in data:
    raise ValueError(
        f"{path_npz} has no 'outputs' array (keys: {sorted(data)}); "
        f"save the answers with {_SAVE_HINT}.")
  _declared_kind(data, path_npz)
  return data


def _declared_kind(data: dict[str, np.ndarray], path: str) -> str | None:
  if "kind" not in data:
    return None
  kind = data["kind"]
  if kind.ndim == 0 and kind.dtype.kind in "US" and str(kind.item()) in KINDS:
    return str(kind.item())
  raise ValueError(
      f"{path}: kind must be one of {', '.join(map(repr, KINDS))} (what "
      f"'outputs' holds), got {kind.tolist()!r}; save it with e.g. "
      "np.savez(path, outputs=answers, kind='logits').")


def _in_query_order(outputs: np.ndarray, query_id: np.ndarray | None,
                    q: int) -> np.ndarray:
  if query_id is None:
    return outputs
  if (query_id.shape != (q,) or not np.issubdtype(query_id.dtype, np.integer)
      or not np.array_equal(np.sort(query_id), np.arange(q))):
    raise ValueError(
        f"query_id must be a permutation of 0..{q - 1} naming the query of "
        "queries.npz each row answers; fix the ids or drop query_id and save "
        "the rows in the order of queries.npz.")
  ordered = np.empty_like(outputs)
  ordered[query_id] = outputs
  return ordered


def _labels_to_one_hot(outputs: np.ndarray, q: int, c: int) -> np.ndarray:
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
  return np.eye(c, dtype=np.float32)[outputs]


def _float_kind(outputs: np.ndarray, declared: str | None, path: str) -> str:
  """What float ``(Q, C)`` answers are (module docstring), or a refusal."""
  if declared == "logits":
    return "logits"
  if declared == "labels":
    one_hot = np.all((outputs == 0) | (outputs == 1), axis=-1) & (
        outputs.sum(-1) == 1)
    if not one_hot.all():
      raise ValueError(
          f"{path} says kind='labels' but {int((~one_hot).sum())} of "
          f"{len(outputs)} rows are not one-hot; save (Q,) integer labels, or "
          "the right kind ('probs' or 'logits').")
    return "labels"
  sums = outputs.sum(-1)
  sums_one = np.isclose(sums, 1.0, atol=compute.PROBS_ATOL)
  negative = outputs.min(-1) < 0
  if declared == "probs" or not negative.any():
    _check_probabilities(outputs, sums, sums_one, negative, declared, path)
    # One-hot rows are labels: the same answer as fingerprints_from_outputs's
    # 'auto', so an undeclared file gives the fingerprints it always gave.
    return compute.detect_output_kind(outputs)
  if sums_one.all() or (sums_one & ~negative).mean() >= 0.5:
    raise ValueError(
        f"{path}: the answers sum to 1 per row like probabilities, but "
        f"{int(negative.sum())} of {len(outputs)} rows hold negative values "
        f"(down to {outputs.min():.3g}), which probabilities cannot: re-record "
        "the probabilities, or, if these are logits, save them with "
        "kind='logits' (np.savez(path, outputs=answers, kind='logits')).")
  return "logits"


def _check_probabilities(outputs: np.ndarray, sums: np.ndarray,
                         sums_one: np.ndarray, negative: np.ndarray,
                         declared: str | None, path: str) -> None:
  claim = ("says kind='probs'" if declared else
           "holds no negative value, so its rows are read as probabilities")
  if negative.any():
    raise ValueError(
        f"{path} {claim}, but {int(negative.sum())} of {len(outputs)} rows "
        f"hold negative values (down to {outputs.min():.3g}): re-record the "
        "probabilities, or save logits with kind='logits'.")
  if not sums_one.all():
    bad = sums[~sums_one]
    span = (f"{bad.min():.3g}" if f"{bad.min():.3g}" == f"{bad.max():.3g}"
            else f"{bad.min():.3g}..{bad.max():.3g}")
    raise ValueError(
        f"{path} {claim}, but {len(bad)} of {len(outputs)} rows sum to "
        f"{span}, not 1 (within "
        f"{compute.PROBS_ATOL:g}): save probabilities that sum to 1 "
        "(p / p.sum(-1, keepdims=True); an API that returns only its top-k "
        "probabilities is recorded as labels), or save logits with "
        "kind='logits' (np.savez(path, outputs=answers, kind='logits')).")


def check_suspect(path: str) -> None:
  """Checks ``--suspect`` on its own, before any work.

  Cheap: the path exists; an ``.npz`` is readable and holds ``outputs``
  (and a valid ``kind``). What needs the run (the manifest, the class count,
  the fingerprint mode) is checked when the answers are loaded.

  Args:
    path: a suspect checkpoint directory or a recorded-answers ``.npz``.

  Raises:
    FileNotFoundError: nothing at ``path``.
    ValueError: the ``.npz`` is unreadable or holds no answers.
  """
  if path.endswith(".npz"):
    read_answers(path)
  elif not os.path.exists(path):
    raise FileNotFoundError(
        f"--suspect={path}: no such file or directory (relative paths start at "
        f"{os.getcwd()}); give a checkpoint directory saved by this project or "
        "the .npz of a black-box suspect's answers.")
