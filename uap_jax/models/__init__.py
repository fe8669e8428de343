"""Classifier zoo, built by name.

Every model maps float32 images in [0, 1], shape ``(N, H, W, C)``, to logits
``(N, num_classes)``, normalising inside (see :mod:`uap_jax.models.base`).
``model.train()`` / ``model.eval()`` switch BatchNorm between batch and
running statistics. No model uses dropout, so a forward pass needs no RNG.
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
  """Number of trainable parameters (``nnx.Param`` entries, not BatchNorm
  running statistics) of a model.

  Args:
    model: an ``nnx.Module``.

  Returns:
    The total size of its ``nnx.Param`` arrays.
  """
  return sum(int(leaf.size) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
