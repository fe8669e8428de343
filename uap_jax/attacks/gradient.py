"""Gradient attacks on a batch of inputs: FGSM and PGD (L-inf and L2).

Both maximise the cross-entropy of the label ``y`` (untargeted) or minimise it
towards a target ``y`` (targeted) within an Lp ball of radius ``eps`` in pixel
units of [0, 1] images; the adversarial image is clipped to [0, 1]. With
``y=None`` the label is the model's own top-1 prediction on ``x``, which is
what a stack of models (each with its own predictions) usually wants.

The public functions check their arguments in Python and call jit-compiled
kernels (``logits_fn`` and the norm are static, so a kernel compiles once per
shape); they can also be called inside a caller's ``jit``. :func:`pgd_steps`
is the one PGD loop of the package, for any loss (adversarial training and
the zoo's ``extract_adv`` call it too).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

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


# The two float conventions of :func:`pgd_steps` (see there).
PGD_ITERATES = ("offset", "image")


def pgd_steps(loss_of_x: Callable[[jax.Array], jax.Array], x: jax.Array,
              key: jax.Array, eps: jax.Array | float, step_size: jax.Array | float,
              num_steps: int, p: float = math.inf, *, random_start: bool = True,
              iterate: str = "offset") -> jax.Array:
  """The one PGD kernel: ascends ``loss_of_x`` within the Lp ball around ``x``.

  A pure function (``num_steps``, ``p``, ``random_start`` and ``iterate``
  must be static), usable inside a caller's ``jit``/``vmap`` with any loss:
  :func:`pgd` and :func:`pgd_stack` pass the cross-entropy of the labels,
  adversarial training (:mod:`uap_jax.train`) a soft-target loss, and
  ``extract_adv`` (:mod:`uap_jax.zoo`) the substitute's own top-1.

  Each step moves along the steepest-ascent direction of unit Lp norm
  (``sign(grad)`` for L-inf), projects onto the ball, then clips to [0, 1].
  ``iterate`` picks one of two float conventions, equal up to rounding. They
  stay distinct because ``sign(grad)`` turns last-bit differences into whole
  steps, and each keeps the outputs its callers have always produced:

  * ``offset`` (:func:`pgd`, :func:`pgd_stack`): carries ``delta = x_adv - x``;
    random start ``uniform(-1, 1) * eps`` (L-inf) or uniform in the L2 ball;
    ``delta <- clip(x + proj(delta + step * dir), 0, 1) - x``.
  * ``image`` (adversarial training, ``extract_adv``; L-inf only): carries
    ``x_adv``; random start ``clip(x + uniform(-eps, eps), 0, 1)``;
    ``x_adv <- clip(clip(x_adv + step * sign(grad), x - eps, x + eps), 0, 1)``.

  Args:
    loss_of_x: scalar loss of a perturbed batch, to be maximised (negate it
      for a targeted attack).
    x: ``(N, ...)`` float images in [0, 1].
    key: PRNG key of the random start.
    eps: radius of the ball, pixel units of [0, 1].
    step_size: size of each step.
    num_steps: gradient steps (a ``lax.fori_loop``).
    p: ``2.0`` or ``math.inf`` (canonical, see :func:`common.check_p`).
    random_start: start from a uniform random point of the ball, else at ``x``.
    iterate: ``offset`` or ``image``, see above.

  Returns:
    The adversarial batch, shaped like ``x``, in [0, 1] and in the ball.
  """
  if iterate == "image":
    if p != math.inf:
      raise ValueError(f"iterate='image' is an L-inf PGD, got p={p}.")
    start = x
    if random_start:
      start = jnp.clip(
          x + jax.random.uniform(key, x.shape, minval=-eps, maxval=eps), 0, 1)

    def image_step(_, xa):
      xa = xa + step_size * jnp.sign(jax.grad(loss_of_x)(xa))
      return jnp.clip(jnp.clip(xa, x - eps, x + eps), 0.0, 1.0)
    return jax.lax.fori_loop(0, num_steps, image_step, start)
  if iterate != "offset":
    raise ValueError(f"iterate must be one of {PGD_ITERATES}, got {iterate!r}.")
  if random_start:
    delta = common.random_in_ball(key, x.shape, p, eps)
  else:
    delta = jnp.zeros_like(x)
  delta = common.perturb(x, delta) - x

  def offset_step(_, delta):
    g = jax.grad(loss_of_x)(x + delta)
    delta = delta + step_size * common.normalize_direction(g, p)
    delta = common.project(delta, p, eps, batch_dims=1)
    return common.perturb(x, delta) - x

  delta = jax.lax.fori_loop(0, num_steps, offset_step, delta)
  return x + delta


def _summed_ce(logits_fn, variables, y, targeted):
  """The summed per-example CE of ``y`` (inputs are independent), negated
  for a targeted attack: the loss :func:`pgd` ascends."""
  def loss(xa):
    ce = common.cross_entropy(logits_fn(variables, xa), y)
    return jnp.sum(-ce if targeted else ce)
  return loss


@functools.partial(jax.jit, static_argnames=(
    "logits_fn", "p", "num_steps", "random_start", "targeted"))
def _pgd(logits_fn, variables, x, y, key, eps, step_size, *, p, num_steps,
         random_start, targeted):
  y = _labels_or_predictions(logits_fn, variables, x, y)
  return pgd_steps(_summed_ce(logits_fn, variables, y, targeted), x, key, eps,
                   step_size, num_steps, p, random_start=random_start)


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
    # Shares the single-model kernel's compilation (see uap_passes.run_over_models).
    return jnp.stack([
        _pgd(logits_fn, model, x, y, keys[i], jnp.float32(eps),
             jnp.float32(step_size), **statics)
        for i, model in enumerate(engine.unstack_tree(variables))])
  fn = _pgd_over_models(logits_fn, p, num_steps, bool(random_start),
                        bool(targeted), y is not None, strategy)
  y_arg = y if y is not None else jnp.zeros((x.shape[0],), jnp.int32)
  return fn(variables, keys, x, y_arg, jnp.float32(eps), jnp.float32(step_size))
