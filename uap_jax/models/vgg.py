"""VGG-style networks: a small 3-block CNN and CIFAR-style VGG-11/13/16."""

from __future__ import annotations

import functools
from typing import Sequence

import jax
from flax import nnx

from uap_jax.models import base

# Channels of each 3x3 convolution; "M" is a 2x2 max pool. The CIFAR variants
# of Simonyan & Zisserman's configurations A, B and D, with BatchNorm.
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "small": (32, "M", 64, "M", 128, "M"),
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M",
              512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512,
              "M", 512, 512, 512, "M"),
}


class VGG(nnx.Module):
  """[conv3x3 -> BatchNorm -> ReLU]* with max pools -> global average -> linear.

  The CIFAR-style head is one linear layer. Global average pooling (the
  features are 1x1 on 32x32 inputs, where it equals flattening) lets the same
  network take any image size; pools are skipped on sides already at 1.
  """

  def __init__(self, *, config: str, num_classes: int,
               image_shape: Sequence[int], width: float = 1.0, mean=None,
               std=None, rngs: nnx.Rngs):
    if config not in VGG_CONFIGS:
      raise ValueError(f"Unknown VGG config {config!r}; known: "
                       f"{', '.join(VGG_CONFIGS)}.")
    c = image_shape[2]
    self.image_shape = tuple(image_shape)
    self.normalize = base.Normalize(*base.channel_stats(mean, std, c))
    # True after a conv block means "pool after it".
    layers, pool_after, in_features = [], [], c
    for item in VGG_CONFIGS[config]:
      if item == "M":
        pool_after[-1] = True
        continue
      out_features = base.width_of(item, width)
      layers.append(base.ConvBN(in_features, out_features, 3, rngs=rngs))
      pool_after.append(False)
      in_features = out_features
    self.layers = nnx.List(layers)
    self.pool_after = tuple(pool_after)
    self.head = nnx.Linear(in_features, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    base.check_images(x, self.image_shape, fixed_size=False)
    x = self.normalize(x)
    for layer, pool in zip(self.layers, self.pool_after):
      x = nnx.relu(layer(x))
      if pool:
        x = base.max_pool_2x2(x)
    return self.head(base.global_avg_pool(x))


# Registry constructors: (*, num_classes, image_shape, width, mean, std, rngs).
SmallCNN = functools.partial(VGG, config="small")
VGG11 = functools.partial(VGG, config="vgg11")
VGG13 = functools.partial(VGG, config="vgg13")
VGG16 = functools.partial(VGG, config="vgg16")
