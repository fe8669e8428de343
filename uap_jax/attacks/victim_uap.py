"""The one UAP driver: a victim's UAPs and the summary ``uap.json`` holds.

The ``uap`` stage calls :func:`compute_victim_uap` with the run's base key
``jax.random.key(cfg.seed)``; UAP ``u`` is drawn from :func:`uap_key`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import numpy as np

from uap_jax import config
from uap_jax.attacks import common
from uap_jax.attacks import fooling
from uap_jax.attacks import uap_deepfool
from uap_jax.attacks import uap_sgd

PyTree = Any

ALGORITHMS = config.UAP_METHODS
# The name each algorithm has in uap.json (the report prints it).
ALGORITHM_NAMES = {"deepfool": "deepfool_uap_minibatch",
                   "pipelined": "deepfool_uap_pipelined",
                   "sequential": "deepfool_uap_sequential", "sgd": "sgd_uap"}
# UAP u folds 1000 + u into the run's base key, not u: the other stages fold
# small indices of their own into the same key, and every run so far drew its
# UAPs this way (changing it changes every UAP and every result after it).
UAP_KEY_OFFSET = 1000


def uap_key(key: jax.Array, u: int) -> jax.Array:
  """The PRNG key of UAP ``u`` given the run's base key.

  Args:
    key: the run's base key, ``jax.random.key(cfg.seed)``.
    u: index of the UAP, ``0 <= u < num_uaps``.

  Returns:
    ``jax.random.fold_in(key, UAP_KEY_OFFSET + u)``.
  """
  return jax.random.fold_in(key, UAP_KEY_OFFSET + u)


def no_uap_summary(p: Any) -> dict:
  """The ``uap.json`` summary of ``num_uaps=0`` (clean fingerprints only).

  Args:
    p: norm of the UAP ball the run was set up with (``"inf"`` or ``2``).

  Returns:
    A JSON-ready summary with algorithm ``"none"`` and no UAP rows.
  """
  return {"num_uaps": 0, "algorithm": "none", "p": _norm_name(p), "xi": 0.0,
          "delta": None, "max_passes": 0, "train_samples": 0,
          "fooling_rate_train": None, "fooling_rate_test": None, "passes": [],
          "seconds": 0.0, "uaps": []}


def compute_victim_uap(logits_fn: common.LogitsFn, variables: PyTree,
                       x_train: Any, x_test: Any, *, key: jax.Array,
                       algorithm: str = "deepfool", p: Any = "inf",
                       xi: float, delta: float = 0.2, max_passes: int = 10,
                       num_uaps: int = 1, **options) -> tuple[np.ndarray, dict]:
  """UAP(s) of one victim model, with the figures a run records.

  Args:
    logits_fn: pure ``(variables, x) -> logits`` of the victim.
    variables: the victim's variables (one model, no model axis).
    x_train: ``(N, H, W, C)`` images the UAP is computed on (float in [0, 1]
      or uint8).
    x_test: held-out images its fooling rate is also measured on.
    key: the run's base PRNG key; UAP ``u`` uses :func:`uap_key`, i.e.
      ``jax.random.fold_in(key, UAP_KEY_OFFSET + u)``.
    algorithm: one of ``config.UAP_METHODS``: ``"deepfool"`` (minibatched
      DeepFool-UAP), ``"pipelined"`` (DeepFool-UAP with refilled slots),
      ``"sequential"`` (original DeepFool-UAP) or ``"sgd"`` (SGD-UAP).
    p: ``"inf"`` or ``2``.
    xi: Lp radius in pixel units of [0, 1] images.
    delta: stop at fooling rate ``1 - delta``.
    max_passes: passes over ``x_train`` at most.
    num_uaps: independent UAPs (different keys); 0 gives none.
    **options: further keyword arguments of :func:`uap_deepfool.uap` or
      :func:`uap_sgd.sgd_uap` (batch_size, num_candidates, max_iter, ...).

  Returns:
    ``uaps``, a ``(num_uaps, H, W, C)`` float32 array, and the JSON-ready
    summary ``uap.json`` holds: num_uaps, algorithm, p, xi, delta,
    max_passes, train_samples, mean fooling rates on train and test data,
    passes and seconds (total), and per UAP (``uaps``) its index, fooling
    rates, passes, norm, seconds and per-pass history. With ``num_uaps=0``
    an empty ``(0, H, W, C)`` array and :func:`no_uap_summary`.
  """
  if algorithm not in ALGORITHMS:
    raise ValueError(f"Unknown UAP algorithm {algorithm!r}; choose one of "
                     f"{ALGORITHMS}.")
  num_uaps = common.check_count("num_uaps", num_uaps, minimum=0)
  p_value = common.check_p(p)
  x_train = common.check_images(x_train, "x_train")
  x_test = common.check_images(x_test, "x_test")
  if num_uaps == 0:
    return (np.zeros((0, *x_train.shape[1:]), np.float32), no_uap_summary(p))
  uaps, rows = [], []
  for u in range(num_uaps):
    kwargs = dict(key=uap_key(key, u), xi=xi, p=p, delta=delta,
                  max_passes=max_passes, **options)
    start = time.time()
    if algorithm == "sgd":
      result = uap_sgd.sgd_uap(logits_fn, variables, x_train, **kwargs)
    else:
      method = {"deepfool": "minibatch"}.get(algorithm, algorithm)
      result = uap_deepfool.uap(logits_fn, variables, x_train, method=method,
                                **kwargs)
    v = np.asarray(jax.block_until_ready(result.v))
    rows.append(_row(u, result, v, time.time() - start, p_value,
                     fooling.fooling_rate(logits_fn, variables, x_test, v)))
    uaps.append(v)
  summary = {
      "num_uaps": num_uaps, "algorithm": ALGORITHM_NAMES[algorithm],
      "p": _norm_name(p), "xi": float(xi), "delta": float(delta),
      "max_passes": int(max_passes), "train_samples": int(x_train.shape[0]),
      **_totals(rows), "uaps": rows}
  return np.stack(uaps), summary


def _totals(rows: list[dict]) -> dict:
  """Mean fooling rates, passes and total seconds over the UAP rows."""
  return {
      "fooling_rate_train": float(np.mean([r["fooling_rate_train"] for r in rows])),
      "fooling_rate_test": float(np.mean([r["fooling_rate_test"] for r in rows])),
      "passes": [r["passes"] for r in rows],
      "seconds": float(sum(r["seconds"] for r in rows))}


def _row(u, result, v, seconds, p_value, test_rate) -> dict:
  """One UAP's entry of the summary's ``uaps`` list."""
  # NumPy norms of the float32 array (not common.flat_norm) keep the recorded
  # figures what the stage has always written.
  norm = np.abs(v).max() if p_value == math.inf else np.sqrt((v ** 2).sum())
  return {"index": u, "fooling_rate_train": float(result.fooling_rate),
          "fooling_rate_test": float(test_rate), "passes": int(result.passes),
          "norm": float(norm), "seconds": seconds,
          "history": [None if np.isnan(h) else float(h)
                      for h in np.asarray(result.history)]}


def _norm_name(p: Any) -> str:
  """``"inf"`` or ``"2"``, as ``config.UAP_NORMS`` spells the norms."""
  return "inf" if common.check_p(p) == math.inf else "2"
