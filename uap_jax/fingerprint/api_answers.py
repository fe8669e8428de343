"""What a suspect's API may do to its answers before the owner records them.

A pirate who knows it is fingerprinted can answer less: round its
probabilities, return only the top k, soften them with a temperature, add
noise to its logits, or give labels only. Each is a pure transform of
probability rows ``(..., C)``, named by a spec (:func:`parse`):

* ``round:D``: probabilities rounded to D decimals;
* ``topk:K``: the K largest probabilities, the rest zero;
* ``temperature:T``: ``softmax(log p / T)``;
* ``logit_noise:S``: ``softmax(log p + N(0, S^2))``, fresh noise per answer;
* ``labels``: one-hot top-1.

Every transform returns rows that sum to 1 (rounded and top-k rows are
renormalised, as the owner must before recording them: the answer check
refuses probabilities that do not sum to 1), so the outputs are what a
verification receives. :func:`apply` transforms whole fingerprints
(:mod:`uap_jax.fingerprint.layout`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from uap_jax.fingerprint import compute
from uap_jax.fingerprint import layout

# Probabilities are floored here before a log.
_LOG_FLOOR = 1e-12

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _normalise(p: np.ndarray) -> np.ndarray:
  return p / p.sum(-1, keepdims=True)


def _softmax(logits: np.ndarray) -> np.ndarray:
  z = np.exp(logits - logits.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def round_probs(p: np.ndarray, decimals: int) -> np.ndarray:
  """Rounded to ``decimals`` places, then renormalised.

  A row that rounds to all zeros (possible with 0 decimals) becomes its
  one-hot top-1, as an API that never answers nothing would give it.
  """
  rounded = np.round(p, decimals)
  empty = rounded.sum(-1, keepdims=True) == 0
  return _normalise(np.where(empty, labels(p), rounded))


def top_k(p: np.ndarray, k: int) -> np.ndarray:
  """The ``k`` largest probabilities of each row, renormalised; the rest 0."""
  order = np.argsort(-p, -1)
  keep = np.zeros(p.shape, bool)
  np.put_along_axis(keep, order[..., :k], True, -1)
  return _normalise(np.where(keep, p, 0.0))


def temperature(p: np.ndarray, t: float) -> np.ndarray:
  """``softmax(log p / t)``: t > 1 softens, t < 1 sharpens; top-1 unchanged."""
  return _softmax(np.log(np.maximum(p, _LOG_FLOOR)) / t)


def logit_noise(p: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
  """``softmax(log p + N(0, sigma^2))``, independent noise on every logit."""
  logits = np.log(np.maximum(p, _LOG_FLOOR))
  return _softmax(logits + rng.normal(0.0, sigma, size=p.shape))


def labels(p: np.ndarray) -> np.ndarray:
  """One-hot top-1."""
  return np.eye(p.shape[-1])[np.argmax(p, -1)]


def parse(spec: str) -> Transform:
  """The transform a spec names (module docstring); ValueError names the forms.

  Args:
    spec: ``round:D``, ``topk:K``, ``temperature:T``, ``logit_noise:S`` or ``labels``.

  Returns:
    ``(p, rng) -> p'`` on probability rows.
  """
  name, _, arg = spec.partition(":")
  forms = "round:D, topk:K, temperature:T, logit_noise:S, labels"
  try:
    if name == "labels" and not arg:
      return lambda p, rng: labels(p)
    if name == "round" and int(arg) >= 0:
      return lambda p, rng: round_probs(p, int(arg))
    if name == "topk" and int(arg) >= 1:
      return lambda p, rng: top_k(p, int(arg))
    if name == "temperature" and float(arg) > 0:
      return lambda p, rng: temperature(p, float(arg))
    if name == "logit_noise" and float(arg) >= 0:
      return lambda p, rng: logit_noise(p, float(arg), rng)
  except ValueError:
    pass
  raise ValueError(f"Unknown API answer transform {spec!r}; the forms are {forms} "
                   "(D >= 0 and K >= 1 integers, T > 0, S >= 0).")


def apply(spec: str, fingerprints: np.ndarray, num_uaps: int, num_classes: int,
          seed: int = 0) -> np.ndarray:
  """Fingerprints as a suspect whose API does ``spec`` would give them.

  Args:
    spec: the transform (:func:`parse`).
    fingerprints: ``(..., V, D)`` probability fingerprints.
    num_uaps: U.
    num_classes: C.
    seed: the noise's seed (``logit_noise``).

  Returns:
    ``(..., V, D)`` float32, every output row a distribution.
  """
  transform = parse(spec)
  outputs = layout.split(np.asarray(fingerprints, np.float64), num_uaps, num_classes)
  if compute.detect_output_kind(outputs) == "logits":
    raise ValueError("API answer transforms take probability fingerprints "
                     "(--fp_mode=probs): these rows are not distributions.")
  return layout.join(transform(outputs, np.random.default_rng(seed))).astype(np.float32)
