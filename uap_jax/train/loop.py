"""The training loop of a stack: batches, per-model rates, logging, evaluation.

Every model of a stack runs the same number of steps; each draws its batches
from its own part with its own seed (:class:`_Sampler`), so a model trains
the same alone or inside any stack.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from uap_jax.runtime import engine
from uap_jax.runtime import stack as stack_lib
from uap_jax.train import step as step_lib
from uap_jax.train.config import TrainConfig, lr_schedule, steps_per_epoch, total_steps
from uap_jax.train.masks import head_mask

PyTree = Any

_step_keys = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


def _check_inputs(stack, index, cfg, labels, teacher) -> None:
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


def _hyper_parameters(cfg: TrainConfig, lrs: list[float] | None, k: int, total: int):
  """Per step, the learning-rate shape; per model, peak rate and fixed scalars."""
  lrs = [cfg.lr] * k if lrs is None else [float(v) for v in lrs]
  if len(lrs) != k or not all(v > 0 for v in lrs):
    raise ValueError(f"lrs must hold {k} rates > 0 (one per model), got {lrs}.")
  schedule = np.asarray(jax.vmap(lr_schedule(cfg, total))(jnp.arange(total)))
  per_model = lambda v: jnp.full((k,), v, jnp.float32)
  fixed = {"weight_decay": per_model(cfg.weight_decay),
           "temperature": per_model(cfg.temperature), "adv_eps": per_model(cfg.adv_eps)}
  return schedule, jnp.asarray(lrs, jnp.float32), fixed


def _trainable(stack: stack_lib.Stack, cfg: TrainConfig) -> PyTree:
  """1 where parameters train, 0 where frozen (shared by the models)."""
  first = jax.tree.map(lambda v: v[0], stack.params)
  if cfg.train_last_only:
    return jax.tree.map(lambda h, p: jnp.full_like(p, h), head_mask(first), first)
  return jax.tree.map(jnp.ones_like, first)


def _batch(samplers, x_pool, index, labels, batch_size):
  """The next batch of every model: float images and targets."""
  batch_x, batch_y = [], []
  for i, sampler in enumerate(samplers):
    sel = sampler.take(batch_size)
    batch_x.append(x_pool[index[i][sel]])
    if labels is not None:
      batch_y.append(labels[i][sel])
  x = stack_lib.to_float(np.stack(batch_x))
  if labels is None:
    return x, jnp.zeros((len(samplers), batch_size), jnp.int32)
  return x, jnp.asarray(np.stack(batch_y))


def _log(history, metrics, t, total, per_epoch, examples, start, desc) -> None:
  loss = np.asarray(metrics["loss"])
  acc = np.asarray(metrics["accuracy"])
  elapsed = time.time() - start
  history["step"].append(t + 1)
  history["loss"].append(loss.tolist())
  history["accuracy"].append(acc.tolist())
  logging.info(
      "%s: step %d/%d (epoch %.1f)  loss %.4f  batch acc %.3f  %.0f ex/s  ETA %.0fs",
      desc, t + 1, total, (t + 1) / per_epoch, loss.mean(), acc.mean(),
      (t + 1) * examples / elapsed, elapsed / (t + 1) * (total - t - 1))


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

  Every model runs the same number of steps (``cfg.steps``, else ``epochs``
  over the largest part; smaller parts cycle more often), so a model trains
  exactly as alone when the parts of a stack have equal sizes.

  Returns:
    The trained stack and a history dict (loss/accuracy per logged step,
    seconds, examples per second, steps, test accuracy).
  """
  cfg.validate()
  _check_inputs(stack, index, cfg, labels, teacher)
  k = stack.size
  teacher_fn, teacher_vars = teacher if teacher is not None else (None, ())
  n_max = max(len(ix) for ix in index)
  total = total_steps(cfg, n_max)
  schedule, peak, fixed = _hyper_parameters(cfg, lrs, k, total)
  trainable = _trainable(stack, cfg)
  if masks is None:
    masks = jax.tree.map(jnp.ones_like, stack.params)
  strategy = engine.resolve(strategy)
  opt_state = step_lib.lifted_init(cfg.optimizer, strategy)(stack.params)
  state = (stack.params, stack.rest, opt_state, masks)
  if cfg.donate:
    # Donated buffers are overwritten: never the caller's arrays.
    state = jax.tree.map(jnp.copy, state)
  step = step_lib.lifted_step(stack.graphdef, step_lib.StepKind.of(cfg), teacher_fn,
                              strategy, donate=cfg.donate)

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
    x, y = _batch(samplers, x_pool, index, labels, cfg.batch_size)
    hyper = {"lr": peak * schedule[t], **fixed}
    state, metrics = step(state, x, y, _step_keys(model_keys, t), hyper, trainable,
                          teacher_vars)
    if (t + 1) % cfg.log_every == 0 or t + 1 == total:
      _log(history, metrics, t, total, steps_per_epoch(n_max, cfg.batch_size),
           cfg.batch_size * k, start, desc)
  params, rest, _, _ = state
  trained = dataclasses.replace(stack, params=params, rest=rest,
                                meta=[dict(m) for m in stack.meta])
  seconds = time.time() - start
  history.update(seconds=seconds, steps=total,
                 examples_per_second=total * cfg.batch_size * k / max(seconds, 1e-9))
  if eval_data is not None:
    _evaluate(trained, eval_data, strategy, history, desc)
  return trained, history


def _evaluate(trained, eval_data, strategy, history, desc) -> None:
  """Test accuracy of every model, into its meta and the history."""
  acc = stack_lib.accuracy(trained, *eval_data, strategy=strategy)
  history["test_accuracy"] = acc.tolist()
  for m, a in zip(trained.meta, acc):
    m["test_accuracy"] = float(a)
  logging.info("%s: test accuracy %s", desc, np.round(acc, 4).tolist())


class _Sampler:
  """Endless shuffled epochs over ``n`` items, one generator per model."""

  def __init__(self, n: int, rng: np.random.Generator):
    self.n, self.rng, self.buffer = n, rng, np.zeros((0,), np.int64)

  def take(self, b: int) -> np.ndarray:
    while len(self.buffer) < b:
      self.buffer = np.concatenate([self.buffer, self.rng.permutation(self.n)])
    out, self.buffer = self.buffer[:b], self.buffer[b:]
    return out
