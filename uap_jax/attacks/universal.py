"""Universal adversarial perturbations: DeepFool-UAP and SGD-UAP.

A universal adversarial perturbation (UAP) of a classifier ``f`` is ONE
perturbation ``v`` (shape ``(H, W, C)``) with ``||v||_p <= xi`` that changes
``f``'s top-1 label on most inputs: its *fooling rate* is the fraction of
inputs ``x`` with ``argmax f(clip(x + v, 0, 1)) != argmax f(x)``. ``xi`` is in
pixel units of [0, 1] images whatever the model's normalisation (models
normalise inside); e.g. ``p=inf, xi=8/255`` or ``p=2, xi=2.0`` for 32x32x3.

DeepFool-UAP (:func:`uap`, Moosavi-Dezfooli, Fawzi, Fawzi, Frossard, CVPR
2017, Algorithm 1)::

    v = 0
    while fooling_rate(v) < 1 - delta and passes < max_passes:
      for x in shuffled data:
        if f(x + v) == f(x):                         # not fooled yet
          dv = DeepFool(x + v)                       # minimal push across
          if DeepFool converged: v = project_{p, xi}(v + dv)
      passes += 1
    return the v with the best fooling rate seen

``method="sequential"`` runs exactly that, one image at a time (a
``lax.while_loop`` over the shuffled data, skipping DeepFool with
``lax.cond`` for fooled images). ``method="minibatch"`` (the default) and
``method="pipelined"`` are the batched forms. ``minibatch`` differs from the
original in two ways:

1. At the start of each pass the shuffled data are reordered so the inputs
   that v does not fool come first, and only those are visited: the pass
   walks ``ceil(#unfooled / batch_size)`` minibatches instead of all N
   inputs. An input fooled at the start of a pass but un-fooled later in the
   same pass (v moves) waits for the next pass; the original would revisit it.
2. Each minibatch of ``batch_size`` unfooled inputs is re-checked against the
   current v, DeepFool runs on all of them at once from the SAME v, and their
   converged perturbations are aggregated (``aggregate="sum"``: summed, like
   the sequential updates but computed at a common v - a Jacobi rather than
   Gauss-Seidel sweep; ``"mean"``: averaged) before one projection. The
   sequential form instead projects after every single image and computes
   each DeepFool step at the freshly updated v. ``batch_size=1``,
   ``aggregate="sum"`` and no reordering is the sequential algorithm.

A minibatch waits for its slowest DeepFool: every input of the batch pays
for the largest iteration count (measured on CPU: about 2x the time per pass
of the sequential form). ``pipelined`` removes that wait: ``batch_size`` slots
each run their own DeepFool, advancing together one linearisation step per
iteration; a slot whose input flips hands its perturbation to v (summed over
the slots that finish in the same step, then projected), a slot that runs out
of ``max_iter`` steps is dropped as in the original, and a finished slot is
refilled at once with the next unfooled input, perturbed by the v of that
moment. Its DeepFool steps are computed at a v up to ``max_iter`` steps old
(like asynchronous SGD); with one slot it is the sequential algorithm on the
inputs unfooled at the start of the pass.

SGD-UAP (:func:`sgd_uap`, after Shafahi et al. 2020 "Universal adversarial
training" and Mummadi et al. 2019): ascend a loss of ``f(clip(x + v))``
against the clean labels over random minibatches with an optax optimiser,
projecting v onto the ball after every step.

Every function checks its arguments in Python, then runs one jit-compiled
program: passes are a ``lax.while_loop`` (stopping early at ``1 - delta``),
minibatches a ``lax.while_loop`` / ``lax.fori_loop``, DeepFool its own
``lax.while_loop``. Randomness (data order, SGD minibatches) comes only from
the ``key``: pass ``t`` uses ``jax.random.fold_in(key, t)``. A stack version
computes one UAP per model of a stack in one call; model ``i`` uses
``jax.random.split(key, K)[i]``, so it equals the per-model call with that key.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from uap_jax.runtime import engine
from uap_jax.attacks import common
from uap_jax.attacks.deepfool import deepfool_kernel
from uap_jax.attacks.deepfool import into_box
from uap_jax.attacks.deepfool import linearized_step

PyTree = Any

METHODS = ("minibatch", "pipelined", "sequential")
AGGREGATES = ("sum", "mean")
SGD_LOSSES = ("margin", "ce")


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


def _passes_loop(pass_fn, logits_fn, variables, key, x, valid, num_valid,
                 delta, max_passes, *, eval_batch_size):
  """Runs ``pass_fn`` until fooling rate >= 1 - delta; keeps the best v."""
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

  return clean, v0, cond, body


@functools.partial(jax.jit, static_argnames=(
    "logits_fn", "p", "method", "aggregate", "batch_size", "history_size",
    "num_candidates", "max_iter", "deepfool_p", "eval_batch_size",
    "num_valid"))
def _deepfool_uap(logits_fn, variables, key, x, xi, delta, max_passes,
                  overshoot, *, p, method, aggregate, batch_size, history_size,
                  num_candidates, max_iter, deepfool_p, eval_batch_size,
                  num_valid):
  """DeepFool-UAP kernel; ``max_passes`` (traced) <= ``history_size``."""
  valid = jnp.arange(x.shape[0]) < num_valid
  reorder = method != "sequential"

  def pass_order(key_t, fooled):
    order = jax.random.permutation(key_t, num_valid).astype(jnp.int32)
    # Unfooled inputs first (stable: the shuffled order is kept within).
    order = order[jnp.argsort(fooled[order], stable=True)]
    count = num_valid - jnp.sum(fooled[:num_valid]).astype(jnp.int32)
    return jnp.concatenate([order, order[:batch_size]]), count

  def pipelined_pass(key_t, clean, v, fooled, extra):
    order, count = pass_order(key_t, fooled)
    slots = batch_size
    num_classes = jax.eval_shape(logits_fn, variables, x[:1]).shape[-1]
    nc = min(num_candidates, num_classes)
    expand = lambda a: a.reshape(a.shape + (1,) * (x.ndim - 1))

    def refill(state, finished):
      (v, nxt, idx, base, r_tot, cand, iters, fresh, busy) = state
      position = nxt + jnp.cumsum(finished.astype(jnp.int32)) - 1
      loads = finished & (position < count)
      new_idx = order[jnp.clip(position, 0, order.shape[0] - 1)]
      idx = jnp.where(loads, new_idx, idx)
      # A slot starts from its input perturbed by the v of the moment.
      base = jnp.where(expand(loads), common.perturb(x[new_idx], v), base)
      r_tot = jnp.where(expand(loads), 0.0, r_tot)
      iters = jnp.where(loads, 0, iters)
      fresh = jnp.where(loads, True, fresh)
      busy = jnp.where(finished, loads, busy)
      nxt = jnp.minimum(nxt + jnp.sum(finished.astype(jnp.int32)), count)
      return (v, nxt, idx, base, r_tot, cand, iters, fresh, busy)

    def step(state):
      (v, nxt, idx, base, r_tot, cand, iters, fresh, busy) = state
      x_i = common.perturb(base, (1.0 + overshoot) * r_tot)
      logits, pullback = jax.vjp(lambda xa: logits_fn(variables, xa), x_i)
      top = jnp.argsort(-logits, axis=-1)[:, :nc]
      cand = jnp.where(fresh[:, None], top.astype(jnp.int32), cand)
      pred = jnp.argmax(logits, -1)
      fooled_on_load = busy & fresh & (pred != clean[idx])
      converged = busy & ~fresh & (pred != cand[:, 0])
      running = busy & ~fooled_on_load & ~converged
      stepping = running & (iters < max_iter)
      # Converged slots hand their DeepFool perturbation to v (the original
      # also drops inputs whose DeepFool ran out of iterations).
      use = converged.astype(jnp.float32)
      dv = jnp.tensordot(use, (1.0 + overshoot) * r_tot, axes=1)
      if aggregate == "mean":
        dv = dv / jnp.maximum(jnp.sum(use), 1.0)
      v = jnp.where(jnp.any(converged), common.project(v + dv, p, xi), v)
      r_i = linearized_step(logits, pullback, x_i, cand, deepfool_p)
      r_tot = jnp.where(expand(stepping),
                        into_box(base, r_tot + r_i, overshoot), r_tot)
      iters = iters + stepping.astype(jnp.int32)
      finished = ~stepping
      fresh = jnp.zeros_like(fresh)
      return refill((v, nxt, idx, base, r_tot, cand, iters, fresh, busy),
                    finished)

    zeros_img = jnp.zeros((slots,) + x.shape[1:], jnp.float32)
    state = (v, jnp.int32(0), jnp.zeros((slots,), jnp.int32), zeros_img,
             zeros_img, jnp.zeros((slots, nc), jnp.int32),
             jnp.zeros((slots,), jnp.int32), jnp.zeros((slots,), bool),
             jnp.zeros((slots,), bool))
    state = refill(state, jnp.ones((slots,), bool))
    state = jax.lax.while_loop(lambda s: jnp.any(s[-1]), step, state)
    return state[0], extra

  def pass_fn(key_t, clean, v, fooled, extra):
    if method == "pipelined":
      return pipelined_pass(key_t, clean, v, fooled, extra)
    order = jax.random.permutation(key_t, num_valid).astype(jnp.int32)
    if reorder:
      # Unfooled inputs first (stable: the shuffled order is kept within).
      order = order[jnp.argsort(fooled[order], stable=True)]
      count = num_valid - jnp.sum(fooled[:num_valid]).astype(jnp.int32)
    else:
      count = jnp.int32(num_valid)
    order = jnp.concatenate([order, order[:batch_size]])
    num_batches = (count + batch_size - 1) // batch_size

    def step(state):
      j, v = state
      idx = jax.lax.dynamic_slice(order, (j * batch_size,), (batch_size,))
      in_range = j * batch_size + jnp.arange(batch_size) < count
      xv = common.perturb(x[idx], v)
      same = jnp.argmax(logits_fn(variables, xv), -1) == clean[idx]
      attack = in_range & same

      def push(v):
        df = deepfool_kernel(logits_fn, variables, xv, attack, overshoot,
                             num_candidates=num_candidates, max_iter=max_iter,
                             p=deepfool_p)
        use = (df.converged & attack).astype(jnp.float32)
        dv = jnp.tensordot(use, df.perturbation, axes=1)
        if aggregate == "mean":
          dv = dv / jnp.maximum(jnp.sum(use), 1.0)
        return common.project(v + dv, p, xi)

      v = jax.lax.cond(jnp.any(attack), push, lambda v: v, v)
      return j + 1, v

    _, v = jax.lax.while_loop(lambda s: s[0] < num_batches, step,
                              (jnp.int32(0), v))
    return v, extra

  clean, v0, cond, body = _passes_loop(
      pass_fn, logits_fn, variables, key, x, valid, num_valid, delta,
      max_passes, eval_batch_size=eval_batch_size)
  history = jnp.full((history_size,), jnp.nan, jnp.float32)
  init = (jnp.int32(0), v0, jnp.float32(-1.0), v0,
          jnp.zeros(x.shape[:1], bool), (), history)
  t, best_v, best_rate, *_, history = jax.lax.while_loop(cond, body, init)
  return UAPResult(best_v, best_rate, t, history)


@functools.partial(jax.jit, static_argnames=(
    "logits_fn", "p", "batch_size", "history_size", "loss", "optimizer",
    "eval_batch_size", "num_valid"))
def _sgd_uap(logits_fn, variables, key, x, xi, delta, max_passes,
             learning_rate, kappa, *, p, batch_size, history_size, loss,
             optimizer, eval_batch_size, num_valid):
  """SGD-UAP kernel; ``max_passes`` (traced) <= ``history_size``."""
  valid = jnp.arange(x.shape[0]) < num_valid
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

  clean, v0, cond, body = _passes_loop(
      pass_fn, logits_fn, variables, key, x, valid, num_valid, delta,
      max_passes, eval_batch_size=eval_batch_size)
  history = jnp.full((history_size,), jnp.nan, jnp.float32)
  init = (jnp.int32(0), v0, jnp.float32(-1.0), v0,
          jnp.zeros(x.shape[:1], bool), opt.init(v0), history)
  t, best_v, best_rate, *_, history = jax.lax.while_loop(cond, body, init)
  return UAPResult(best_v, best_rate, t, history)


def _prepare_data(x, eval_batch_size):
  x = common.check_images(x)
  num_valid = int(x.shape[0])
  eval_batch_size = min(common.check_count("eval_batch_size", eval_batch_size),
                        num_valid)
  x, _ = common.pad_to_multiple(x, eval_batch_size)
  return x, num_valid, eval_batch_size


def _uap_args(x, p, xi, delta, max_passes, batch_size, method, aggregate,
              num_candidates, max_iter, overshoot, deepfool_p,
              eval_batch_size):
  p = common.check_p(p)
  xi = common.check_positive("xi", xi)
  delta = common.check_fraction("delta", delta)
  if method not in METHODS:
    raise ValueError(f"Unknown UAP method {method!r}; choose one of {METHODS}.")
  if aggregate not in AGGREGATES:
    raise ValueError(
        f"Unknown aggregate {aggregate!r}; choose one of {AGGREGATES}.")
  max_passes = common.check_count("max_passes", max_passes)
  batch_size = common.check_count("batch_size", batch_size)
  if not overshoot >= 0:
    raise ValueError(f"overshoot must be >= 0, got {overshoot}; e.g. 0.02.")
  x, num_valid, eval_batch_size = _prepare_data(x, eval_batch_size)
  if method == "sequential":
    batch_size, aggregate = 1, "sum"
  statics = dict(
      p=p, method=method, aggregate=aggregate,
      batch_size=min(batch_size, num_valid), history_size=max_passes,
      num_candidates=common.check_count("num_candidates", num_candidates, 2),
      max_iter=common.check_count("max_iter", max_iter),
      deepfool_p=common.check_p(deepfool_p), eval_batch_size=eval_batch_size,
      num_valid=num_valid)
  scalars = (jnp.float32(xi), jnp.float32(delta), jnp.int32(max_passes),
             jnp.float32(overshoot))
  return x, scalars, statics


def uap(logits_fn: common.LogitsFn, variables: PyTree, x: jax.Array, *,
        key: jax.Array, xi: float, p: Any = "inf", delta: float = 0.2,
        max_passes: int = 10, method: str = "minibatch",
        batch_size: int = 32, aggregate: str = "sum",
        num_candidates: int = 10, overshoot: float = 0.02, max_iter: int = 10,
        deepfool_p: Any = 2, eval_batch_size: int = 500) -> UAPResult:
  """DeepFool-UAP of one model (see the module docstring for the algorithm).

  Args:
    logits_fn: pure ``(variables, x) -> logits`` of one model (static: pass
      the same function object to compile once).
    variables: that model's variables.
    x: ``(N, H, W, C)`` float32 images in [0, 1] (uint8 is scaled by 1/255).
    key: PRNG key; pass ``t`` shuffles with ``jax.random.fold_in(key, t)``.
    xi: radius of the Lp ball, pixel units of [0, 1] images.
    p: ``"inf"`` or ``2``.
    delta: stop once the fooling rate on ``x`` reaches ``1 - delta``.
    max_passes: passes over ``x`` at most.
    method: ``"minibatch"`` or ``"pipelined"`` (batched; see the module
      docstring) or ``"sequential"`` (original, one image at a time; ignores
      ``batch_size`` and ``aggregate``).
    batch_size: unfooled inputs per DeepFool call for ``"minibatch"``, DeepFool
      slots for ``"pipelined"``.
    aggregate: ``"sum"`` or ``"mean"`` of a minibatch's DeepFool steps.
    num_candidates: DeepFool's candidate classes.
    overshoot: DeepFool's overshoot.
    max_iter: DeepFool's iterations per call.
    deepfool_p: norm of DeepFool's minimal steps (the paper uses 2 for both
      p=2 and p=inf and lets the projection handle the rest).
    eval_batch_size: inputs per forward pass when measuring fooling rates.

  Returns:
    A :class:`UAPResult` (v, fooling_rate, passes, history).
  """
  x, scalars, statics = _uap_args(
      x, p, xi, delta, max_passes, batch_size, method, aggregate,
      num_candidates, max_iter, overshoot, deepfool_p, eval_batch_size)
  return _deepfool_uap(logits_fn, variables, key, x, *scalars, **statics)


def _run_over_models(kernel, logits_fn, variables, key, x, scalars, statics,
                     strategy):
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


def uap_stack(logits_fn: common.LogitsFn, variables: PyTree, x: jax.Array, *,
              key: jax.Array, strategy: str = "auto", **kwargs) -> UAPResult:
  """:func:`uap` for every model of a stack, in one call.

  Args:
    logits_fn: pure per-model ``(variables, x) -> logits``.
    variables: stacked variables, leading model axis K.
    x: ``(N, H, W, C)`` images in [0, 1], shared by all models.
    key: model ``i`` uses ``jax.random.split(key, K)[i]``.
    strategy: model-axis strategy of :func:`uap_jax.runtime.engine.over_models`.
    **kwargs: the keyword arguments of :func:`uap` (xi, p, delta, ...).

  Returns:
    A :class:`UAPResult` whose fields have a leading model axis K.
  """
  defaults = dict(p="inf", delta=0.2, max_passes=10, method="minibatch",
                  batch_size=32, aggregate="sum", num_candidates=10,
                  overshoot=0.02, max_iter=10, deepfool_p=2,
                  eval_batch_size=500)
  unknown = set(kwargs) - set(defaults) - {"xi"}
  if unknown or "xi" not in kwargs:
    raise ValueError(
        f"uap_stack takes xi and the options of uap; got unknown "
        f"{sorted(unknown)}" + ("" if "xi" in kwargs else " and no xi") + ".")
  args = {**defaults, **kwargs}
  x, scalars, statics = _uap_args(
      x, args["p"], args["xi"], args["delta"], args["max_passes"],
      args["batch_size"], args["method"], args["aggregate"],
      args["num_candidates"], args["max_iter"], args["overshoot"],
      args["deepfool_p"], args["eval_batch_size"])
  return _run_over_models(_deepfool_uap, logits_fn, variables, key, x, scalars,
                          statics, strategy)


def _sgd_args(x, xi, p, delta, max_passes, batch_size, loss, learning_rate,
              kappa, optimizer, eval_batch_size):
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
  x, num_valid, eval_batch_size = _prepare_data(x, eval_batch_size)
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
  x, scalars, statics = _sgd_args(x, xi, p, delta, max_passes, batch_size,
                                  loss, learning_rate, kappa, optimizer,
                                  eval_batch_size)
  return _sgd_uap(logits_fn, variables, key, x, *scalars, **statics)


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
  x, scalars, statics = _sgd_args(x, xi, p, delta, max_passes, batch_size,
                                  loss, learning_rate, kappa, optimizer,
                                  eval_batch_size)
  return _run_over_models(_sgd_uap, logits_fn, variables, key, x, scalars,
                          statics, strategy)


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
  x, num_valid, batch_size = _prepare_data(x, batch_size)
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
  x, num_valid, batch_size = _prepare_data(x, batch_size)
  uaps = _check_uaps(uaps, x.shape[1:], batched=True)
  valid = jnp.arange(x.shape[0]) < num_valid
  fn = _transfer_fn(logits_fn, batch_size, engine.resolve(strategy))
  counts = fn(variables, x, valid, uaps)           # (K_models, K_uap)
  return jnp.transpose(counts) / num_valid
