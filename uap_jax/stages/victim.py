"""Stage `victim`: train the owner's model on its data part, or record the
model the owner gives (``--victim=SPEC``, see :mod:`uap_jax.adapters`)."""

from __future__ import annotations

import dataclasses
import time

import jax

from absl import logging

from uap_jax import adapters
from uap_jax import models
from uap_jax import train
from uap_jax.runtime import checkpoint
from uap_jax.runtime import divide
from uap_jax.runtime import stack as stack_lib
from uap_jax.runtime.context import RunContext


_VICTIM_META = {"name": "victim", "kind": "victim", "family": "victim", "parent": None,
                "part": "victim"}


def _record_given(ctx: RunContext) -> dict:
  """Records the owner's model (``--victim``): evaluated on the run's test
  data and saved as the run's victim stack."""
  cfg, data = ctx.cfg, ctx.data
  adapter = ctx.given_victim
  start = time.time()
  if adapters.is_stack_checkpoint(cfg.victim):
    # A uap-jax model keeps its built-in architecture (and fresh copies of it).
    loaded = checkpoint.load_stack(cfg.victim).select([0])
    victim = dataclasses.replace(loaded, meta=[dict(_VICTIM_META, source=cfg.victim)])
  else:
    victim = adapters.to_stack(adapter, dict(_VICTIM_META, source=cfg.victim),
                               num_classes=data.num_classes, image_shape=data.image_shape)
  accuracy = float(stack_lib.accuracy(victim, data.x_test, data.y_test,
                                      strategy=cfg.strategy)[0])
  trainable = sum(int(leaf.size) for leaf in jax.tree.leaves(victim.params))
  summary = {
      "arch": victim.arch, "spec": cfg.victim, "given": True,
      "variables_digest": ctx.given_victim_digest, "dataset": cfg.dataset,
      "num_classes": data.num_classes, "image_shape": list(data.image_shape),
      "class_names": list(adapter.class_names) if adapter.class_names else None,
      "train_examples": 0, "test_examples": int(len(data.y_test)),
      "test_accuracy": accuracy, "parameters": adapter.parameter_count,
      "trainable_parameters": trainable, "trainable": adapter.is_trainable,
      "has_head": adapter.has_head, "record_seconds": time.time() - start,
  }
  ctx.artifacts.save_victim(victim, summary)
  logging.info("Victim %s (given): test accuracy %.4f, %d parameters (%d trainable), "
               "variables %s", cfg.victim, accuracy, summary["parameters"], trainable,
               summary["variables_digest"])
  return summary


def run(ctx: RunContext) -> dict:
  """Trains (or, with ``--victim``, records), evaluates and saves the victim;
  writes ``victim.json``.

  In a multi-process run process 0 does it and the others read what it saved
  (:mod:`uap_jax.runtime.divide`): the victim is trained once.
  """
  built = divide.build_missing(
      ["victim"], build=lambda _: _record_given(ctx) if ctx.cfg.victim else _train(ctx),
      load=lambda _: ctx.artifacts.saved_victim_summary(),
      what="victim", rebuild=True)
  return built.results[0]


def _train(ctx: RunContext) -> dict:
  """Trains the victim on its part; saves it and ``victim.json``."""
  cfg, data = ctx.cfg, ctx.data
  part = ctx.parts["victim"]
  victim = stack_lib.create(
      cfg.victim_arch, [cfg.seed],
      meta=[dict(_VICTIM_META)], **ctx.arch_kwargs())
  config = train.TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size,
                             optimizer=cfg.optimizer, lr=cfg.lr,
                             weight_decay=cfg.weight_decay, augment=ctx.augment)
  start = time.time()
  victim, history = train.train_stack(
      victim, data.x_train, [part], config, labels=[data.y_train[part]],
      seed=cfg.seed, strategy=cfg.strategy, eval_data=(data.x_test, data.y_test),
      desc="victim")
  seconds = time.time() - start
  n_params = models.param_count(victim.model(0))
  summary = {
      "arch": cfg.victim_arch, "width": cfg.width, "dataset": cfg.dataset,
      "num_classes": data.num_classes, "image_shape": list(data.image_shape),
      "train_examples": int(len(part)), "test_examples": int(len(data.y_test)),
      "test_accuracy": float(history["test_accuracy"][0]),
      "parameters": n_params, "epochs": cfg.epochs, "train_seconds": seconds,
      "examples_per_second": history["examples_per_second"],
  }
  ctx.artifacts.save_victim(victim, summary)
  logging.info("Victim %s: test accuracy %.4f, %d parameters, %.1f s", cfg.victim_arch,
               summary["test_accuracy"], n_params, seconds)
  return summary
