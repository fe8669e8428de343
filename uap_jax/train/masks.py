"""Which parameters train: the fine-tune-last head mask and pruning masks."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def head_mask(params: PyTree) -> PyTree:
  """True for parameters of the final ``head`` layer (fine-tune-last).

  Args:
    params: parameters of one model.

  Returns:
    A pytree of bools shaped like ``params``'s structure.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(getattr(k, "key", None) == "head" for k in path), params)


def prunable(path) -> bool:
  """Kernels of conv and linear layers are pruned; biases and BatchNorm not.

  Args:
    path: a pytree key path of one parameter.

  Returns:
    Whether the parameter is a prunable kernel.
  """
  return getattr(path[-1], "key", None) == "kernel" or (
      len(path) > 1 and getattr(path[-2], "key", None) == "kernel")


def magnitude_mask(params: PyTree, ratio: float) -> PyTree:
  """Global magnitude pruning mask of ONE model: zero the smallest ``ratio``.

  Args:
    params: parameters of one model.
    ratio: fraction in [0, 1) of prunable weights (conv/linear kernels) to zero.

  Returns:
    A pytree of 0/1 float masks shaped like ``params`` (1 for non-prunable).
  """
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"prune ratio must be in [0, 1), got {ratio}.")
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  weights = jnp.concatenate([jnp.abs(v).ravel() for p, v in flat if prunable(p)])
  k = int(ratio * weights.size)
  threshold = jnp.sort(weights)[k - 1] if k > 0 else -1.0
  return jax.tree_util.tree_map_with_path(
      lambda p, v: (jnp.abs(v) > threshold).astype(v.dtype) if prunable(p)
      else jnp.ones_like(v), params)
