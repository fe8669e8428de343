"""Classifier zoo, built by name.

Every model maps float32 images in [0, 1], shape ``(N, H, W, C)``, to logits
``(N, num_classes)``, normalising inside (see :mod:`uap_jax.models.base`).
``model.train()`` / ``model.eval()`` switch BatchNorm between batch and
running statistics (momentum 0.9). No model uses dropout, so a forward pass
needs no RNG. ``nnx.split(model, nnx.Param, ...)`` gives the trainable
parameters and the rest (BatchNorm running statistics; empty without BatchNorm).

Trainable parameters at width 1, 3x32x32 inputs, 10 classes:

=============  ===========  ==================================================
name           parameters   architecture
=============  ===========  ==================================================
mlp               820,874   flatten, 256, 128 (fixed input size)
lenet5             62,006   LeNet-5, ReLU + max pool (fixed input size)
small_cnn          94,762   3 x [conv3x3 32/64/128, BN, ReLU, pool], GAP
vgg11           9,228,362   CIFAR VGG-11 with BN, GAP, one linear layer
vgg13           9,413,066   CIFAR VGG-13 with BN, GAP, one linear layer
vgg16          14,724,042   CIFAR VGG-16 with BN, GAP, one linear layer
resnet18       11,173,962   CIFAR ResNet-18, projection shortcuts
resnet34       21,282,122   CIFAR ResNet-34, projection shortcuts
resnet20          269,722   He et al. CIFAR ResNet-20, zero-padded shortcuts
mobilenetv2     2,236,682   MobileNetV2, stride 1 in stem and stage 2
=============  ===========  ==================================================

Models with global average pooling (GAP) take any image size; pooling and
strided convolutions never shrink a side below 1, so 8x8 digits work.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
from flax import nnx

from uap_jax.models.lenet import LeNet5
from uap_jax.models.mlp import MLP
from uap_jax.models.mobilenet import MobileNetV2
from uap_jax.models.resnet import ResNet18, ResNet20, ResNet34
from uap_jax.models.vgg import VGG11, VGG13, VGG16, SmallCNN

# name -> constructor(*, num_classes, image_shape, width, mean, std, rngs).
ARCHITECTURES: dict[str, Callable[..., nnx.Module]] = {
    "mlp": MLP,
    "lenet5": LeNet5,
    "small_cnn": SmallCNN,
    "vgg11": VGG11,
    "vgg13": VGG13,
    "vgg16": VGG16,
    "resnet18": ResNet18,
    "resnet20": ResNet20,
    "resnet34": ResNet34,
    "mobilenetv2": MobileNetV2,
}


def register(name: str, constructor: Callable[..., nnx.Module]) -> None:
  """Adds an architecture (for users' own models) under ``name``."""
  ARCHITECTURES[name] = constructor


def check_arch(arch: str) -> None:
  """Raises a clear error for an unknown architecture name."""
  if arch not in ARCHITECTURES:
    raise ValueError(
        f"Unknown architecture {arch!r}. Known: {', '.join(sorted(ARCHITECTURES))}"
        ". Register your own with uap_jax.models.register(name, constructor).")


def build(arch: str, *, num_classes: int, image_shape: Sequence[int],
          width: float = 1.0, mean=None, std=None, seed: int = 0) -> nnx.Module:
  """Builds a classifier by name.

  Args:
    arch: a key of :data:`ARCHITECTURES`.
    num_classes: number of output logits.
    image_shape: ``(H, W, C)`` of the inputs; C is 1 or 3.
    width: channel multiplier (1.0 is the architecture's standard width).
    mean: per-channel (or scalar) mean of [0, 1] pixels, for normalisation.
    std: per-channel (or scalar) standard deviation, for normalisation.
    seed: initialisation seed.

  Returns:
    An ``nnx.Module`` mapping ``(N, H, W, C)`` images to ``(N, num_classes)``.
  """
  check_arch(arch)
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
  if len(image_shape) != 3 or image_shape[2] not in (1, 3):
    raise ValueError(
        f"image_shape must be (H, W, C) with C in {{1, 3}}, got {image_shape}.")
  if width <= 0:
    raise ValueError(f"width must be > 0, got {width}.")
  return ARCHITECTURES[arch](num_classes=num_classes,
                             image_shape=tuple(image_shape), width=width,
                             mean=mean, std=std, rngs=nnx.Rngs(seed))


def param_count(model: nnx.Module) -> int:
  """Number of trainable parameters of a model.

  Counts ``nnx.Param`` entries, not BatchNorm running statistics. Works on
  abstract models from ``nnx.eval_shape`` too (nothing is allocated).

  Args:
    model: an ``nnx.Module``.

  Returns:
    The total size of its ``nnx.Param`` arrays.
  """
  params = nnx.state(model, nnx.Param)
  return sum(int(leaf.size) for leaf in jax.tree.leaves(params))
