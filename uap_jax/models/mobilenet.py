"""MobileNetV2 (Sandler et al. 2018), CIFAR-style strides."""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from uap_jax.models import base

# (expansion, channels, blocks, first stride). The paper's ImageNet table with
# the stem and the second stage at stride 1 instead of 2, the usual CIFAR
# adaptation: 32x32 inputs end at 4x4 instead of 1x1.
MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2),
                      (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                      (6, 320, 1, 1))
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


class InvertedResidual(nnx.Module):
  """1x1 expand -> 3x3 depthwise -> 1x1 linear projection (+ x if same shape)."""

  def __init__(self, in_features: int, out_features: int, strides: int,
               expansion: int, *, rngs: nnx.Rngs):
    hidden = in_features * expansion
    self.expand = (base.ConvBN(in_features, hidden, 1, rngs=rngs)
                   if expansion != 1 else None)
    # feature_group_count == channels makes the convolution depthwise.
    self.depthwise = base.ConvBN(hidden, hidden, 3, strides, groups=hidden,
                                 rngs=rngs)
    self.project = base.ConvBN(hidden, out_features, 1, rngs=rngs)
    self.residual = strides == 1 and in_features == out_features

  def __call__(self, x: jax.Array) -> jax.Array:
    y = x if self.expand is None else nnx.relu6(self.expand(x))
    y = self.project(nnx.relu6(self.depthwise(y)))
    return x + y if self.residual else y


class MobileNetV2(nnx.Module):
  """Stem -> inverted residual stages -> 1x1 conv -> global average -> linear.

  ``width`` scales every layer's channels, the last 1x1 convolution (1280)
  included, so small widths give cheap models for CPU experiments.
  """

  def __init__(self, *, num_classes: int, image_shape: Sequence[int],
               width: float = 1.0, mean=None, std=None, rngs: nnx.Rngs):
    c = image_shape[2]
    self.image_shape = tuple(image_shape)
    self.normalize = base.Normalize(*base.channel_stats(mean, std, c))
    in_features = base.width_of(STEM_CHANNELS, width)
    self.stem = base.ConvBN(c, in_features, 3, rngs=rngs)
    blocks = []
    for expansion, channels, num_blocks, first_stride in MOBILENETV2_STAGES:
      out_features = base.width_of(channels, width)
      for i in range(num_blocks):
        blocks.append(InvertedResidual(in_features, out_features,
                                       first_stride if i == 0 else 1,
                                       expansion, rngs=rngs))
        in_features = out_features
    self.blocks = nnx.List(blocks)
    last = base.width_of(LAST_CHANNELS, width)
    self.last = base.ConvBN(in_features, last, 1, rngs=rngs)
    self.head = nnx.Linear(last, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    base.check_images(x, self.image_shape, fixed_size=False)
    x = nnx.relu6(self.stem(self.normalize(x)))
    for block in self.blocks:
      x = block(x)
    x = nnx.relu6(self.last(x))
    return self.head(base.global_avg_pool(x))
