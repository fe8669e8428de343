"""Gradient attacks on a batch of inputs: FGSM and PGD (L-inf and L2).

Both maximise the cross-entropy of the label ``y`` (untargeted) or minimise it
towards a target ``y`` (targeted) within an Lp ball of radius ``eps`` in pixel
units of [0, 1] images; the adversarial image is clipped to [0, 1]. With
``y=None`` the label is the model's own top-1 prediction on ``x``, which is
what a stack of models (each with its own predictions) usually wants.

The public functions check their arguments in Python and call jit-compiled
kernels (``logits_fn`` and the norm are static, so a kernel compiles once per
shape); they can also be called inside a caller's ``jit``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from uap_jax.runtime import engine
from uap_jax.attacks import common

PyTree = Any


def _labels_or_predictions(logits_fn, variables, x, y):
  if y is None:
    return jnp.argmax(logits_fn(variables, x), -1).astype(jnp.int32)
  return y


def _loss_grad(logits_fn, variables, x_adv, y, targeted):
  """Gradient of the summed per-example CE (inputs are independent)."""
  def loss(xa):
    ce = common.cross_entropy(logits_fn(variables, xa), y)
    return jnp.sum(-ce if targeted else ce)
  return jax.grad(loss)(x_adv)


@functools.partial(jax.jit, static_argnames=("logits_fn", "p", "targeted"))
def _fgsm(logits_fn, variables, x, y, eps, *, p, targeted):
  y = _labels_or_predictions(logits_fn, variables, x, y)
  g = _loss_grad(logits_fn, variables, x, y, targeted)
  return common.perturb(x, eps * common.normalize_direction(g, p))


@functools.partial(jax.jit, static_argnames=(
    "logits_fn", "p", "num_steps", "random_start", "targeted"))
def _pgd(logits_fn, variables, x, y, key, eps, step_size, *, p, num_steps,
         random_start, targeted):
  y = _labels_or_predictions(logits_fn, variables, x, y)
  if random_start:
    delta = common.random_in_ball(key, x.shape, p, eps)
  else:
    delta = jnp.zeros_like(x)
  delta = common.perturb(x, delta) - x

  def step(_, delta):
    g = _loss_grad(logits_fn, variables, x + delta, y, targeted)
    delta = delta + step_size * common.normalize_direction(g, p)
    delta = common.project(delta, p, eps, batch_dims=1)
    return common.perturb(x, delta) - x

  delta = jax.lax.fori_loop(0, num_steps, step, delta)
  return x + delta


def _check_common(x, y, p, eps, targeted):
  p = common.check_p(p)
  eps = common.check_positive("eps", eps)
  x = common.check_images(x)
  if y is not None:
    y = common.check_labels(y, x.shape[0])
  elif targeted:
    raise ValueError("A targeted attack needs target labels y (got y=None).")
  return x, y, p, eps


def fgsm(logits_fn: common.LogitsFn, variables: PyTree, x: jax.Array,
         y: jax.Array | None = None, *, eps: float, p: Any = "inf",
         targeted: bool = False) -> jax.Array:
  """Fast gradient (sign) method: one step of size ``eps``.

  Args:
    logits_fn: pure ``(variables, x) -> logits`` of one model.
    variables: that model's variables.
    x: ``(N, H, W, C)`` float32 images in [0, 1].
    y: ``(N,)`` int labels (targets if ``targeted``); ``None`` uses the
      model's predictions on ``x``.
    eps: step size = perturbation bound, pixel units of [0, 1].
    p: ``"inf"`` (sign of the gradient) or ``2`` (normalised gradient).
    targeted: descend the loss of ``y`` instead of ascending it.

  Returns:
    ``(N, H, W, C)`` adversarial images in [0, 1], ``||x_adv - x||_p <= eps``.
  """
  x, y, p, eps = _check_common(x, y, p, eps, targeted)
  return _fgsm(logits_fn, variables, x, y, jnp.float32(eps), p=p,
               targeted=bool(targeted))


def pgd(logits_fn: common.LogitsFn, variables: PyTree, x: jax.Array,
        y: jax.Array | None = None, *, key: jax.Array, eps: float,
        step_size: float | None = None, num_steps: int = 10, p: Any = "inf",
        random_start: bool = True, targeted: bool = False) -> jax.Array:
  """Projected gradient descent (Madry et al. 2018) on a batch.

  Args:
    logits_fn: pure ``(variables, x) -> logits`` of one model.
    variables: that model's variables.
    x: ``(N, H, W, C)`` float32 images in [0, 1].
    y: ``(N,)`` int labels (targets if ``targeted``); ``None`` uses the
      model's predictions on ``x``.
    key: PRNG key of the random start.
    eps: radius of the Lp ball, pixel units of [0, 1].
    step_size: per-step size; default ``2.5 * eps / num_steps``.
    num_steps: gradient steps (a ``lax.fori_loop``).
    p: ``"inf"`` or ``2``.
    random_start: start from a uniform random point of the ball.
    targeted: descend the loss of ``y`` instead of ascending it.

  Returns:
    ``(N, H, W, C)`` adversarial images in [0, 1] with
    ``||x_adv - x||_p <= eps`` per image.
  """
  x, y, p, eps = _check_common(x, y, p, eps, targeted)
  num_steps = common.check_count("num_steps", num_steps, minimum=0)
  step_size = (2.5 * eps / max(num_steps, 1) if step_size is None
               else common.check_positive("step_size", step_size))
  return _pgd(logits_fn, variables, x, y, key, jnp.float32(eps),
              jnp.float32(step_size), p=p, num_steps=num_steps,
              random_start=bool(random_start), targeted=bool(targeted))


@functools.lru_cache(maxsize=None)
def _pgd_over_models(logits_fn, p, num_steps, random_start, targeted,
                     with_labels, strategy):
  def one(variables, key, x, y, eps, step_size):
    return _pgd(logits_fn, variables, x, y if with_labels else None, key, eps,
                step_size, p=p, num_steps=num_steps,
                random_start=random_start, targeted=targeted)
  return engine.over_models(one, strategy,
                            in_axes=(0, 0, None, None, None, None))


def pgd_stack(logits_fn: common.LogitsFn, variables: PyTree, x: jax.Array,
              y: jax.Array | None = None, *, key: jax.Array, eps: float,
              step_size: float | None = None, num_steps: int = 10,
              p: Any = "inf", random_start: bool = True,
              targeted: bool = False, strategy: str = "auto") -> jax.Array:
  """:func:`pgd` against every model of a stack, on the same inputs.

  Args:
    logits_fn: pure per-model ``(variables, x) -> logits``.
    variables: stacked variables, leading model axis K.
    x: ``(N, H, W, C)`` images in [0, 1], shared by all models.
    y: shared ``(N,)`` labels, or ``None`` for each model's own predictions.
    key: model ``i`` uses ``jax.random.split(key, K)[i]``.
    eps, step_size, num_steps, p, random_start, targeted: as in :func:`pgd`.
    strategy: model-axis strategy of :func:`uap_jax.runtime.engine.over_models`.

  Returns:
    ``(K, N, H, W, C)`` adversarial images, one batch per model.
  """
  x, y, p, eps = _check_common(x, y, p, eps, targeted)
  num_steps = common.check_count("num_steps", num_steps, minimum=0)
  step_size = (2.5 * eps / max(num_steps, 1) if step_size is None
               else common.check_positive("step_size", step_size))
  keys = jax.random.split(key, engine.num_models(variables))
  strategy = engine.resolve(strategy)
  statics = dict(p=p, num_steps=num_steps, random_start=bool(random_start),
                 targeted=bool(targeted))
  if strategy == "loop":
    # Shares the single-model kernel's compilation (see universal.py).
    return jnp.stack([
        _pgd(logits_fn, model, x, y, keys[i], jnp.float32(eps),
             jnp.float32(step_size), **statics)
        for i, model in enumerate(engine.unstack_tree(variables))])
  fn = _pgd_over_models(logits_fn, p, num_steps, bool(random_start),
                        bool(targeted), y is not None, strategy)
  y_arg = y if y is not None else jnp.zeros((x.shape[0],), jnp.int32)
  return fn(variables, keys, x, y_arg, jnp.float32(eps), jnp.float32(step_size))
