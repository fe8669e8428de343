"""The pure training step of one model, and its lift over the model axis.

``make_step`` builds ``step(state, x, y, key, hyper, trainable, teacher) ->
(state, metrics)`` for ONE model; :func:`lifted_step` lifts it over the model
axis with :func:`uap_jax.runtime.engine.over_models`. What the program
depends on is a :class:`StepKind`; every other setting is an argument.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from uap_jax import attacks
from uap_jax.runtime import engine
from uap_jax.runtime import stack as stack_lib
from uap_jax.train.config import TrainConfig


@functools.lru_cache(maxsize=None)
def update_direction(optimizer: str) -> optax.GradientTransformation:
  """SGD's Nesterov momentum (0.9) or Adam's scaling, before rate and decay.

  The step adds weight decay (to the gradient for SGD, to the direction for
  Adam, as optax.adamw) and scales by minus the learning rate, so a step is
  that of ``optax.sgd``/``optax.adamw`` while rate and decay stay arguments.

  Args:
    optimizer: ``sgd`` or ``adam``.

  Returns:
    The optax transformation of the gradient into an update direction.
  """
  if optimizer == "adam":
    return optax.scale_by_adam()
  return optax.trace(decay=0.9, nesterov=True)


def augment_batch(x: jax.Array, key: jax.Array, pad: int = 4) -> jax.Array:
  """Random crop after reflect-padding by ``pad`` and random horizontal flip.

  Args:
    x: ``(N, H, W, C)`` float images.
    key: PRNG key.
    pad: padding (and largest shift) in pixels.

  Returns:
    The augmented batch, shaped like ``x``.
  """
  n, h, w, _ = x.shape
  kc, kf = jax.random.split(key)
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  offsets = jax.random.randint(kc, (n, 2), 0, 2 * pad + 1)
  crop = jax.vmap(lambda img, o: jax.lax.dynamic_slice(
      img, (o[0], o[1], 0), (h, w, img.shape[-1])))
  x = crop(padded, offsets)
  flip = jax.random.bernoulli(kf, 0.5, (n, 1, 1, 1))
  return jnp.where(flip, x[:, :, ::-1], x)


def teacher_targets(target: str, teacher_logits: jax.Array,
                    temperature: float = 1.0) -> jax.Array:
  """The signal a student learns from, given what the teacher API reveals.

  Args:
    target: ``teacher_soft``, ``teacher_hard`` or ``distill``.
    teacher_logits: ``(B, C)`` teacher outputs on the batch.
    temperature: softmax temperature for ``distill``.

  Returns:
    ``(B, C)`` target distribution; one-hot for ``teacher_hard``.
  """
  if target == "teacher_hard":
    return jax.nn.one_hot(jnp.argmax(teacher_logits, -1), teacher_logits.shape[-1])
  t = temperature if target == "distill" else 1.0
  return jax.nn.softmax(teacher_logits / t)


def soft_ce(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Mean cross-entropy against integer labels or target distributions.

  Args:
    logits: ``(B, C)`` student outputs.
    target: ``(B,)`` int labels or ``(B, C)`` probabilities.

  Returns:
    The scalar mean loss.
  """
  if target.ndim == logits.ndim - 1:
    target = jax.nn.one_hot(target, logits.shape[-1])
  return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits), -1))


def adversarial_batch(loss_of_x: Callable[[jax.Array], jax.Array], x: jax.Array,
                      key: jax.Array, eps: jax.Array, steps: int) -> jax.Array:
  """The PGD examples adversarial training learns from.

  L-inf PGD of :func:`uap_jax.attacks.pgd_steps` (random start, step
  ``2.5 eps / steps``, ``image`` iterate); no gradient flows back through
  the attack into the parameters.

  Args:
    loss_of_x: the training loss of a batch, which the attack raises.
    x: ``(B, H, W, C)`` float batch in [0, 1].
    key: PRNG key of the random start.
    eps: L-inf radius, pixel units of [0, 1].
    steps: PGD steps.

  Returns:
    The adversarial batch, shaped like ``x``.
  """
  x_adv = attacks.pgd_steps(loss_of_x, x, key, eps, 2.5 * eps / steps, steps,
                            iterate="image")
  return jax.lax.stop_gradient(x_adv)


@dataclasses.dataclass(frozen=True)
class StepKind:
  """What a training step's program depends on; every other setting is an
  argument, so stacks that agree on these share one compile."""
  optimizer: str
  target: str
  augment: bool
  adversarial: bool
  adv_steps: int

  @classmethod
  def of(cls, cfg: TrainConfig) -> "StepKind":
    """The step kind of a run's settings."""
    return cls(cfg.optimizer, cfg.target, cfg.augment, cfg.adv_eps > 0, cfg.adv_steps)


def _apply_update(params, grads, opt_state, tx, hyper, trainable, mask, optimizer):
  """One optimiser update with decoupled rate and decay (see update_direction)."""
  wd = hyper["weight_decay"]
  if optimizer == "sgd":
    grads = jax.tree.map(lambda g, p: g + wd * p, grads, params)
  direction, opt_state = tx.update(grads, opt_state, params)
  if optimizer == "adam":
    direction = jax.tree.map(lambda u, p: u + wd * p, direction, params)
  params = jax.tree.map(lambda p, u, t, m: (p - hyper["lr"] * t * u) * m,
                        params, direction, trainable, mask)
  return params, opt_state


def make_step(graphdef, kind: StepKind,
              teacher_logits_fn: Callable | None = None) -> Callable:
  """The pure training step of ONE model.

  Args:
    graphdef: the student's module structure.
    kind: optimiser, target mode, augmentation, adversary on or off.
    teacher_logits_fn: ``(teacher_variables, x) -> logits`` for teacher modes.

  Returns:
    ``step(state, x, y, key, hyper, trainable, teacher_variables) -> (state,
    metrics)`` where ``state = (params, rest, opt_state, mask)``, ``x`` is a
    float batch in [0, 1], ``y`` integer labels (``labels``) or
    probabilities (``soft``), ``hyper`` holds this step's scalars ``lr``,
    ``weight_decay``, ``temperature`` (distill) and ``adv_eps``, and
    ``trainable`` is 1 where parameters train, 0 where frozen.
  """
  train_fn = stack_lib.train_logits_fn(graphdef)
  eval_fn = stack_lib.eval_logits_fn(graphdef)
  tx = update_direction(kind.optimizer)
  distill = kind.target == "distill"

  def loss_fn(params, rest, x, target, temperature):
    logits, new_rest = train_fn(params, rest, x)
    if distill:
      loss = soft_ce(logits / temperature, target) * temperature ** 2
    else:
      loss = soft_ce(logits, target)
    return loss, (logits, new_rest)

  def step(state, x, y, key, hyper, trainable, teacher_variables):
    params, rest, opt_state, mask = state
    k_aug, k_adv = jax.random.split(key)
    if kind.augment:
      x = augment_batch(x, k_aug)
    if kind.target in ("labels", "soft"):
      target = y
    else:
      target = teacher_targets(kind.target, teacher_logits_fn(teacher_variables, x),
                               hyper["temperature"])
    if kind.adversarial:
      # The attack sees the model in eval mode: BatchNorm statistics are
      # updated once per step by the training pass, not by every PGD step.
      x = adversarial_batch(lambda xa: soft_ce(eval_fn((params, rest), xa), target),
                            x, k_adv, hyper["adv_eps"], kind.adv_steps)
    (loss, (logits, new_rest)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params, rest, x, target, hyper["temperature"])
    params, opt_state = _apply_update(params, grads, opt_state, tx, hyper, trainable,
                                      mask, kind.optimizer)
    labels = target if target.ndim == 1 else jnp.argmax(target, -1)
    agree = jnp.mean(jnp.argmax(logits, -1) == labels)
    return (params, new_rest, opt_state, mask), {"loss": loss, "accuracy": agree}

  return step


@functools.lru_cache(maxsize=None)
def lifted_step(graphdef, kind: StepKind, teacher_logits_fn, strategy: str,
                donate: bool = False) -> Callable:
  """:func:`make_step` over the model axis (cached).

  The jitted function is the same object for every stack of this
  architecture and step kind, so it compiles once per batch shape.

  Args:
    graphdef: the student's module structure.
    kind: the step kind.
    teacher_logits_fn: the teacher's logits function, or ``None``.
    strategy: a resolved model-axis strategy.
    donate: the step may overwrite the state it is given (buffer donation);
      the caller must not use that state again.

  Returns:
    The lifted step; state, batch, labels, keys and hyper-parameters carry
    the model axis, the trainable mask and the teacher are shared.
  """
  return engine.over_models(make_step(graphdef, kind, teacher_logits_fn), strategy,
                            in_axes=(0, 0, 0, 0, 0, None, None),
                            donate_argnums=(0,) if donate else ())


@functools.lru_cache(maxsize=None)
def lifted_init(optimizer: str, strategy: str) -> Callable:
  """The optimiser state's initialisation over the model axis (cached).

  Args:
    optimizer: ``sgd`` or ``adam``.
    strategy: a resolved model-axis strategy.

  Returns:
    ``init(stacked_params) -> stacked optimiser state``.
  """
  return engine.over_models(update_direction(optimizer).init, strategy)
