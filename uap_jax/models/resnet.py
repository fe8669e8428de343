"""CIFAR-style residual networks (He et al. 2016) with basic blocks."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from uap_jax.models import base

# name -> (stem channels, ((channels, blocks, first stride), ...), shortcut).
# "projection": 1x1 conv + BatchNorm where the shape changes (option B, as in
# the usual CIFAR ResNet-18/34); "pad": strided identity padded with zero
# channels, no parameters (option A, as in the paper's CIFAR ResNet-20).
RESNET_CONFIGS = {
    "resnet18": (64, ((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)),
                 "projection"),
    "resnet34": (64, ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)),
                 "projection"),
    "resnet20": (16, ((16, 3, 1), (32, 3, 2), (64, 3, 2)), "pad"),
}


class BasicBlock(nnx.Module):
  """relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))."""

  def __init__(self, in_features: int, out_features: int, strides: int,
               shortcut: str, *, rngs: nnx.Rngs):
    self.conv1 = base.ConvBN(in_features, out_features, 3, strides, rngs=rngs)
    self.conv2 = base.ConvBN(out_features, out_features, 3, 1, rngs=rngs)
    self.strides = strides
    self.extra_channels = out_features - in_features
    reshapes = strides != 1 or in_features != out_features
    self.projection = (base.ConvBN(in_features, out_features, 1, strides,
                                   rngs=rngs)
                       if reshapes and shortcut == "projection" else None)

  def _shortcut(self, x: jax.Array) -> jax.Array:
    if self.projection is not None:
      return self.projection(x)
    # Strided slicing gives ceil(side / stride), like the 'SAME' convolution.
    x = x[:, ::self.strides, ::self.strides, :]
    if self.extra_channels:
      low = self.extra_channels // 2
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0),
                      (low, self.extra_channels - low)))
    return x

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv2(nnx.relu(self.conv1(x)))
    return nnx.relu(y + self._shortcut(x))


class ResNet(nnx.Module):
  """3x3 stem -> stages of basic blocks -> global average -> linear.

  CIFAR-style: no 7x7 stem and no stem max pool, so 32x32 inputs keep full
  resolution in the first stage. Strided 'SAME' convolutions map a side s to
  ceil(s / 2), never below 1, so any image size works.
  """

  def __init__(self, *, config: str, num_classes: int,
               image_shape: Sequence[int], width: float = 1.0, mean=None,
               std=None, rngs: nnx.Rngs):
    if config not in RESNET_CONFIGS:
      raise ValueError(f"Unknown ResNet config {config!r}; known: "
                       f"{', '.join(RESNET_CONFIGS)}.")
    stem, stages, shortcut = RESNET_CONFIGS[config]
    c = image_shape[2]
    self.image_shape = tuple(image_shape)
    self.normalize = base.Normalize(*base.channel_stats(mean, std, c))
    in_features = base.width_of(stem, width)
    self.stem = base.ConvBN(c, in_features, 3, rngs=rngs)
    blocks = []
    for channels, num_blocks, first_stride in stages:
      out_features = base.width_of(channels, width)
      for i in range(num_blocks):
        blocks.append(BasicBlock(in_features, out_features,
                                 first_stride if i == 0 else 1, shortcut,
                                 rngs=rngs))
        in_features = out_features
    self.blocks = nnx.List(blocks)
    self.head = nnx.Linear(in_features, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    base.check_images(x, self.image_shape, fixed_size=False)
    x = nnx.relu(self.stem(self.normalize(x)))
    for block in self.blocks:
      x = block(x)
    return self.head(base.global_avg_pool(x))


# Registry constructors: (*, num_classes, image_shape, width, mean, std, rngs).
ResNet18 = functools.partial(ResNet, config="resnet18")
ResNet20 = functools.partial(ResNet, config="resnet20")
ResNet34 = functools.partial(ResNet, config="resnet34")
