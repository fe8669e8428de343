"""Stage `zoo`: simulate every kind of pirated and independent suspect.

One stack per kind and architecture (see :mod:`uap_jax.zoo`), each saved in
``checkpoints/zoo/{kind}__{arch}``. A stack whose checkpoint already holds
the planned models of the current victim is not retrained, so a rerun after
an interruption trains only what is missing (``--overwrite`` retrains all).
In a multi-process run the missing stacks are divided among the processes,
largest estimated training cost first (:mod:`uap_jax.runtime.divide`); each
saves its own, and ``zoo.json`` names the process that trained each stack.
Writes ``zoo.json``: one entry per model, the stacks, and wall seconds per
kind; logs the accuracy / agreement table.
"""

from __future__ import annotations

import time

import jax
from absl import logging

from uap_jax import train
from uap_jax import zoo as zoo_lib
from uap_jax.adapters.base import ADAPTER_ARCH
from uap_jax.runtime import divide
from uap_jax.runtime.context import RunContext


def _saved_models(ctx: RunContext, plan, digest: str) -> list[dict] | None:
  """The saved stack's models when it holds exactly this plan, else None."""
  try:
    saved = ctx.artifacts.zoo_stack_meta(plan.checkpoint_name)
  except ValueError as e:
    logging.warning("Zoo stack %s is unreadable (%s); retraining it.", plan.key, e)
    return None
  if saved is not None and not zoo_lib.plan_matches(plan, saved, digest):
    logging.info("Zoo stack %s: saved models differ from the plan or the "
                 "victim; retraining it.", plan.key)
    return None
  return saved


def _train_and_save(ctx: RunContext, plan, victim, digest: str) -> list[dict]:
  """Trains one plan, evaluates it on the test set and saves its stack;
  returns its models' metadata (with the training seconds)."""
  data = ctx.data
  logging.info("Zoo stack %s: training %d model(s) on the %s part.", plan.key,
               len(plan.names), plan.part)
  start = time.time()
  student, info = zoo_lib.train_plan(
      plan, victim, data.x_train, data.y_train, ctx.parts, augment=ctx.augment,
      arch_kwargs=ctx.arch_kwargs(), eval_data=(data.x_test, data.y_test),
      strategy=ctx.cfg.strategy)
  for m in student.meta:
    m["victim_digest"] = digest
    m["checkpoint"] = plan.checkpoint_name
  ctx.artifacts.save_zoo_stack(plan.checkpoint_name, student)
  logging.info("Zoo stack %s: %.1f s training, %.1f s with evaluation and saving.",
               plan.key, info["seconds"], time.time() - start)
  return student.meta


def _log_faithfulness(faithfulness: dict | None) -> None:
  if not faithfulness:
    return
  ref = faithfulness["same_data_independents"]
  for key, value in faithfulness.items():
    if key == "same_data_independents":
      continue
    log = logging.info if value["faithful"] else logging.warning
    log("Extraction %s: agreement %.4f vs same-data independents mean %.4f, max "
        "%.4f%s", key, value["mean"], ref["mean"], ref["max"],
        "" if value["faithful"] else " (NOT faithful: raise --zoo_epochs or "
        "--query_budget)")


def _victim_reinit(victim) -> bool:
  """Whether fresh models can have a given victim's own architecture."""
  if victim.arch != ADAPTER_ARCH:
    return False
  from uap_jax import adapters  # pylint: disable=g-import-not-at-top
  why_not = adapters.reinit_problem(victim)
  if why_not is None:
    logging.info("Zoo: fresh models (extraction students, independent_seed, "
                 "independent_data) have the given victim's own architecture, "
                 "freshly initialised.")
    return True
  logging.warning("Zoo: the given victim's architecture cannot be initialised afresh "
                  "(%s), so independents of its architecture are missing and fresh "
                  "models use --victim_arch; an architecture like the victim's may "
                  "then read as piracy. Give the adapter a working init_fn (see "
                  "uap_jax.adapters.ModelAdapter).", why_not)
  return False


def run(ctx: RunContext) -> dict:
  """Trains the missing zoo stacks, evaluates and saves them; writes ``zoo.json``.

  Args:
    ctx: the run's context (settings, work directory, data, victim).

  Returns:
    A summary: models, stacks trained / reused, seconds per kind, per-kind
    accuracy and agreement, extraction faithfulness.
  """
  cfg = ctx.cfg
  # Every check before any training: settings, then the victim.
  zoo_lib.check_config(cfg)
  if not ctx.artifacts.has_victim():
    raise ValueError(
        f"The zoo needs a victim, and {ctx.workdir.root} has none "
        f"({ctx.workdir.checkpoint_dir('victim')} holds no checkpoint): run "
        "--stages=victim,zoo, or point --workdir at a run with a trained victim.")
  victim = ctx.artifacts.victim
  skipped = zoo_lib.untrainable_kinds(
      victim.params, has_head=any(jax.tree.leaves(train.head_mask(victim.params))))
  skipped = {k: why for k, why in skipped.items() if cfg.kind_counts().get(k, 0)}
  for kind, why in skipped.items():
    logging.warning("Zoo kind %s: skipped, %s.", kind, why)
  reinit = _victim_reinit(victim)
  plans = zoo_lib.plan_zoo(cfg, victim_arch=victim.arch, skip_kinds=tuple(skipped),
                           victim_reinit=reinit)
  digest = zoo_lib.victim_digest(victim)

  built = divide.build_missing(
      plans, load=lambda plan: _saved_models(ctx, plan, digest),
      build=lambda plan: _train_and_save(ctx, plan, victim, digest),
      what="zoo stacks", describe=lambda plan: plan.key, cost=ctx.training_cost,
      rebuild=cfg.overwrite)

  entries, stacks, kind_seconds, kind_cpu = [], [], {}, {}
  for plan, models_meta, owner in zip(plans, built.results, built.owner):
    if owner < 0:
      logging.info("Zoo stack %s: already trained, reusing it.", plan.key)
    seconds = float(models_meta[0].get("train_seconds", 0.0))
    cpu_seconds = float(models_meta[0].get("train_cpu_seconds", 0.0))
    entries.extend(zoo_lib.zoo_entry(m) for m in models_meta)
    stacks.append({"key": plan.key, "checkpoint": plan.checkpoint_name,
                   "kind": plan.kind, "arch": plan.arch, "size": len(plan.names),
                   "seconds": seconds, "cpu_seconds": cpu_seconds,
                   "trained_by_process": owner if owner >= 0 else None})
    kind_seconds[plan.kind] = kind_seconds.get(plan.kind, 0.0) + seconds
    kind_cpu[plan.kind] = kind_cpu.get(plan.kind, 0.0) + cpu_seconds
  trained_keys = [plans[i].key for i in built.built]
  reused_keys = [plans[i].key for i in built.reused]

  per_kind = zoo_lib.kind_summary(entries) if entries else {}
  faithfulness = zoo_lib.extraction_faithfulness(entries)
  ctx.artifacts.save_zoo({
      "models": entries, "stacks": stacks, "seconds_per_kind": kind_seconds,
      "cpu_seconds_per_kind": kind_cpu, "per_kind": per_kind,
      "extraction_faithfulness": faithfulness, "victim_digest": digest,
      "skipped_kinds": skipped, "fresh_models_of_victim_arch": reinit})
  if entries:
    logging.info("Zoo (%d models):\n%s", len(entries), zoo_lib.format_table(entries))
  for kind, seconds in kind_seconds.items():
    logging.info("Zoo kind %-17s %6.1f s wall, %6.1f s CPU", kind, seconds, kind_cpu[kind])
  _log_faithfulness(faithfulness)
  return {"models": len(entries), "stacks_trained": trained_keys,
          "stacks_reused": reused_keys, "seconds_per_kind": kind_seconds,
          "cpu_seconds_per_kind": kind_cpu, "per_kind": per_kind,
          "extraction_faithfulness": faithfulness, "skipped_kinds": skipped}
