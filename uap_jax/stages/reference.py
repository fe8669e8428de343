"""Stage `reference`: the reference bank of independent models.

Trains the missing stacks of the bank (:mod:`uap_jax.zoo.reference`) in
``BANK/KEY/checkpoints/ARCH__RECIPE`` (BANK: ``--reference_bank``, default
``WORKDIR/reference_bank``; KEY: the data and partition the bank is valid
for), reusing every stack whose plan matches, so several runs on the same
data share one bank and an interrupted build resumes. The bank directory is
locked while stacks are trained. The owner's own independents
(``--reference_models``) join as one-model stacks saved in the run
(``checkpoints/reference_given/``), not in the shared bank. Writes
``reference.json``: the stacks with
their checkpoint paths, one entry per model, and what building cost.
"""

from __future__ import annotations

import contextlib
import os
import time

from absl import logging
import numpy as np

from uap_jax import adapters
from uap_jax.adapters import suspects
from uap_jax.adapters.base import ADAPTER_ARCH
from uap_jax.runtime import divide
from uap_jax.runtime import stack as stack_lib
from uap_jax.runtime.context import RunContext
from uap_jax.runtime.workdir import Workdir
from uap_jax.zoo import reference as bank_lib
from uap_jax.zoo import summary as zoo_summary


def bank_workdir(ctx: RunContext) -> Workdir:
  """The bank's directory for this run's data and partition."""
  root = ctx.cfg.reference_bank or ctx.workdir.path("reference_bank")
  data = ctx.data
  key = bank_lib.bank_key(ctx.cfg.dataset, data.image_shape, data.num_classes, ctx.parts)
  return Workdir(os.path.join(os.path.abspath(root), key),
                 writer=ctx.workdir.is_writer)


def _saved(ctx: RunContext, plan, directory: str) -> list[dict] | None:
  try:
    saved = ctx.artifacts.bank_stack_meta(directory)
  except ValueError as e:
    logging.warning("Reference stack %s is unreadable (%s); retraining it.", directory, e)
    return None
  if saved is not None and not bank_lib.plan_matches(plan, saved):
    logging.info("Reference stack %s: saved models differ from the plan; "
                 "retraining it.", directory)
    return None
  return saved


def _train(ctx: RunContext, bank: Workdir, plan, name: str) -> list[dict]:
  """Trains one bank stack, evaluates and saves it; returns its models' metadata."""
  logging.info("Reference stack %s: training %d model(s).", name, len(plan.names))
  data = ctx.data
  start = time.time()
  stack, _ = bank_lib.train_bank_stack(
      plan, data.x_train, data.y_train, ctx.parts, data_augment=ctx.augment,
      arch_kwargs=ctx.arch_kwargs(), strategy=ctx.cfg.strategy,
      victim=ctx.artifacts.victim if plan.arch == ADAPTER_ARCH else None)
  accuracy = stack_lib.accuracy(stack, data.x_test, data.y_test, strategy=ctx.cfg.strategy)
  seconds = time.time() - start
  for m, a in zip(stack.meta, accuracy):
    m.update(test_accuracy=float(a), train_seconds=seconds)
  ctx.artifacts.save_bank_stack(bank, name, stack)
  logging.info("Reference stack %s: %d model(s), test accuracy %s, %.1f s.", name,
               stack.size, " ".join(f"{a:.3f}" for a in accuracy), seconds)
  return stack.meta


def _given_models(ctx: RunContext) -> list[tuple[str, list[dict]]]:
  """Saves the owner's ``--reference_models`` as one-model stacks in the run,
  recorded afresh each time (the files behind them may have changed), divided
  among the processes.

  Returns:
    Per model its checkpoint directory and metadata.
  """
  data = ctx.data
  sources = suspects.split_sources(ctx.cfg.reference_models, flag="--reference_models")
  names = {s: f"reference_given/reference_given_{suspects.display_name(s)}"
           for s in sources}

  def record(source: str) -> list[dict]:
    adapter = adapters.check_against_data(source, data, flag="--reference_models")
    meta = {"name": names[source].split("/")[-1], "kind": bank_lib.REFERENCE_KIND,
            "family": "independent", "parent": None, "arch": ADAPTER_ARCH,
            "recipe": "given", "part": "given", "source": suspects.source_id(source),
            "hparams": {"recipe": "given"}}
    stack = adapters.to_stack(adapter, meta, num_classes=data.num_classes,
                              image_shape=data.image_shape)
    accuracy, = stack_lib.accuracy(stack, data.x_test, data.y_test,
                                   strategy=ctx.cfg.strategy)
    stack.meta[0]["test_accuracy"] = float(accuracy)
    ctx.artifacts.save_bank_stack(ctx.workdir, names[source], stack)
    logging.info("Reference model %s (given): test accuracy %.3f.", source, accuracy)
    return stack.meta

  built = divide.build_missing(
      sources, build=record, what="given reference models",
      load=lambda s: ctx.artifacts.bank_stack_meta(ctx.workdir.checkpoint_dir(names[s])),
      rebuild=True)
  return [(ctx.workdir.checkpoint_dir(names[s]), meta)
          for s, meta in zip(sources, built.results)]


def run(ctx: RunContext) -> dict:
  """Trains the bank's missing stacks and writes ``reference.json``.

  Args:
    ctx: the run's context.

  Returns:
    A summary: models, stacks trained / reused, seconds to build.
  """
  victim = ctx.artifacts.victim if ctx.artifacts.has_victim() else None
  victim_arch, arch_digest = (victim.arch if victim else None), None
  if victim_arch == ADAPTER_ARCH:
    # A given victim (--victim): its own architecture initialised afresh when
    # its adapter can, else --victim_arch, as the zoo's fresh models do.
    if adapters.reinit_problem(victim) is None:
      arch_digest = bank_lib.architecture_digest(victim)
    else:
      victim_arch = None
  plans = bank_lib.plan_bank(ctx.cfg, victim_arch=victim_arch)
  bank = bank_workdir(ctx)
  names = [bank_lib.checkpoint_name(plan, arch_digest) for plan in plans]
  entries, stacks = [], []
  start = time.time()
  with bank.lock() if plans else contextlib.nullcontext():
    built = divide.build_missing(
        list(range(len(plans))),
        load=lambda i: _saved(ctx, plans[i], bank.checkpoint_dir(names[i])),
        build=lambda i: _train(ctx, bank, plans[i], names[i]),
        what="reference stacks", describe=lambda i: names[i],
        cost=lambda i: ctx.training_cost(plans[i]),
        rebuild=ctx.cfg.overwrite)
  for plan, name, meta, owner in zip(plans, names, built.results, built.owner):
    stacks.append({"name": name, "checkpoint": bank.checkpoint_dir(name),
                   "arch": plan.arch, "recipe": plan.shared("recipe"),
                   "size": len(plan.names),
                   "seconds": float(meta[0].get("train_seconds", 0.0)),
                   "trained_by_process": owner if owner >= 0 else None})
    entries.extend({**zoo_summary.zoo_entry(m), "recipe": m.get("recipe")} for m in meta)
  trained = [names[i] for i in built.built]
  reused = [names[i] for i in built.reused]
  seconds = float(sum(stacks[i]["seconds"] for i in built.built))
  for directory, meta in _given_models(ctx) if ctx.cfg.reference_models else []:
    stacks.append({"name": meta[0]["name"], "checkpoint": directory, "arch": ADAPTER_ARCH,
                   "recipe": "given", "size": 1, "seconds": 0.0})
    entries.extend({**zoo_summary.zoo_entry(m), "recipe": "given",
                    "source": m["source"]} for m in meta)
  accuracy = [e["test_accuracy"] for e in entries if "test_accuracy" in e]
  summary = {
      "bank": bank.root, "models": entries, "stacks": stacks,
      "stacks_trained": trained, "stacks_reused": reused,
      "train_seconds_this_run": seconds,
      # What the whole bank cost to build, whichever runs trained it.
      "build_seconds": float(sum(s["seconds"] for s in stacks)),
      "test_accuracy_range": [float(np.min(accuracy)), float(np.max(accuracy))]
                             if accuracy else None,
  }
  ctx.artifacts.save_reference(summary)
  logging.info("Reference bank %s: %d models in %d stacks (%d trained, %d reused) "
               "in %.1f s.", bank.root, len(entries), len(stacks), len(trained),
               len(reused), time.time() - start)
  return {"models": len(entries), "stacks_trained": trained, "stacks_reused": reused,
          "train_seconds_this_run": seconds}

