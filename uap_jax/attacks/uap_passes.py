"""What every UAP algorithm shares: its result, the pass loop, the model axis.

A universal adversarial perturbation (UAP) of a classifier ``f`` is ONE
perturbation ``v`` (shape ``(H, W, C)``) with ``||v||_p <= xi`` that changes
``f``'s top-1 label on most inputs: its *fooling rate* is the fraction of
inputs ``x`` with ``argmax f(clip(x + v, 0, 1)) != argmax f(x)``. ``xi`` is in
pixel units of [0, 1] images whatever the model's normalisation (models
normalise inside); e.g. ``p=inf, xi=8/255`` or ``p=2, xi=2.0`` for 32x32x3.

Both algorithms (:mod:`uap_jax.attacks.uap_deepfool`,
:mod:`uap_jax.attacks.uap_sgd`) run the same outer loop, built here: passes
over the data in a ``lax.while_loop`` that stops early once the fooling rate
reaches ``1 - delta`` and keeps the best ``v`` seen. Pass ``t`` draws its
randomness from ``jax.random.fold_in(key, t)``. Their stack versions compute
one UAP per model of a stack in one call; model ``i`` uses
``jax.random.split(key, K)[i]``, so it equals the per-model call with that key.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from uap_jax.attacks import common
from uap_jax.runtime import engine

PyTree = Any


class UAPResult(NamedTuple):
  """A universal perturbation and how it was found.

  For a stack every field gains a leading model axis K.

  Attributes:
    v: ``(H, W, C)`` float32 perturbation, ``||v||_p <= xi`` (the best seen).
    fooling_rate: scalar, fooling rate of ``v`` on the data it was computed on.
    passes: scalar int32, passes over the data that were run.
    history: ``(max_passes,)`` fooling rate after each pass; NaN for passes
      not run (early stop).
  """
  v: jax.Array
  fooling_rate: jax.Array
  passes: jax.Array
  history: jax.Array


def run_passes(pass_fn: Callable, logits_fn: common.LogitsFn,
               variables: PyTree, key: jax.Array, x: jax.Array,
               num_valid: int, delta: jax.Array, max_passes: jax.Array,
               extra: PyTree, *, history_size: int,
               eval_batch_size: int) -> UAPResult:
  """Runs ``pass_fn`` until the fooling rate reaches ``1 - delta``.

  Traced: call it inside the algorithm's jitted kernel.

  Args:
    pass_fn: one pass, ``(key_t, clean, v, fooled, extra) -> (v, extra)``;
      ``clean`` are the clean top-1 labels, ``fooled`` the mask of inputs
      that ``v`` fooled after the previous pass.
    logits_fn: pure ``(variables, x) -> logits`` of one model.
    variables: that model's variables.
    key: PRNG key; pass ``t`` gets ``jax.random.fold_in(key, t)``.
    x: ``(N, H, W, C)`` images padded to a multiple of ``eval_batch_size``.
    num_valid: how many leading images of ``x`` are real (not padding).
    delta: stop once the fooling rate reaches ``1 - delta``.
    max_passes: passes at most (traced, ``<= history_size``).
    extra: state ``pass_fn`` carries from pass to pass (e.g. optimiser state).
    history_size: length of the per-pass history.
    eval_batch_size: inputs per forward pass when measuring fooling rates.

  Returns:
    A :class:`UAPResult` holding the best ``v`` seen.
  """
  valid = jnp.arange(x.shape[0]) < num_valid
  clean = common.predict_labels(logits_fn, variables, x, eval_batch_size)
  v0 = jnp.zeros(x.shape[1:], jnp.float32)

  def cond(state):
    t, _, best_rate, *_ = state
    return (t < max_passes) & (best_rate < 1.0 - delta)

  def body(state):
    t, best_v, best_rate, v, fooled, extra, history = state
    v, extra = pass_fn(jax.random.fold_in(key, t), clean, v, fooled, extra)
    fooled = common.fooled_mask(logits_fn, variables, x, clean, v,
                                eval_batch_size) & valid
    rate = jnp.sum(fooled) / num_valid
    better = rate > best_rate
    best_v = jnp.where(better, v, best_v)
    best_rate = jnp.where(better, rate, best_rate)
    return (t + 1, best_v, best_rate, v, fooled, extra,
            history.at[t].set(rate))

  history = jnp.full((history_size,), jnp.nan, jnp.float32)
  init = (jnp.int32(0), v0, jnp.float32(-1.0), v0,
          jnp.zeros(x.shape[:1], bool), extra, history)
  t, best_v, best_rate, *_, history = jax.lax.while_loop(cond, body, init)
  return UAPResult(best_v, best_rate, t, history)


def prepare_data(x: Any, eval_batch_size: int) -> tuple[jax.Array, int, int]:
  """Checks images and pads them to a multiple of the evaluation batch.

  Args:
    x: ``(N, H, W, C)`` images in [0, 1] (uint8 is scaled by 1/255).
    eval_batch_size: wanted inputs per forward pass.

  Returns:
    The padded float32 images, ``N`` and the batch size used
    (``min(eval_batch_size, N)``).
  """
  x = common.check_images(x)
  num_valid = int(x.shape[0])
  eval_batch_size = min(common.check_count("eval_batch_size", eval_batch_size),
                        num_valid)
  x, _ = common.pad_to_multiple(x, eval_batch_size)
  return x, num_valid, eval_batch_size


def run_over_models(kernel: Callable, logits_fn: common.LogitsFn,
                    variables: PyTree, key: jax.Array, x: jax.Array,
                    scalars: tuple, statics: dict, strategy: str) -> UAPResult:
  """Runs a per-model UAP kernel for every model of a stack.

  Args:
    kernel: jitted ``(logits_fn, variables, key, x, *scalars, **statics)``.
    logits_fn: pure per-model ``(variables, x) -> logits``.
    variables: stacked variables, leading model axis K.
    key: model ``i`` uses ``jax.random.split(key, K)[i]``.
    x: images shared by all models.
    scalars: the kernel's traced scalar arguments.
    statics: the kernel's static keyword arguments.
    strategy: model-axis strategy of :func:`uap_jax.runtime.engine.over_models`.

  Returns:
    The kernel's :class:`UAPResult` with a leading model axis K.
  """
  strategy = engine.resolve(strategy)
  keys = jax.random.split(key, engine.num_models(variables))
  if strategy == "loop":
    # The per-model kernel is already jitted: calling it per model shares its
    # compilation with the single-model API (engine's loop would re-jit it).
    return engine.stack_trees([
        kernel(logits_fn, model, keys[i], x, *scalars, **statics)
        for i, model in enumerate(engine.unstack_tree(variables))])
  lifted = _lifted(kernel, logits_fn, tuple(sorted(statics.items())), strategy,
                   len(scalars))
  return lifted(variables, keys, x, *scalars)


@functools.lru_cache(maxsize=None)
def _lifted(kernel, logits_fn, statics_items, strategy, num_scalars):
  statics = dict(statics_items)

  def one(variables, key, x, *scalars):
    return kernel(logits_fn, variables, key, x, *scalars, **statics)
  return engine.over_models(one, strategy,
                            in_axes=(0, 0, None) + (None,) * num_scalars)
