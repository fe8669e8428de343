"""What every classifier of the zoo shares: input checks and normalisation.

Models take images in pixel units of [0, 1] (NHWC, float32) and normalise
them inside, so that attack budgets such as a UAP's ``xi`` are always in
pixel units of [0, 1] whatever the model's normalisation.
"""

from __future__ import annotations

import functools
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


# Flax's default BatchNorm momentum (0.99) adapts the running statistics too
# slowly for the short trainings of a model zoo; 0.9 is PyTorch's default.
BATCH_NORM_MOMENTUM = 0.9
# He initialisation suits convolutions followed by ReLU.
CONV_INIT = nnx.initializers.he_normal()


def check_images(x: jax.Array, image_shape: Sequence[int], *,
                 fixed_size: bool) -> None:
  """Raises a clear ValueError when images do not fit the model.

  Shapes are static under ``jax.jit``, so the check costs nothing at run time.

  Args:
    x: images, ``(N, H, W, C)``.
    image_shape: the ``(H, W, C)`` the model was built for.
    fixed_size: whether the model needs exactly ``H x W`` (it flattens) or
      takes any size (it pools globally).
  """
  h, w, c = image_shape
  if x.ndim != 4 or x.shape[-1] != c:
    raise ValueError(
        f"Model built for images (N, H, W, {c}) got an array of shape "
        f"{x.shape}."
        " Pass NHWC images with the channel count given in image_shape.")
  if fixed_size and tuple(x.shape[1:3]) != (h, w):
    raise ValueError(
        f"Model built for {h}x{w} images got {x.shape[1]}x{x.shape[2]}. Resize "
        "the images or build the model with image_shape=(H, W, C) of the data.")


def pool_window(side: int) -> int:
  """2 when a side can halve, 1 (no pooling) when it is already 1."""
  return 2 if side >= 2 else 1


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling, stride 2, that never shrinks a side below 1.

  A side of 1 is left alone, so stacks of pooling stages work on small
  images (8x8 digits) as on 32x32 ones.

  The same values and gradients as ``lax.reduce_window`` max pooling (ties
  included: the gradient goes to the first maximum of a window, row by row).
  A forward pass is a plain maximum over reshaped windows; derivatives come
  from a custom JVP rule of elementwise operations, because the gradient of
  ``reduce_window`` is XLA's select-and-scatter, which is slow on CPU (input
  gradients for DeepFool and SGD-UAP, training steps of pooled conv nets),
  and because computing the first maximum in every forward pass made
  inference 2.6x slower (see the README's Benchmarks).
  """
  wh, ww = pool_window(x.shape[1]), pool_window(x.shape[2])
  if (wh, ww) == (1, 1):
    return x
  return _window_max(x, wh, ww)


def _windows(x: jax.Array, wh: int, ww: int) -> jax.Array:
  """``(N, H, W, C) -> (N, H // wh, wh, W // ww, ww, C)``, odd edges dropped."""
  n, h, w, c = x.shape
  h, w = h // wh, w // ww
  return x[:, :h * wh, :w * ww].reshape(n, h, wh, w, ww, c)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _window_max(x: jax.Array, wh: int, ww: int) -> jax.Array:
  return jnp.max(_windows(x, wh, ww), axis=(2, 4))


@_window_max.defjvp
def _window_max_jvp(wh, ww, primals, tangents):
  (x,), (dx,) = primals, tangents
  windows = _windows(x, wh, ww)
  top = jnp.max(windows, axis=(2, 4))
  is_top = windows == top[:, :, None, :, None, :]
  # The first maximum in row-major order within each window.
  n, h, _, w, _, c = windows.shape
  flat = is_top.transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, wh * ww, c)
  first = flat & (jnp.cumsum(flat, axis=3) == 1)
  first = first.reshape(n, h, w, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
  d_top = jnp.sum(jnp.where(first, _windows(dx, wh, ww), 0), axis=(2, 4))
  # The value is the window's maximum (an infinite or NaN one too); the
  # derivative there is 0, as before this rule existed.
  return top, jnp.where(jnp.isfinite(top), d_top, 0)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """``(N, H, W, C) -> (N, C)``."""
  return jnp.mean(x, axis=(1, 2))


class ConvBN(nnx.Module):
  """Convolution (no bias: BatchNorm's shift replaces it) then BatchNorm."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int = 3,
               strides: int = 1, *, groups: int = 1, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_features, out_features, (kernel_size, kernel_size),
                         strides=strides, padding="SAME", use_bias=False,
                         feature_group_count=groups, kernel_init=CONV_INIT,
                         rngs=rngs)
    self.bn = nnx.BatchNorm(out_features, momentum=BATCH_NORM_MOMENTUM,
                            rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.bn(self.conv(x))
