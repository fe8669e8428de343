"""One call that computes a victim's UAP(s) and the summary ``uap.json`` holds."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from uap_jax.attacks import common
from uap_jax.attacks import universal

ALGORITHMS = ("deepfool", "sequential", "sgd")
ALGORITHM_NAMES = {"deepfool": "deepfool_uap_minibatch",
                   "sequential": "deepfool_uap_sequential", "sgd": "sgd_uap"}

PyTree = Any


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
    key: PRNG key; UAP ``u`` uses ``jax.random.fold_in(key, u)``.
    algorithm: ``"deepfool"`` (minibatched DeepFool-UAP), ``"sequential"``
      (original DeepFool-UAP) or ``"sgd"`` (SGD-UAP).
    p: ``"inf"`` or ``2``.
    xi: Lp radius in pixel units of [0, 1] images.
    delta: stop at fooling rate ``1 - delta``.
    max_passes: passes over ``x_train`` at most.
    num_uaps: independent UAPs (different keys).
    **options: further keyword arguments of :func:`uap` or :func:`sgd_uap`
      (batch_size, num_candidates, max_iter, learning_rate, ...).

  Returns:
    ``uaps``, a ``(num_uaps, H, W, C)`` float32 array, and a JSON-ready
    summary: algorithm, p, xi, delta, max_passes, train_samples, mean
    fooling rates on train and test data, passes and seconds (total), and per
    UAP its fooling rates, passes, norm, seconds and per-pass history.
  """
  if algorithm not in ALGORITHMS:
    raise ValueError(f"Unknown UAP algorithm {algorithm!r}; choose one of "
                     f"{ALGORITHMS}.")
  num_uaps = common.check_count("num_uaps", num_uaps)
  p_value = common.check_p(p)
  x_train = common.check_images(x_train, "x_train")
  x_test = common.check_images(x_test, "x_test")
  uaps, rows = [], []
  for u in range(num_uaps):
    kwargs = dict(key=jax.random.fold_in(key, u), xi=xi, p=p, delta=delta,
                  max_passes=max_passes, **options)
    start = time.time()
    if algorithm == "sgd":
      result = universal.sgd_uap(logits_fn, variables, x_train, **kwargs)
    else:
      method = "sequential" if algorithm == "sequential" else "minibatch"
      result = universal.uap(logits_fn, variables, x_train, method=method,
                             **kwargs)
    v = np.asarray(jax.block_until_ready(result.v))
    seconds = time.time() - start
    test_rate = float(universal.fooling_rate(logits_fn, variables, x_test, v))
    rows.append({
        "index": u, "fooling_rate_train": float(result.fooling_rate),
        "fooling_rate_test": test_rate, "passes": int(result.passes),
        "norm": float(common.flat_norm(v, p_value)), "seconds": seconds,
        "history": [None if np.isnan(h) else float(h)
                    for h in np.asarray(result.history)]})
    uaps.append(v)
  summary = {
      "algorithm": ALGORITHM_NAMES[algorithm],
      "p": "inf" if p_value != 2.0 else 2, "xi": float(xi),
      "delta": float(delta), "max_passes": int(max_passes),
      "options": {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                  for k, v in options.items()},
      "train_samples": int(x_train.shape[0]),
      "test_samples": int(x_test.shape[0]),
      "fooling_rate_train": float(np.mean([r["fooling_rate_train"] for r in rows])),
      "fooling_rate_test": float(np.mean([r["fooling_rate_test"] for r in rows])),
      "passes": [r["passes"] for r in rows],
      "seconds": float(sum(r["seconds"] for r in rows)),
      "uaps": rows,
  }
  return np.stack(uaps), summary
