"""DeepFool-UAP: the universal perturbation built from DeepFool steps.

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

Arguments are checked in Python, then one jit-compiled program runs: the
passes (:func:`uap_jax.attacks.uap_passes.run_passes`), the minibatches or
slots of a pass and DeepFool are ``lax.while_loop`` s. Pass ``t`` shuffles
with ``jax.random.fold_in(key, t)``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from uap_jax.attacks import common
from uap_jax.attacks import uap_passes
from uap_jax.attacks.deepfool import deepfool_kernel
from uap_jax.attacks.deepfool import into_box
from uap_jax.attacks.deepfool import linearized_step
from uap_jax.attacks.uap_passes import UAPResult

PyTree = Any

METHODS = ("minibatch", "pipelined", "sequential")
AGGREGATES = ("sum", "mean")
DEFAULTS = dict(p="inf", delta=0.2, max_passes=10, method="minibatch",
                batch_size=32, aggregate="sum", num_candidates=10,
                overshoot=0.02, max_iter=10, deepfool_p=2,
                eval_batch_size=500)


def _pass_order(key_t, fooled, num_valid, batch_size, reorder):
  """Shuffled indices (unfooled first if ``reorder``), padded by a batch."""
  order = jax.random.permutation(key_t, num_valid).astype(jnp.int32)
  if reorder:
    # Unfooled inputs first (stable: the shuffled order is kept within).
    order = order[jnp.argsort(fooled[order], stable=True)]
    count = num_valid - jnp.sum(fooled[:num_valid]).astype(jnp.int32)
  else:
    count = jnp.int32(num_valid)
  return jnp.concatenate([order, order[:batch_size]]), count


def _aggregate(use, perturbations, aggregate):
  """Sum (or mean) of the perturbations selected by the float mask ``use``."""
  dv = jnp.tensordot(use, perturbations, axes=1)
  if aggregate == "mean":
    dv = dv / jnp.maximum(jnp.sum(use), 1.0)
  return dv


def _minibatch_pass(logits_fn, variables, x, clean, v, order, count, xi,
                    overshoot, *, p, aggregate, batch_size, num_candidates,
                    max_iter, deepfool_p):
  """One pass of minibatched (or, with batch 1, sequential) DeepFool-UAP."""
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
      return common.project(v + _aggregate(use, df.perturbation, aggregate),
                            p, xi)

    v = jax.lax.cond(jnp.any(attack), push, lambda v: v, v)
    return j + 1, v

  _, v = jax.lax.while_loop(lambda s: s[0] < num_batches, step,
                            (jnp.int32(0), v))
  return v


def _pipelined_pass(logits_fn, variables, x, clean, v, order, count, xi,
                    overshoot, *, p, aggregate, batch_size, num_candidates,
                    max_iter, deepfool_p):
  """One pass of pipelined DeepFool-UAP (see the module docstring)."""
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
    dv = _aggregate(converged.astype(jnp.float32), (1.0 + overshoot) * r_tot,
                    aggregate)
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
  return state[0]


@functools.partial(jax.jit, static_argnames=(
    "logits_fn", "p", "method", "aggregate", "batch_size", "history_size",
    "num_candidates", "max_iter", "deepfool_p", "eval_batch_size",
    "num_valid"))
def deepfool_uap_kernel(logits_fn, variables, key, x, xi, delta, max_passes,
                        overshoot, *, p, method, aggregate, batch_size,
                        history_size, num_candidates, max_iter, deepfool_p,
                        eval_batch_size, num_valid) -> UAPResult:
  """The jitted DeepFool-UAP program; arguments come from :func:`uap_args`.

  Public for benchmarks that compile once and rerun with other
  ``max_passes`` (traced, ``<= history_size``); use :func:`uap` otherwise.

  Args:
    logits_fn, variables, key: as in :func:`uap`.
    x: images padded by :func:`uap_args`.
    xi, delta, max_passes, overshoot: traced scalars from :func:`uap_args`.
    p, method, aggregate, batch_size, history_size, num_candidates, max_iter,
    deepfool_p, eval_batch_size, num_valid: static options from
      :func:`uap_args`.

  Returns:
    A :class:`UAPResult`.
  """
  one_pass = _pipelined_pass if method == "pipelined" else _minibatch_pass
  options = dict(p=p, aggregate=aggregate, batch_size=batch_size,
                 num_candidates=num_candidates, max_iter=max_iter,
                 deepfool_p=deepfool_p)

  def pass_fn(key_t, clean, v, fooled, extra):
    order, count = _pass_order(key_t, fooled, num_valid, batch_size,
                               reorder=method != "sequential")
    v = one_pass(logits_fn, variables, x, clean, v, order, count, xi,
                 overshoot, **options)
    return v, extra

  return uap_passes.run_passes(
      pass_fn, logits_fn, variables, key, x, num_valid, delta, max_passes,
      (), history_size=history_size, eval_batch_size=eval_batch_size)


def uap_args(x: Any, p: Any, xi: float, delta: float, max_passes: int,
             batch_size: int, method: str, aggregate: str,
             num_candidates: int, max_iter: int, overshoot: float,
             deepfool_p: Any, eval_batch_size: int
             ) -> tuple[jax.Array, tuple, dict]:
  """Checks :func:`uap`'s arguments and splits them for the kernel.

  Args:
    x, p, xi, delta, max_passes, batch_size, method, aggregate,
    num_candidates, max_iter, overshoot, deepfool_p, eval_batch_size: as in
      :func:`uap`.

  Returns:
    The padded images, the traced scalars ``(xi, delta, max_passes,
    overshoot)`` and the static options of :func:`deepfool_uap_kernel`.
  """
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
  x, num_valid, eval_batch_size = uap_passes.prepare_data(x, eval_batch_size)
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
  x, scalars, statics = uap_args(
      x, p, xi, delta, max_passes, batch_size, method, aggregate,
      num_candidates, max_iter, overshoot, deepfool_p, eval_batch_size)
  return deepfool_uap_kernel(logits_fn, variables, key, x, *scalars, **statics)


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
  unknown = set(kwargs) - set(DEFAULTS) - {"xi"}
  if unknown or "xi" not in kwargs:
    raise ValueError(
        f"uap_stack takes xi and the options of uap; got unknown "
        f"{sorted(unknown)}" + ("" if "xi" in kwargs else " and no xi") + ".")
  args = {**DEFAULTS, **kwargs}
  x, scalars, statics = uap_args(
      x, args["p"], args["xi"], args["delta"], args["max_passes"],
      args["batch_size"], args["method"], args["aggregate"],
      args["num_candidates"], args["max_iter"], args["overshoot"],
      args["deepfool_p"], args["eval_batch_size"])
  return uap_passes.run_over_models(deepfool_uap_kernel, logits_fn, variables,
                                    key, x, scalars, statics, strategy)
