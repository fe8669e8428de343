"""Multi-layer perceptron on flattened images."""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from uap_jax.models import base


class MLP(nnx.Module):
  """Flatten -> [Linear -> ReLU] * len(hidden) -> Linear."""

  def __init__(self, *, num_classes: int, image_shape: Sequence[int],
               width: float = 1.0, hidden: Sequence[int] = (256, 128),
               mean=None, std=None, rngs: nnx.Rngs):
    h, w, c = image_shape
    self.image_shape = tuple(image_shape)
    self.normalize = base.Normalize(*base.channel_stats(mean, std, c))
    sizes = [h * w * c] + [base.width_of(n, width) for n in hidden]
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    base.check_images(x, self.image_shape, fixed_size=True)
    x = self.normalize(x).reshape(x.shape[0], -1)
    for layer in self.hidden:
      x = nnx.relu(layer(x))
    return self.head(x)
