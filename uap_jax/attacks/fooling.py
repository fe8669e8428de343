"""How well perturbations fool models: fooling rates and transfer matrices.

The fooling rate of ``v`` on a model ``f`` is the fraction of inputs ``x``
with ``argmax f(clip(x + v, 0, 1)) != argmax f(x)``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from uap_jax.attacks import common
from uap_jax.attacks import uap_passes
from uap_jax.runtime import engine

PyTree = Any


@functools.partial(jax.jit, static_argnames=("logits_fn", "batch_size"))
def _fooled_counts(logits_fn, variables, x, valid, vs, *, batch_size):
  clean = common.predict_labels(logits_fn, variables, x, batch_size)
  def count(v):
    fooled = common.fooled_mask(logits_fn, variables, x, clean, v, batch_size)
    return jnp.sum(fooled & valid)
  return jax.lax.map(count, vs)


def fooling_rate(logits_fn: common.LogitsFn, variables: PyTree, x: jax.Array,
                 v: jax.Array, *, batch_size: int = 500) -> jax.Array:
  """Fraction of inputs whose top-1 label changes under ``v``.

  Args:
    logits_fn: pure ``(variables, x) -> logits`` of one model.
    variables: that model's variables.
    x: ``(N, H, W, C)`` images in [0, 1].
    v: ``(H, W, C)`` perturbation (pixel units); ``clip(x + v, 0, 1)`` is used.
    batch_size: inputs per forward pass.

  Returns:
    Scalar float32 in [0, 1].
  """
  x, num_valid, batch_size = uap_passes.prepare_data(x, batch_size)
  v = _check_uaps(v, x.shape[1:])
  valid = jnp.arange(x.shape[0]) < num_valid
  counts = _fooled_counts(logits_fn, variables, x, valid, v[None],
                          batch_size=batch_size)
  return counts[0] / num_valid


def _check_uaps(vs, image_shape, batched=False):
  vs = jnp.asarray(vs, jnp.float32)
  want = (1 if batched else 0) + len(image_shape)
  if vs.ndim != want or tuple(vs.shape[-3:]) != tuple(image_shape):
    raise ValueError(
        f"Perturbation shape {vs.shape} does not fit images of shape "
        f"{tuple(image_shape)}; expected "
        + ("(K_uap, H, W, C)." if batched else "(H, W, C)."))
  return vs


@functools.lru_cache(maxsize=None)
def _transfer_fn(logits_fn, batch_size, strategy):
  def one(variables, x, valid, vs):
    return _fooled_counts(logits_fn, variables, x, valid, vs,
                          batch_size=batch_size)
  return engine.over_models(one, strategy, in_axes=(0, None, None, None))


def transfer_matrix(logits_fn: common.LogitsFn, variables: PyTree,
                    x: jax.Array, uaps: jax.Array, *, batch_size: int = 500,
                    strategy: str = "auto") -> jax.Array:
  """Fooling rate of every UAP on every model of a stack.

  Args:
    logits_fn: pure per-model ``(variables, x) -> logits`` of the evaluated
      stack (the UAPs may come from any models).
    variables: stacked variables of the evaluated models, leading axis K_models.
    x: ``(N, H, W, C)`` images in [0, 1].
    uaps: ``(K_uap, H, W, C)`` perturbations, e.g. ``uap_stack(...).v``.
    batch_size: inputs per forward pass.
    strategy: model-axis strategy of :func:`uap_jax.runtime.engine.over_models`.

  Returns:
    ``(K_uap, K_models)`` float32: entry ``[i, j]`` is the fooling rate of UAP
    ``i`` on model ``j`` (the diagonal, for a stack's own UAPs, is each
    model's own fooling rate).
  """
  x, num_valid, batch_size = uap_passes.prepare_data(x, batch_size)
  uaps = _check_uaps(uaps, x.shape[1:], batched=True)
  valid = jnp.arange(x.shape[0]) < num_valid
  fn = _transfer_fn(logits_fn, batch_size,
                    engine.resolve(strategy, forward_only=True))
  counts = fn(variables, x, valid, uaps)           # (K_models, K_uap)
  return jnp.transpose(counts) / num_valid
