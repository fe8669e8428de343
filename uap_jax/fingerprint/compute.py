"""Fingerprints: of every model of a stack, or of one suspect's recorded answers.

Both paths map raw outputs to the features of a fingerprint mode
(:data:`MODES`) and lay them out with :func:`uap_jax.fingerprint.layout.join`,
so a checkpoint and its recorded answers to the same (quantised) queries give
the same vector.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from uap_jax import config
from uap_jax.fingerprint import layout
from uap_jax.fingerprint import queries as queries_lib
from uap_jax.runtime import engine

# Fingerprint modes; the same names are the kinds of recorded outputs.
MODES = config.FP_MODES
# How far from 1 a row of recorded probabilities may sum (float32 softmax
# rows of 1,000 classes are well within it).
PROBS_ATOL = 1e-3


def _check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"Unknown fingerprint mode {mode!r}; choose one of "
                     f"{', '.join(MODES)}.")


def outputs_to_features(outputs: jax.Array, mode: str) -> jax.Array:
  """Maps raw logits to the per-query features of a fingerprint mode.

  Args:
    outputs: ``(..., C)`` logits.
    mode: ``probs`` (softmax), ``logits`` (unchanged) or ``labels`` (one-hot
      of the top-1).

  Returns:
    ``(..., C)`` features, the dtype of ``outputs``.
  """
  if mode == "probs":
    return jax.nn.softmax(outputs, axis=-1)
  if mode == "logits":
    return outputs
  if mode == "labels":
    return jax.nn.one_hot(jnp.argmax(outputs, axis=-1), outputs.shape[-1],
                          dtype=outputs.dtype)
  _check_mode(mode)
  raise AssertionError("unreachable")


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
    return layout.join(jnp.swapaxes(features, 1, 2))
  return engine.over_models(one_model, strategy)


def _unpack_model(model: Any) -> tuple[Callable, Any]:
  """``(logits_fn, variables)`` of a Stack or of such a pair."""
  if hasattr(model, "logits_fn") and hasattr(model, "variables"):
    return model.logits_fn, model.variables
  if isinstance(model, (tuple, list)) and len(model) == 2 and callable(model[0]):
    return model[0], model[1]
  raise ValueError(
      "model must be a uap_jax.runtime.stack.Stack or a pair (logits_fn, variables) "
      f"with a leading model axis, got {type(model).__name__}.")


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
    uaps: ``(U, H, W, C)`` UAPs of the victim (or one ``(H, W, C)``); ``U =
      0`` gives the clean outputs only.
    mode: ``probs`` (softmax, the paper), ``logits``, or ``labels`` (one-hot
      of the top-1: what a label-only suspect reveals).
    strategy: model-axis strategy of :func:`uap_jax.runtime.engine.over_models`.
    quantize: query with uint8-rounded images (see
      :func:`uap_jax.fingerprint.queries.query_images`).
    images_per_batch: most query images per model in one forward pass
      inside the compiled call (whole views: at least one view, ``(1 + U) *
      K`` images); ``None`` runs all views at once. With ``vmap`` the device
      holds this times the stack size at once: lower it for big models.

  Returns:
    ``(M, V, D)`` float32 fingerprints, ``D = K * (1 + U) * C``, each view laid
    out as ``(K, 1 + U, C)``.
  """
  _check_mode(mode)
  logits_fn, variables = _unpack_model(model)
  queries = queries_lib.query_images(x_points, uaps, quantize=quantize)
  if images_per_batch is not None and images_per_batch < 1:
    raise ValueError(
        f"images_per_batch must be >= 1 or None, got {images_per_batch}.")
  per_view = queries.shape[0] * queries.shape[2]
  num_views = queries.shape[1]
  # lax.map with batch_size b vmaps b views per step (b = V: one step).
  views_per_batch = num_views if images_per_batch is None else min(
      num_views, max(1, images_per_batch // per_view))
  fn = _fingerprint_fn(logits_fn, mode,
                       engine.resolve(strategy, forward_only=True),
                       views_per_batch)
  return fn(variables, jnp.swapaxes(queries, 0, 1))


def detect_output_kind(outputs: np.ndarray) -> str:
  """Guesses whether recorded outputs are ``labels``, ``probs`` or ``logits``.

  Args:
    outputs: ``(..., C)`` float outputs, or integer labels ``(...)``.

  Returns:
    ``labels`` for integer arrays or rows that are exactly one-hot,
    ``probs`` for non-negative rows summing to 1 (within
    :data:`PROBS_ATOL`), else ``logits``. It only guesses; the checks that
    answers are what they claim are
    :func:`uap_jax.fingerprint.blackbox.load_answers`'s.
  """
  outputs = np.asarray(outputs)
  if np.issubdtype(outputs.dtype, np.integer) or outputs.dtype == bool:
    return "labels"
  if outputs.size and np.all((outputs == 0) | (outputs == 1)) and np.all(
      outputs.sum(-1) == 1):
    return "labels"
  if outputs.size and outputs.min() >= 0 and np.allclose(
      outputs.sum(-1), 1.0, atol=PROBS_ATOL):
    return "probs"
  return "logits"


def _recorded_features(x: jax.Array, outputs: str, mode: str) -> jax.Array:
  """Features of ``mode`` from recorded ``outputs`` of one kind."""
  if outputs == "logits":
    return outputs_to_features(x, mode)
  if outputs == "probs":
    if mode == "logits":
      raise ValueError(
          "mode='logits' needs recorded logits, but the suspect's outputs are "
          "probabilities; use mode='probs' (or 'labels').")
    return x if mode == "probs" else outputs_to_features(x, "labels")
  if mode != "labels":
    raise ValueError(
        f"The suspect's outputs are labels only; mode={mode!r} needs more. "
        "Use mode='labels' with an encoder trained on label fingerprints.")
  return outputs_to_features(x, "labels")


def fingerprints_from_outputs(clean: np.ndarray | jax.Array,
                              perturbed: np.ndarray | jax.Array, *,
                              mode: str = "probs",
                              outputs: str = "auto") -> jax.Array:
  """Fingerprints of ONE suspect from its recorded answers to the queries.

  Gives the same vector as :func:`fingerprints` of the same model on the same
  (quantised) queries.

  Args:
    clean: ``(V, K, C)`` outputs on the clean points.
    perturbed: ``(U, V, K, C)`` outputs on the points plus each UAP (``U``
      may be 0).
    mode: fingerprint mode, as in :func:`fingerprints`.
    outputs: what was recorded: ``logits``, ``probs``, ``labels`` (one-hot
      rows) or ``auto`` (:func:`detect_output_kind`). Logits serve every
      mode; probabilities serve ``probs`` and ``labels``; labels only
      ``labels``.

  Returns:
    ``(V, D)`` float32 fingerprints.
  """
  _check_mode(mode)
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
  if outputs not in MODES:
    raise ValueError(f"Unknown recorded output kind {outputs!r}; choose one of "
                     f"auto, {', '.join(MODES)}.")
  features = _recorded_features(jnp.asarray(stacked), outputs, mode)
  # (1 + U, V, K, C) -> (V, K, 1 + U, C), the layout of a view.
  return layout.join(jnp.transpose(features, (1, 2, 0, 3)))
