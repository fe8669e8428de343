"""Training a whole stack: one jitted step per batch for all K models.

Each model of a stack has its own seed, its own data part (indices into one
shared image pool) and its own targets. The per-model step is a pure function
``step(state, x, y, key, teacher) -> (state, metrics)``; the engine lifts it
over the model axis (vmap / lax.map / loop / shard, see :mod:`uap_jax.runtime.engine`).

Targets (``TrainConfig.target``):

* ``labels``: integer labels from the data set (or given per model);
* ``soft``: a probability vector per example, given (e.g. recorded answers);
* ``teacher_soft``: the teacher's probabilities on the (augmented) batch, as
  an API returning probabilities answers each query afresh;
* ``teacher_hard``: one-hot of the teacher's top-1 on the batch (label-only
  API; the student never sees probabilities);
* ``distill``: the teacher's probabilities at temperature T, loss scaled T^2.

Options: a trainable mask (fine-tune the last layer only), a pruning mask
kept at zero, and PGD adversarial training.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from uap_jax.runtime import engine
from uap_jax.runtime import stack as stack_lib

PyTree = Any
TARGETS = ("labels", "soft", "teacher_soft", "teacher_hard", "distill")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyper-parameters of one training run (shared by a stack)."""
  epochs: float = 10
  batch_size: int = 128
  optimizer: str = "sgd"            # sgd (momentum 0.9, nesterov) | adam
  lr: float = 0.05
  schedule: str = "cosine"          # cosine | constant
  warmup_epochs: float = 0.0
  weight_decay: float = 5e-4
  augment: bool = False             # random crop (pad 4) + horizontal flip
  target: str = "labels"
  temperature: float = 1.0          # for distill
  train_last_only: bool = False     # freeze all but the `head` layer
  adv_eps: float = 0.0              # > 0: PGD (L-inf) adversarial training
  adv_steps: int = 5
  log_every: int = 50

  def validate(self) -> None:
    """Raises ValueError on an out-of-range setting."""
    if self.epochs <= 0:
      raise ValueError(f"epochs must be > 0, got {self.epochs}.")
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
    if self.optimizer not in ("sgd", "adam"):
      raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}.")
    if self.schedule not in ("cosine", "constant"):
      raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}.")
    if not self.lr > 0:
      raise ValueError(f"lr must be > 0, got {self.lr}.")
    if self.target not in TARGETS:
      raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}.")
    if self.temperature <= 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}.")
    if self.adv_eps < 0:
      raise ValueError(f"adv_eps must be >= 0, got {self.adv_eps}.")


def lr_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
  """The learning-rate shape, peak 1: (warmup-)cosine or constant.

  The step multiplies it by each model's own peak rate, so models with other
  rates share one compiled step.
  """
  if cfg.schedule == "constant":
    return optax.constant_schedule(1.0)
  warmup = int(cfg.warmup_epochs / cfg.epochs * total_steps)
  if warmup:
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total_steps)
  return optax.cosine_decay_schedule(1.0, total_steps)


@functools.lru_cache(maxsize=None)
def update_direction(optimizer: str) -> optax.GradientTransformation:
  """SGD's Nesterov momentum (0.9) or Adam's scaling, before rate and decay.

  The step adds weight decay (to the gradient for SGD, to the direction for
  Adam, as optax.adamw) and scales by minus the learning rate, so a step is
  that of ``optax.sgd``/``optax.adamw`` while rate and decay stay arguments.
  """
  if optimizer == "adam":
    return optax.scale_by_adam()
  return optax.trace(decay=0.9, nesterov=True)


def head_mask(params: PyTree) -> PyTree:
  """True for parameters of the final ``head`` layer (fine-tune-last)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(getattr(k, "key", None) == "head" for k in path), params)


def prunable(path) -> bool:
  """Kernels of conv and linear layers are pruned; biases and BatchNorm not."""
  return getattr(path[-1], "key", None) == "kernel" or (
      len(path) > 1 and getattr(path[-2], "key", None) == "kernel")


def augment_batch(x: jax.Array, key: jax.Array, pad: int = 4) -> jax.Array:
  """Random crop after reflect-padding by ``pad`` and random horizontal flip."""
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


def _soft_ce(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Mean cross-entropy against integer labels or target distributions."""
  if target.ndim == logits.ndim - 1:
    target = jax.nn.one_hot(target, logits.shape[-1])
  return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits), -1))


def _pgd_linf(loss_of_x, x, key, eps, steps):
  """Small L-inf PGD for adversarial training (random start, step 2.5 eps/steps)."""
  alpha = 2.5 * eps / steps
  x_adv = jnp.clip(x + jax.random.uniform(key, x.shape, minval=-eps, maxval=eps), 0, 1)

  def body(_, xa):
    g = jax.grad(loss_of_x)(xa)
    xa = xa + alpha * jnp.sign(g)
    return jnp.clip(jnp.clip(xa, x - eps, x + eps), 0.0, 1.0)
  return jax.lax.stop_gradient(jax.lax.fori_loop(0, steps, body, x_adv))


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
    return cls(cfg.optimizer, cfg.target, cfg.augment, cfg.adv_eps > 0, cfg.adv_steps)


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
      loss = _soft_ce(logits / temperature, target) * temperature ** 2
    else:
      loss = _soft_ce(logits, target)
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
      x = _pgd_linf(lambda xa: _soft_ce(eval_fn((params, rest), xa), target), x, k_adv,
                    hyper["adv_eps"], kind.adv_steps)
    (loss, (logits, new_rest)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params, rest, x, target, hyper["temperature"])
    wd = hyper["weight_decay"]
    if kind.optimizer == "sgd":
      grads = jax.tree.map(lambda g, p: g + wd * p, grads, params)
    direction, opt_state = tx.update(grads, opt_state, params)
    if kind.optimizer == "adam":
      direction = jax.tree.map(lambda u, p: u + wd * p, direction, params)
    params = jax.tree.map(lambda p, u, t, m: (p - hyper["lr"] * t * u) * m,
                          params, direction, trainable, mask)
    labels = target if target.ndim == 1 else jnp.argmax(target, -1)
    agree = jnp.mean(jnp.argmax(logits, -1) == labels)
    return (params, new_rest, opt_state, mask), {"loss": loss, "accuracy": agree}

  return step


@functools.lru_cache(maxsize=None)
def _lifted_step(graphdef, kind: StepKind, teacher_logits_fn, strategy: str):
  # Cached: the jitted function is the same object for every stack of this
  # architecture and step kind, so it compiles once per batch shape.
  return engine.over_models(make_step(graphdef, kind, teacher_logits_fn), strategy,
                            in_axes=(0, 0, 0, 0, 0, None, None), purpose="train")


@functools.lru_cache(maxsize=None)
def _lifted_init(optimizer: str, strategy: str):
  return engine.over_models(update_direction(optimizer).init, strategy, purpose="train")


_step_keys = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


def magnitude_mask(params: PyTree, ratio: float) -> PyTree:
  """Global magnitude pruning mask of ONE model: zero the smallest ``ratio``.

  Args:
    params: parameters of one model.
    ratio: fraction in [0, 1) of prunable weights (conv/linear kernels) to zero.

  Returns:
    A pytree of 0/1 float masks shaped like ``params`` (1 for non-prunable).
  """
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"prune ratio must be in [0, 1), got {ratio}.")
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  weights = jnp.concatenate([jnp.abs(v).ravel() for p, v in flat if prunable(p)])
  k = int(ratio * weights.size)
  threshold = jnp.sort(weights)[k - 1] if k > 0 else -1.0
  return jax.tree_util.tree_map_with_path(
      lambda p, v: (jnp.abs(v) > threshold).astype(v.dtype) if prunable(p)
      else jnp.ones_like(v), params)


def train_stack(
    stack: stack_lib.Stack,
    x_pool: np.ndarray,
    index: list[np.ndarray],
    cfg: TrainConfig,
    *,
    lrs: list[float] | None = None,
    labels: list[np.ndarray] | None = None,
    teacher: tuple[Callable, PyTree] | None = None,
    masks: PyTree | None = None,
    seed: int = 0,
    strategy: str = "auto",
    eval_data: tuple[np.ndarray, np.ndarray] | None = None,
    desc: str = "train",
) -> tuple[stack_lib.Stack, dict]:
  """Trains every model of a stack, one jitted step per batch for all.

  Args:
    stack: the models (initial or pretrained).
    x_pool: images, uint8 ``(N, H, W, C)``, shared by all models.
    index: per model, the indices into ``x_pool`` of its training data.
    cfg: training configuration.
    lrs: per model, its peak learning rate (default ``cfg.lr`` for all):
      copies fine-tuned at several rates train in one stack.
    labels: per model, targets aligned with ``index``: int labels for
      ``labels`` or ``(n_k, C)`` probabilities for ``soft``.
    teacher: ``(logits_fn, variables)`` of the teacher for teacher modes.
    masks: stacked 0/1 masks (pruning); default all ones.
    seed: seeds batch order, augmentation and adversary.
    strategy: model-axis strategy.
    eval_data: ``(x, y)`` to report test accuracy at the end.
    desc: name in the progress log.

  Every model runs the same number of steps, ``epochs`` over the largest
  part (smaller parts cycle more often), so a model trains exactly as alone
  when the parts of a stack have equal sizes.

  Returns:
    The trained stack and a history dict (loss/accuracy per logged step,
    seconds, examples per second, test accuracy).
  """
  cfg.validate()
  k = stack.size
  if len(index) != k:
    raise ValueError(f"{len(index)} index arrays for a stack of {k} models.")
  if any(len(ix) == 0 for ix in index):
    raise ValueError("A model has an empty data part; check the partition fractions.")
  if cfg.target in ("labels", "soft") and (labels is None or len(labels) != k):
    raise ValueError(f"target={cfg.target!r} needs `labels` for each of the {k} models.")
  if cfg.target.startswith("teacher") or cfg.target == "distill":
    if teacher is None:
      raise ValueError(f"target={cfg.target!r} needs a teacher (logits_fn, variables).")
  teacher_fn, teacher_vars = teacher if teacher is not None else (None, ())

  n_max = max(len(ix) for ix in index)
  steps_per_epoch = max(1, math.ceil(n_max / cfg.batch_size))
  total = max(1, int(round(cfg.epochs * steps_per_epoch)))
  lrs = [cfg.lr] * k if lrs is None else [float(v) for v in lrs]
  if len(lrs) != k or not all(v > 0 for v in lrs):
    raise ValueError(f"lrs must hold {k} rates > 0 (one per model), got {lrs}.")
  schedule = np.asarray(jax.vmap(lr_schedule(cfg, total))(jnp.arange(total)))
  peak = jnp.asarray(lrs, jnp.float32)
  per_model = lambda v: jnp.full((k,), v, jnp.float32)
  fixed = {"weight_decay": per_model(cfg.weight_decay),
           "temperature": per_model(cfg.temperature), "adv_eps": per_model(cfg.adv_eps)}
  first = jax.tree.map(lambda v: v[0], stack.params)
  trainable = (jax.tree.map(lambda h, p: jnp.full_like(p, h), head_mask(first), first)
               if cfg.train_last_only else jax.tree.map(jnp.ones_like, first))
  if masks is None:
    masks = jax.tree.map(jnp.ones_like, stack.params)
  strategy = engine.resolve(strategy, "train")
  opt_state = _lifted_init(cfg.optimizer, strategy)(stack.params)
  state = (stack.params, stack.rest, opt_state, masks)
  step = _lifted_step(stack.graphdef, StepKind.of(cfg), teacher_fn, strategy)

  # Batch order and augmentation follow each model's own seed, not its
  # position, so a model trains the same alone or inside any stack.
  model_seeds = [int(m.get("seed", i)) for i, m in enumerate(stack.meta)]
  samplers = [_Sampler(len(ix), np.random.default_rng([seed, s]))
              for s, ix in zip(model_seeds, index)]
  model_keys = jnp.stack([jax.random.fold_in(jax.random.key(seed), s)
                          for s in model_seeds])
  history = {"step": [], "loss": [], "accuracy": []}
  start = time.time()
  for t in range(total):
    batch_x, batch_y = [], []
    for i in range(k):
      sel = samplers[i].take(cfg.batch_size)
      batch_x.append(x_pool[index[i][sel]])
      if labels is not None:
        batch_y.append(labels[i][sel])
    x = stack_lib.to_float(np.stack(batch_x))
    y = jnp.asarray(np.stack(batch_y)) if labels is not None else jnp.zeros((k, cfg.batch_size), jnp.int32)
    keys = _step_keys(model_keys, t)
    hyper = {"lr": peak * schedule[t], **fixed}
    state, metrics = step(state, x, y, keys, hyper, trainable, teacher_vars)
    if (t + 1) % cfg.log_every == 0 or t + 1 == total:
      loss = np.asarray(metrics["loss"])
      acc = np.asarray(metrics["accuracy"])
      elapsed = time.time() - start
      history["step"].append(t + 1)
      history["loss"].append(loss.tolist())
      history["accuracy"].append(acc.tolist())
      logging.info(
          "%s: step %d/%d (epoch %.1f)  loss %.4f  batch acc %.3f  %.0f ex/s  ETA %.0fs",
          desc, t + 1, total, (t + 1) / steps_per_epoch, loss.mean(), acc.mean(),
          (t + 1) * cfg.batch_size * k / elapsed, elapsed / (t + 1) * (total - t - 1))
  params, rest, _, _ = state
  trained = dataclasses.replace(stack, params=params, rest=rest,
                                meta=[dict(m) for m in stack.meta])
  seconds = time.time() - start
  history.update(seconds=seconds, steps=total,
                 examples_per_second=total * cfg.batch_size * k / max(seconds, 1e-9))
  if eval_data is not None:
    acc = stack_lib.accuracy(trained, *eval_data, strategy=strategy)
    history["test_accuracy"] = acc.tolist()
    for m, a in zip(trained.meta, acc):
      m["test_accuracy"] = float(a)
    logging.info("%s: test accuracy %s", desc, np.round(acc, 4).tolist())
  return trained, history


class _Sampler:
  """Endless shuffled epochs over ``n`` items, one generator per model."""

  def __init__(self, n: int, rng: np.random.Generator):
    self.n, self.rng, self.buffer = n, rng, np.zeros((0,), np.int64)

  def take(self, b: int) -> np.ndarray:
    while len(self.buffer) < b:
      self.buffer = np.concatenate([self.buffer, self.rng.permutation(self.n)])
    out, self.buffer = self.buffer[:b], self.buffer[b:]
    return out
