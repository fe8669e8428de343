"""What a suspect's API may do to the queries before its model sees them.

The query-side half of API evasion (the answer side is
:mod:`uap_jax.fingerprint.api_answers`): each transform wraps ONE model's
forward pass ``logits_fn(variables, x)`` (x: float ``(N, H, W, C)`` images
in [0, 1]) into the forward pass of the API around it, jit-compatible so
that fingerprints and accuracies are computed as for any model. Specs
(:func:`wrap`):

* ``noise:S``: Gaussian noise of standard deviation S on every pixel;
* ``shift:P``: a random translation by up to P pixels each way (zero fill);
* ``jpeg:Q``: every query JPEG-compressed at quality Q (1-100) and decoded,
  as an API that stores or forwards its inputs as JPEG would (Pillow's
  codec, on the host through ``jax.pure_callback``);
* ``flag:B``: the API predicts on the query and on a B x B box-blurred copy
  and, where the two top-1 answers differ (as they often do on an
  adversarially perturbed query), answers a random class instead.

The randomness of each image is drawn from a key folded from its own pixels,
so the same query gets the same answer whatever batch it comes in (an API
that answered a repeated query differently would show in the answer check's
repeats).
"""

from __future__ import annotations

from typing import Callable

import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

LogitsFn = Callable[..., jax.Array]
# Logits of a flagged query: a random class by this margin.
_RANDOM_ANSWER_MARGIN = 10.0


def _image_keys(x: jax.Array, salt: int) -> jax.Array:
  """One key per image, from its pixels (the same image, the same key)."""
  levels = jnp.round(x.reshape(x.shape[0], -1) * 255.0).astype(jnp.uint32)
  weights = jnp.arange(1, levels.shape[1] + 1, dtype=jnp.uint32) * jnp.uint32(2654435761)
  digest = jnp.sum(levels * weights, axis=1, dtype=jnp.uint32)
  return jax.vmap(lambda d: jax.random.fold_in(jax.random.key(salt), d))(digest)


def gaussian_noise(x: jax.Array, sigma: float) -> jax.Array:
  """``x + N(0, sigma^2)``, clipped to [0, 1]."""
  noise = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:]))(_image_keys(x, 1))
  return jnp.clip(x + sigma * noise, 0.0, 1.0)


def random_shift(x: jax.Array, pixels: int) -> jax.Array:
  """Each image translated by up to ``pixels`` each way, the edge filled with 0."""
  h, w = x.shape[1], x.shape[2]
  padded = jnp.pad(x, ((0, 0), (pixels, pixels), (pixels, pixels), (0, 0)))
  offsets = jax.vmap(lambda k: jax.random.randint(k, (2,), 0, 2 * pixels + 1))(
      _image_keys(x, 2))

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, x.shape[3]))
  return jax.vmap(crop)(padded, offsets)


def _jpeg_host(x: np.ndarray, quality: int) -> np.ndarray:
  """``(..., H, W, C)`` images through Pillow's JPEG codec (any leading axes)."""
  x = np.asarray(x)
  flat = x.reshape((-1,) + x.shape[-3:])
  out = np.empty_like(flat)
  for n, image in enumerate(flat):
    pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    grey = pixels.shape[-1] == 1
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if grey else pixels).save(buffer, format="JPEG",
                                                             quality=quality)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), np.float32) / 255.0
    out[n] = decoded[..., None] if grey else decoded
  return out.reshape(x.shape)


def jpeg(x: jax.Array, quality: int) -> jax.Array:
  """Each image JPEG-encoded at ``quality`` and decoded (on the host; jit-able)."""
  shape = jax.ShapeDtypeStruct(x.shape, jnp.float32)
  # Under vmap (the engine's model and view axes) the host gets the batch as
  # leading axes, which it loops over like the images.
  return jax.pure_callback(lambda v: _jpeg_host(v, quality), shape, x.astype(jnp.float32),
                           vmap_method="expand_dims")


def box_blur(x: jax.Array, size: int) -> jax.Array:
  """A ``size`` x ``size`` mean filter per channel (edges padded by reflection)."""
  lo, hi = (size - 1) // 2, size // 2
  padded = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)), mode="reflect")
  return jax.lax.reduce_window(padded, 0.0, jax.lax.add, (1, size, size, 1),
                               (1, 1, 1, 1), "VALID") / float(size * size)


def _flagging(logits_fn: LogitsFn, size: int) -> LogitsFn:
  def api(variables, x):
    logits = logits_fn(variables, x)
    blurred = logits_fn(variables, box_blur(x, size))
    flagged = jnp.argmax(logits, -1) != jnp.argmax(blurred, -1)
    num_classes = logits.shape[-1]
    random_class = jax.vmap(lambda k: jax.random.randint(k, (), 0, num_classes))(
        _image_keys(x, 3))
    random_logits = _RANDOM_ANSWER_MARGIN * jax.nn.one_hot(random_class, num_classes)
    return jnp.where(flagged[:, None], random_logits, logits)
  return api


def parse(spec: str) -> tuple[str, float]:
  """``(name, value)`` of a spec; ValueError naming the forms otherwise."""
  name, _, arg = spec.partition(":")
  try:
    value = float(arg)
    if ((name == "noise" and value >= 0) or
        (name in ("shift", "flag") and value == int(value) and value >= 1) or
        (name == "jpeg" and value == int(value) and 1 <= value <= 100)):
      return name, value
  except ValueError:
    pass
  raise ValueError(f"Unknown API query transform {spec!r}; the forms are noise:S "
                   "(S >= 0), shift:P and flag:B (P, B >= 1 integers), jpeg:Q "
                   "(1 <= Q <= 100).")


def wrap(spec: str, logits_fn: LogitsFn) -> LogitsFn:
  """The forward pass of an API that does ``spec`` around ``logits_fn``.

  Args:
    spec: ``noise:S``, ``shift:P``, ``jpeg:Q`` or ``flag:B`` (module docstring).
    logits_fn: ``(variables, x) -> logits`` of one model.

  Returns:
    ``(variables, x) -> logits`` of the API.
  """
  name, value = parse(spec)
  if name == "flag":
    return _flagging(logits_fn, int(value))
  transform = {"noise": lambda x: gaussian_noise(x, value),
               "shift": lambda x: random_shift(x, int(value)),
               "jpeg": lambda x: jpeg(x, int(value))}[name]
  return lambda variables, x: logits_fn(variables, transform(x))
