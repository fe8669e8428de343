"""The query images of a fingerprint: points, and points plus each UAP.

Query images are quantised to uint8 pixel levels by default, because a
black-box suspect can only be sent 8-bit images (see
:mod:`uap_jax.fingerprint.blackbox`): the fingerprint of a checkpoint and the
fingerprint from the same model's recorded answers then see identical inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def query_images(x_points: np.ndarray | jax.Array, uaps: np.ndarray | jax.Array,
                 *, quantize: bool = True) -> jax.Array:
  """The images a model is queried with, in the export order.

  Args:
    x_points: ``(K, V, H, W, C)`` fingerprint points, float in [0, 1] or
      uint8.
    uaps: ``(U, H, W, C)`` perturbations (or one ``(H, W, C)``), pixel units;
      ``U = 0`` queries the clean points only.
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


def check_points_and_uaps(x_points: np.ndarray | jax.Array,
                          uaps: np.ndarray | jax.Array
                          ) -> tuple[jax.Array, jax.Array]:
  """Validates and converts fingerprint points and UAPs.

  Args:
    x_points: ``(K, V, H, W, C)`` points, float in [0, 1] or uint8.
    uaps: ``(U, H, W, C)`` UAPs (``U >= 0``) or one ``(H, W, C)``.

  Returns:
    ``x_points`` in [0, 1] and ``uaps`` ``(U, H, W, C)``, both float32.
  """
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
  if not np.all(np.isfinite(uaps)):
    raise ValueError("uaps contain NaN or inf; recompute the UAP.")
  return jnp.asarray(x_points), jnp.asarray(uaps)
