"""What every classifier of the zoo shares: input checks and normalisation.

Models take images in pixel units of [0, 1] (NHWC, float32) and normalise
them inside, so that attack budgets such as a UAP's ``xi`` are always in
pixel units of [0, 1] whatever the model's normalisation.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class Normalize(nnx.Module):
  """Per-channel ``(x - mean) / std``; mean and std are static constants."""

  def __init__(self, mean: Sequence[float], std: Sequence[float]):
    self.mean = tuple(float(m) for m in mean)
    self.std = tuple(float(s) for s in std)

  def __call__(self, x: jax.Array) -> jax.Array:
    return (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)


def channel_stats(mean: Sequence[float] | float | None,
                  std: Sequence[float] | float | None,
                  channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Broadcasts optional mean/std to one value per channel (default 0.5/0.25)."""
  def per_channel(v, default):
    if v is None:
      v = default
    v = (float(v),) * channels if isinstance(v, (int, float)) else tuple(map(float, v))
    if len(v) != channels:
      raise ValueError(f"Normalisation has {len(v)} values for {channels} channels.")
    return v
  mean, std = per_channel(mean, 0.5), per_channel(std, 0.25)
  if min(std) <= 0:
    raise ValueError(f"Normalisation std must be > 0, got {std}.")
  return mean, std


def width_of(base: int, width: float) -> int:
  """Channel count ``base * width``, at least 1."""
  return max(1, int(round(base * width)))
