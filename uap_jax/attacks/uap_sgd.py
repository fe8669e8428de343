"""SGD-UAP: a universal perturbation by loss ascent with projection.

SGD-UAP (:func:`sgd_uap`, after Shafahi et al. 2020 "Universal adversarial
training" and Mummadi et al. 2019): ascend a loss of ``f(clip(x + v))``
against the clean labels over random minibatches with an optax optimiser,
projecting v onto the Lp ball after every step. The passes, early stop and
best-v bookkeeping are :func:`uap_jax.attacks.uap_passes.run_passes`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from uap_jax.attacks import common
from uap_jax.attacks import uap_passes
from uap_jax.attacks.uap_passes import UAPResult

PyTree = Any

SGD_LOSSES = ("margin", "ce")


@functools.partial(jax.jit, static_argnames=(
    "logits_fn", "p", "batch_size", "history_size", "loss", "optimizer",
    "eval_batch_size", "num_valid"))
def sgd_uap_kernel(logits_fn, variables, key, x, xi, delta, max_passes,
                   learning_rate, kappa, *, p, batch_size, history_size, loss,
                   optimizer, eval_batch_size, num_valid) -> UAPResult:
  """The jitted SGD-UAP program; arguments come from :func:`sgd_uap_args`.

  Public for benchmarks that compile once and rerun with other
  ``max_passes`` (traced, ``<= history_size``); use :func:`sgd_uap` otherwise.

  Args:
    logits_fn, variables, key: as in :func:`sgd_uap`.
    x: images padded by :func:`sgd_uap_args`.
    xi, delta, max_passes, learning_rate, kappa: traced scalars.
    p, batch_size, history_size, loss, optimizer, eval_batch_size, num_valid:
      static options from :func:`sgd_uap_args`.

  Returns:
    A :class:`UAPResult`.
  """
  opt = optimizer if optimizer is not None else optax.adam(learning_rate)
  steps_per_pass = max(1, -(-num_valid // batch_size))

  def objective(v, xb, labels):
    logits = logits_fn(variables, common.perturb(xb, v))
    if loss == "ce":
      return -jnp.mean(common.cross_entropy(logits, labels))
    # Clamped margin: inputs already pushed kappa past the boundary stop
    # pulling, so the step serves the inputs not fooled yet.
    return jnp.mean(jnp.maximum(common.margin(logits, labels), -kappa))

  def pass_fn(key_t, clean, v, fooled, opt_state):
    def step(s, carry):
      v, opt_state = carry
      idx = jax.random.randint(jax.random.fold_in(key_t, s), (batch_size,), 0,
                               num_valid)
      grad = jax.grad(objective)(v, x[idx], clean[idx])
      updates, opt_state = opt.update(grad, opt_state, v)
      v = common.project(optax.apply_updates(v, updates), p, xi)
      return v, opt_state
    return jax.lax.fori_loop(0, steps_per_pass, step, (v, opt_state))

  opt_state = opt.init(jnp.zeros(x.shape[1:], jnp.float32))
  return uap_passes.run_passes(
      pass_fn, logits_fn, variables, key, x, num_valid, delta, max_passes,
      opt_state, history_size=history_size, eval_batch_size=eval_batch_size)


def sgd_uap_args(x: Any, xi: float, p: Any, delta: float, max_passes: int,
                 batch_size: int, loss: str, learning_rate: float | None,
                 kappa: float, optimizer: optax.GradientTransformation | None,
                 eval_batch_size: int) -> tuple[jax.Array, tuple, dict]:
  """Checks :func:`sgd_uap`'s arguments and splits them for the kernel.

  Args:
    x, xi, p, delta, max_passes, batch_size, loss, learning_rate, kappa,
    optimizer, eval_batch_size: as in :func:`sgd_uap`.

  Returns:
    The padded images, the traced scalars ``(xi, delta, max_passes,
    learning_rate, kappa)`` and the static options of :func:`sgd_uap_kernel`.
  """
  p = common.check_p(p)
  xi = common.check_positive("xi", xi)
  delta = common.check_fraction("delta", delta)
  if loss not in SGD_LOSSES:
    raise ValueError(f"Unknown SGD-UAP loss {loss!r}; choose one of {SGD_LOSSES}.")
  if optimizer is not None and not isinstance(
      optimizer, optax.GradientTransformation):
    raise ValueError(
        f"optimizer must be an optax.GradientTransformation (e.g. "
        f"optax.adam(1e-3)) or None, got {type(optimizer).__name__}.")
  x, num_valid, eval_batch_size = uap_passes.prepare_data(x, eval_batch_size)
  if learning_rate is None:
    # Adam moves each pixel by about learning_rate per step: a tenth of the
    # L-inf radius, or of the per-pixel share of the L2 radius.
    dim = math.prod(x.shape[1:])
    learning_rate = 0.1 * xi if p != 2.0 else 0.1 * xi / math.sqrt(dim)
  learning_rate = common.check_positive("learning_rate", learning_rate)
  if not kappa >= 0:
    raise ValueError(f"kappa must be >= 0, got {kappa}.")
  statics = dict(
      p=p, batch_size=min(common.check_count("batch_size", batch_size),
                          num_valid),
      history_size=common.check_count("max_passes", max_passes), loss=loss,
      optimizer=optimizer, eval_batch_size=eval_batch_size,
      num_valid=num_valid)
  scalars = (jnp.float32(xi), jnp.float32(delta),
             jnp.int32(statics["history_size"]), jnp.float32(learning_rate),
             jnp.float32(kappa))
  return x, scalars, statics


def sgd_uap(logits_fn: common.LogitsFn, variables: PyTree, x: jax.Array, *,
            key: jax.Array, xi: float, p: Any = "inf", delta: float = 0.2,
            max_passes: int = 10, batch_size: int = 32, loss: str = "margin",
            learning_rate: float | None = None, kappa: float = 0.0,
            optimizer: optax.GradientTransformation | None = None,
            eval_batch_size: int = 500) -> UAPResult:
  """SGD-UAP of one model: loss ascent over minibatches with projection.

  Each pass takes ``ceil(N / batch_size)`` optimiser steps on random
  minibatches (``fold_in(fold_in(key, pass), step)``), projecting v onto the
  Lp ball after every step; after each pass the fooling rate on ``x`` is
  measured, the best v kept, and the run stops at ``1 - delta``.

  Args:
    logits_fn: pure ``(variables, x) -> logits`` of one model.
    variables: that model's variables.
    x: ``(N, H, W, C)`` float32 images in [0, 1].
    key: PRNG key of the minibatch draws.
    xi: radius of the Lp ball, pixel units of [0, 1] images.
    p: ``"inf"`` or ``2``.
    delta: stop once the fooling rate reaches ``1 - delta``.
    max_passes: passes (epochs of steps) at most.
    batch_size: inputs per step.
    loss: ``"margin"`` (minimise ``max(f_y - max_{k!=y} f_k, -kappa)``, the
      clamped margin of the clean label y) or ``"ce"`` (maximise CE of y).
    learning_rate: Adam's step when ``optimizer`` is None; default
      ``0.1 * xi`` for L-inf and ``0.1 * xi / sqrt(H*W*C)`` for L2.
    kappa: margin clamp.
    optimizer: an optax transformation (static: reuse the same object to
      compile once); None means ``optax.adam(learning_rate)``.
    eval_batch_size: inputs per forward pass when measuring fooling rates.

  Returns:
    A :class:`UAPResult` (v, fooling_rate, passes, history).
  """
  x, scalars, statics = sgd_uap_args(x, xi, p, delta, max_passes, batch_size,
                                     loss, learning_rate, kappa, optimizer,
                                     eval_batch_size)
  return sgd_uap_kernel(logits_fn, variables, key, x, *scalars, **statics)


def sgd_uap_stack(logits_fn: common.LogitsFn, variables: PyTree, x: jax.Array,
                  *, key: jax.Array, xi: float, p: Any = "inf",
                  delta: float = 0.2, max_passes: int = 10,
                  batch_size: int = 32, loss: str = "margin",
                  learning_rate: float | None = None, kappa: float = 0.0,
                  optimizer: optax.GradientTransformation | None = None,
                  eval_batch_size: int = 500,
                  strategy: str = "auto") -> UAPResult:
  """:func:`sgd_uap` for every model of a stack, in one call.

  Args:
    logits_fn, x, xi, p, delta, max_passes, batch_size, loss, learning_rate,
    kappa, optimizer, eval_batch_size: as in :func:`sgd_uap`.
    variables: stacked variables, leading model axis K.
    key: model ``i`` uses ``jax.random.split(key, K)[i]``.
    strategy: model-axis strategy of :func:`uap_jax.runtime.engine.over_models`.

  Returns:
    A :class:`UAPResult` whose fields have a leading model axis K.
  """
  x, scalars, statics = sgd_uap_args(x, xi, p, delta, max_passes, batch_size,
                                     loss, learning_rate, kappa, optimizer,
                                     eval_batch_size)
  return uap_passes.run_over_models(sgd_uap_kernel, logits_fn, variables, key,
                                    x, scalars, statics, strategy)
