"""LeNet-5 (LeCun et al. 1998) with ReLU and max pooling."""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from uap_jax.models import base

_KERNEL = 5


def _conv_padding(side: int, pad_below: int) -> tuple[int, int]:
  """Pads by 2 (5x5 'SAME') when ``side < pad_below``, else none ('VALID')."""
  pad = _KERNEL // 2 if side < pad_below else 0
  return (pad, pad)


def _after_conv(side: int, padding: tuple[int, int]) -> int:
  return side + sum(padding) - _KERNEL + 1


def _after_pool(side: int) -> int:
  return side // base.pool_window(side)


class LeNet5(nnx.Module):
  """conv5x5(6) -> pool -> conv5x5(16) -> pool -> fc120 -> fc84 -> fc.

  The original network sees 32x32 images through unpadded convolutions. Images
  smaller than 32 on a side are padded by 2 in the first convolution (the usual
  MNIST convention: 28x28 then gives the original 5x5x16 features), and the
  second convolution is padded too when its input is under 5 pixels, so 8x8
  digits work. Pooling skips sides that are already 1.
  """

  def __init__(self, *, num_classes: int, image_shape: Sequence[int],
               width: float = 1.0, mean=None, std=None, rngs: nnx.Rngs):
    h, w, c = image_shape
    self.image_shape = tuple(image_shape)
    self.normalize = base.Normalize(*base.channel_stats(mean, std, c))
    c1, c2 = base.width_of(6, width), base.width_of(16, width)
    pad1 = (_conv_padding(h, 32), _conv_padding(w, 32))
    h = _after_pool(_after_conv(h, pad1[0]))
    w = _after_pool(_after_conv(w, pad1[1]))
    pad2 = (_conv_padding(h, _KERNEL), _conv_padding(w, _KERNEL))
    h = _after_pool(_after_conv(h, pad2[0]))
    w = _after_pool(_after_conv(w, pad2[1]))
    self.conv1 = nnx.Conv(c, c1, (_KERNEL, _KERNEL), padding=pad1,
                          kernel_init=base.CONV_INIT, rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, (_KERNEL, _KERNEL), padding=pad2,
                          kernel_init=base.CONV_INIT, rngs=rngs)
    self.fc1 = nnx.Linear(h * w * c2, base.width_of(120, width), rngs=rngs)
    self.fc2 = nnx.Linear(base.width_of(120, width), base.width_of(84, width),
                          rngs=rngs)
    self.head = nnx.Linear(base.width_of(84, width), num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    base.check_images(x, self.image_shape, fixed_size=True)
    x = self.normalize(x)
    x = base.max_pool_2x2(nnx.relu(self.conv1(x)))
    x = base.max_pool_2x2(nnx.relu(self.conv2(x)))
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.fc1(x))
    x = nnx.relu(self.fc2(x))
    return self.head(x)
