"""Shared pieces of the attacks: argument checks, norms, projections, losses.

Perturbations live in pixel units of [0, 1] images whatever the model's
normalisation (models normalise inside, see :mod:`uap_jax.models.base`), and a
perturbed image ``x + delta`` is always clipped back to [0, 1].
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
LogitsFn = Callable[[PyTree, jax.Array], jax.Array]

# Slack for float32 round-off when checking images against [0, 1].
_RANGE_TOL = 1e-6
_TINY = 1e-12


def check_p(p: Any) -> float:
  """Canonical norm order: ``2.0`` or ``math.inf``.

  Args:
    p: 2, ``"2"``, ``"l2"``, ``np.inf``, ``"inf"`` or ``"linf"``.

  Returns:
    ``2.0`` or ``math.inf`` (hashable, usable as a static jit argument).
  """
  text = str(p).strip().lower()
  if text in ("2", "2.0", "l2"):
    return 2.0
  if text in ("inf", "linf", "l-inf", "l_inf", "infinity"):
    return math.inf
  raise ValueError(
      f"Unsupported norm p={p!r}: choose p=2 (L2 ball) or p=inf (L-infinity "
      "ball), e.g. p='inf'.")


def check_positive(name: str, value: Any) -> float:
  """A finite number > 0, else a ValueError naming ``name``."""
  value = float(value)
  if not math.isfinite(value) or value <= 0:
    raise ValueError(
        f"{name} must be a finite number > 0 (pixel units of [0, 1] images), "
        f"got {value}.")
  return value


def check_fraction(name: str, value: Any) -> float:
  """A number strictly inside (0, 1), else a ValueError naming ``name``."""
  value = float(value)
  if not 0.0 < value < 1.0:
    raise ValueError(
        f"{name} must lie strictly between 0 and 1 (the run stops at fooling "
        f"rate >= 1 - {name}), got {value}; e.g. {name}=0.2.")
  return value


def check_count(name: str, value: Any, minimum: int = 1) -> int:
  """An integer >= ``minimum``, else a ValueError naming ``name``."""
  if int(value) != value or int(value) < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def check_images(x: Any, name: str = "x") -> jax.Array:
  """Images as float32 NHWC in [0, 1]; uint8 pixels are scaled by 1/255.

  Range checks need concrete values, so they are skipped for tracers (a
  caller inside its own ``jit`` answers for its inputs).

  Args:
    x: ``(N, H, W, C)`` images, float in [0, 1] or uint8 in [0, 255].
    name: argument name used in error messages.

  Returns:
    ``(N, H, W, C)`` float32 array.
  """
  if isinstance(x, np.ndarray) and x.dtype == np.uint8:
    x = jnp.asarray(x, jnp.float32) / 255.0
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(
        f"{name} must be a batch of images (N, H, W, C), got shape {x.shape}; "
        "add a leading batch axis with x[None] for a single image.")
  if x.shape[0] == 0:
    raise ValueError(
        f"{name} is empty (shape {x.shape}): pass at least one image.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
        f"{name} has dtype {x.dtype}: pass float images in [0, 1] or uint8 "
        "pixels in [0, 255].")
  x = x.astype(jnp.float32)
  if not isinstance(x, jax.core.Tracer):
    lo, hi = float(jnp.min(x)), float(jnp.max(x))
    if not (lo >= -_RANGE_TOL and hi <= 1.0 + _RANGE_TOL):
      raise ValueError(
          f"{name} has values in [{lo:.4g}, {hi:.4g}], outside [0, 1]: attacks "
          "take images in pixel units of [0, 1] (models normalise inside); "
          "divide uint8 pixels by 255 and do not pass normalised images.")
  return x


def check_labels(y: Any, n: int, num_classes: int | None = None,
                 name: str = "y") -> jax.Array:
  """Integer labels of shape ``(n,)``."""
  y = jnp.asarray(y)
  if y.shape != (n,) or not jnp.issubdtype(y.dtype, jnp.integer):
    raise ValueError(
        f"{name} must be integer class labels of shape ({n},), got dtype "
        f"{y.dtype} shape {y.shape}.")
  return y.astype(jnp.int32)


def flat_norm(v: jax.Array, p: float, batch_dims: int = 0) -> jax.Array:
  """Lp norm over all axes after the first ``batch_dims`` ones."""
  axes = tuple(range(batch_dims, v.ndim))
  if p == 2.0:
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=axes))
  return jnp.max(jnp.abs(v), axis=axes)


def project(v: jax.Array, p: float, xi: jax.Array | float,
            batch_dims: int = 0) -> jax.Array:
  """Projects ``v`` onto the Lp ball of radius ``xi`` (per leading item).

  Args:
    v: perturbation(s); the first ``batch_dims`` axes index independent ones.
    p: ``2.0`` or ``math.inf``.
    xi: radius, pixel units of [0, 1] images.
    batch_dims: number of leading axes that are not part of one perturbation.

  Returns:
    The projection, same shape and dtype as ``v``.
  """
  if p != 2.0:
    return jnp.clip(v, -xi, xi)
  norm = flat_norm(v, 2.0, batch_dims)
  # Dividing by (norm + tiny) and capping at 1 keeps ||v|| <= xi in float32.
  scale = jnp.minimum(1.0, xi / (norm + _TINY)) * (1.0 - 1e-6)
  scale = jnp.where(norm <= xi, 1.0, scale)
  return v * scale.reshape(scale.shape + (1,) * (v.ndim - batch_dims)).astype(v.dtype)


def normalize_direction(g: jax.Array, p: float, batch_dims: int = 1) -> jax.Array:
  """Steepest-ascent direction of unit Lp norm for gradient ``g``.

  For L-inf this is ``sign(g)``; for L2 it is ``g / ||g||_2``.
  """
  if p != 2.0:
    return jnp.sign(g)
  norm = flat_norm(g, 2.0, batch_dims)
  return g / (norm.reshape(norm.shape + (1,) * (g.ndim - batch_dims)) + _TINY)


def perturb(x: jax.Array, delta: jax.Array) -> jax.Array:
  """``clip(x + delta, 0, 1)``: the perturbed image in the valid range."""
  return jnp.clip(x + delta, 0.0, 1.0)


def random_in_ball(key: jax.Array, shape: tuple[int, ...], p: float,
                   radius: jax.Array | float, batch_dims: int = 1) -> jax.Array:
  """Uniform random points of the Lp ball (one per leading item)."""
  if p != 2.0:
    return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0) * radius
  key_dir, key_rad = jax.random.split(key)
  direction = normalize_direction(
      jax.random.normal(key_dir, shape, jnp.float32), 2.0, batch_dims)
  dim = math.prod(shape[batch_dims:])
  u = jax.random.uniform(key_rad, shape[:batch_dims], jnp.float32)
  r = radius * u ** (1.0 / dim)
  return direction * r.reshape(r.shape + (1,) * (len(shape) - batch_dims))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy, shape ``(N,)``."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example ``f_y - max_{k != y} f_k`` (> 0 while ``y`` is on top)."""
  logits = logits.astype(jnp.float32)
  true = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool),
                     -jnp.inf, logits)
  return true - jnp.max(others, axis=-1)


def pad_to_multiple(x: jax.Array, multiple: int) -> tuple[jax.Array, jax.Array]:
  """Pads axis 0 to a multiple (repeating item 0); returns data and validity."""
  n = x.shape[0]
  pad = (-n) % multiple
  valid = jnp.arange(n + pad) < n
  if pad:
    x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)])
  return x, valid


def predict_labels(logits_fn: LogitsFn, variables: PyTree, x: jax.Array,
                   batch_size: int) -> jax.Array:
  """Top-1 labels of ``x`` (whose length is a multiple of ``batch_size``)."""
  chunks = x.reshape((-1, batch_size) + x.shape[1:])
  labels = jax.lax.map(
      lambda xb: jnp.argmax(logits_fn(variables, xb), -1).astype(jnp.int32),
      chunks)
  return labels.reshape(-1)


def fooled_mask(logits_fn: LogitsFn, variables: PyTree, x: jax.Array,
                clean_labels: jax.Array, v: jax.Array,
                batch_size: int) -> jax.Array:
  """Whether ``clip(x + v)`` changes each input's top-1 label."""
  return predict_labels(logits_fn, variables, perturb(x, v), batch_size) != clean_labels
