"""Stage `victim`: train the owner's model on its data part."""

from __future__ import annotations

import time

from absl import logging

from uap_jax import models
from uap_jax import train
from uap_jax.runtime import stack as stack_lib
from uap_jax.runtime.context import RunContext


def run(ctx: RunContext) -> dict:
  """Trains, evaluates and saves the victim; writes ``victim.json``."""
  cfg, data = ctx.cfg, ctx.data
  part = ctx.parts["victim"]
  victim = stack_lib.create(
      cfg.victim_arch, [cfg.seed],
      meta=[{"name": "victim", "kind": "victim", "family": "victim", "parent": None,
             "part": "victim"}], **ctx.arch_kwargs())
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
