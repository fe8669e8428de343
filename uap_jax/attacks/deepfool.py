"""DeepFool (Moosavi-Dezfooli, Fawzi, Frossard, CVPR 2016), batched.

For an input ``x`` with label ``k0`` and candidate classes ``k`` (the top
``num_candidates`` classes of ``f(x)``), each iteration linearises the model
at the current point ``x_i`` and steps to the nearest linearised decision
boundary::

    w_k = grad f_k(x_i) - grad f_k0(x_i),   f'_k = f_k(x_i) - f_k0(x_i)
    l   = argmin_k |f'_k| / ||w_k||_q       (q = 2 for p = 2, q = 1 for p = inf)
    r_i = (|f'_l| / ||w_l||_q + 1e-4) * (w_l / ||w_l||_2  or  sign(w_l))

accumulating ``r = sum r_i`` and evaluating the model at
``x_i = x + (1 + overshoot) r`` until its label leaves ``k0`` or ``max_iter``
steps were taken.

Box constraint (differs from the original, which ignores the valid range):
images live in [0, 1], so a pixel already at 0 (or 1) cannot move further
down (up). Such blocked pixels are dropped from ``w_k`` before the distance
and the step are computed, and ``r`` is kept inside the box, so the
linearised step is the one the clipped image really takes. Without this,
DeepFool on near-binary images (MNIST) keeps pushing saturated pixels, and
about half the inputs ran to ``max_iter`` without flipping. All inputs of a batch advance together in one
``lax.while_loop``; an input that has flipped is frozen. The candidate
gradients come from one ``jax.vjp`` of the batch, pulled back with the
``num_candidates - 1`` cotangents ``e_k - e_k0`` (inputs are independent, so
summing over the batch gives per-input gradients).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from uap_jax.attacks import common

PyTree = Any


class DeepFoolResult(NamedTuple):
  """What :func:`deepfool` returns (all leading axes are the batch).

  Attributes:
    perturbation: ``(N, H, W, C)`` perturbation ``(1 + overshoot) * r``; the
      adversarial image is ``clip(x + perturbation, 0, 1)``. Zero for inputs
      that were not attacked (``active=False``).
    converged: ``(N,)`` bool, the label of the adversarial image differs from
      the original label.
    iterations: ``(N,)`` int32 linearisation steps taken.
    label: ``(N,)`` int32 original top-1 label.
  """
  perturbation: jax.Array
  converged: jax.Array
  iterations: jax.Array
  label: jax.Array


_BOUND_TOL = 1e-6


def linearized_step(logits, pullback, x_i, candidates, p):
  """One DeepFool step ``r_i`` from the points ``x_i`` (see module docstring).

  Args:
    logits: ``(N, C)`` logits at ``x_i``.
    pullback: the ``jax.vjp`` pullback of the batch forward pass at ``x_i``.
    x_i: ``(N, H, W, C)`` current points (in [0, 1]).
    candidates: ``(N, nc)`` int32 classes; column 0 is the original label.
    p: ``2.0`` or ``math.inf``.

  Returns:
    ``(N, H, W, C)`` step towards the nearest linearised boundary.
  """
  one_hot = jax.nn.one_hot(candidates.T, logits.shape[-1], dtype=logits.dtype)
  # The pullback is linear, so pulling back e_k - e_k0 gives w_k directly:
  # nc - 1 backward passes instead of nc.
  cotangents = one_hot[1:] - one_hot[:1]                     # (nc - 1, N, C)
  w = jax.vmap(lambda ct: pullback(ct)[0])(cotangents)       # (nc - 1, N, ...)
  w = jnp.moveaxis(w, 0, 1)                                  # (N, nc - 1, ...)
  f = jnp.take_along_axis(logits, candidates, axis=-1)
  # Moving along +w_k raises f_k - f_k0; pixels at a bound that +w_k would
  # push outside the box cannot move.
  # The tolerance keeps round-off (x_i = 1e-9 for a clipped pixel, which
  # differs between jit and eager) from deciding whether a pixel is blocked.
  x_b = x_i[:, None]
  w = jnp.where(((x_b <= _BOUND_TOL) & (w < 0))
                | ((x_b >= 1.0 - _BOUND_TOL) & (w > 0)), 0.0, w)
  f_diff = jnp.abs(f[:, 1:] - f[:, :1])
  axes = tuple(range(2, w.ndim))
  if p == 2.0:
    w_norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=axes))
  else:   # the dual norm of L-inf
    w_norm = jnp.sum(jnp.abs(w), axis=axes)
  dist = f_diff / (w_norm + 1e-12)
  best = jnp.argmin(dist, axis=1)
  w_best = jnp.take_along_axis(w, best.reshape((-1, 1) + (1,) * len(axes)),
                               axis=1)[:, 0]
  dist_best = jnp.take_along_axis(dist, best[:, None], axis=1)[:, 0]
  if p == 2.0:
    direction = common.normalize_direction(w_best, 2.0, batch_dims=1)
  else:
    direction = jnp.sign(w_best)
  return (dist_best + 1e-4).reshape((-1,) + (1,) * (x_i.ndim - 1)) * direction


def into_box(x, r_tot, overshoot):
  """Shrinks ``r`` so that ``x + (1 + overshoot) r`` lies in [0, 1]."""
  return (common.perturb(x, (1.0 + overshoot) * r_tot) - x) / (1.0 + overshoot)


def deepfool_kernel(logits_fn, variables, x, active, overshoot, *,
                    num_candidates, max_iter, p):
  """Unchecked, traceable DeepFool (see :func:`deepfool`); ``active`` masks inputs."""
  logits0 = logits_fn(variables, x)
  nc = min(num_candidates, logits0.shape[-1])
  candidates = jnp.argsort(-logits0, axis=-1)[:, :nc].astype(jnp.int32)
  label = candidates[:, 0]
  expand = lambda a: a.reshape(a.shape + (1,) * (x.ndim - 1))

  def cond(state):
    i, _, still, _ = state
    return (i < max_iter) & jnp.any(still)

  def body(state):
    i, r_tot, still, iterations = state
    x_i = common.perturb(x, (1.0 + overshoot) * r_tot)
    logits, pullback = jax.vjp(lambda xa: logits_fn(variables, xa), x_i)
    still = still & (jnp.argmax(logits, -1) == label)
    r_i = linearized_step(logits, pullback, x_i, candidates, p)
    r_tot = jnp.where(expand(still), into_box(x, r_tot + r_i, overshoot), r_tot)
    return i + 1, r_tot, still, iterations + still.astype(jnp.int32)

  init = (jnp.int32(0), jnp.zeros_like(x), active,
          jnp.zeros(x.shape[:1], jnp.int32))
  _, r_tot, _, iterations = jax.lax.while_loop(cond, body, init)
  perturbation = (1.0 + overshoot) * r_tot
  final = jnp.argmax(logits_fn(variables, common.perturb(x, perturbation)), -1)
  converged = active & (final != label)
  return DeepFoolResult(perturbation, converged, iterations, label)


_deepfool = jax.jit(deepfool_kernel, static_argnames=(
    "logits_fn", "num_candidates", "max_iter", "p"))


def deepfool(logits_fn: common.LogitsFn, variables: PyTree, x: jax.Array, *,
             num_candidates: int = 10, overshoot: float = 0.02,
             max_iter: int = 50, p: Any = 2) -> DeepFoolResult:
  """Minimal perturbations that flip each input's label (DeepFool).

  Args:
    logits_fn: pure ``(variables, x) -> logits`` of one model.
    variables: that model's variables.
    x: ``(N, H, W, C)`` float32 images in [0, 1].
    num_candidates: classes considered: the top ``num_candidates`` of
      ``f(x)`` (including the label), at most the number of classes.
    overshoot: the returned perturbation is ``(1 + overshoot) * r``, pushing
      the point just across the boundary.
    max_iter: linearisation steps at most.
    p: ``2`` (minimal L2 perturbation) or ``"inf"`` (minimal L-inf).

  Returns:
    A :class:`DeepFoolResult`: perturbation (pixel units of [0, 1]), per-input
    converged flag, iterations and original label.
  """
  p = common.check_p(p)
  x = common.check_images(x)
  num_candidates = common.check_count("num_candidates", num_candidates, 2)
  max_iter = common.check_count("max_iter", max_iter)
  if not overshoot >= 0:
    raise ValueError(f"overshoot must be >= 0, got {overshoot}; e.g. 0.02.")
  active = jnp.ones(x.shape[:1], bool)
  return _deepfool(logits_fn, variables, x, active, jnp.float32(overshoot),
                   num_candidates=num_candidates, max_iter=max_iter, p=p)
