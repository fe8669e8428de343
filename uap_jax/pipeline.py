"""Runs the stages of a run in order, resuming from what is finished.

A stage is finished when ``WORKDIR/stages/STAGE.json`` exists; it is written
last, after the stage saved its artefacts, so an interrupted stage reruns.
The marker records the settings the stage depends on
(:meth:`Config.stage_settings`): a rerun with other values redoes the stage.
Rerunning a finished stage (settings changed, or ``--overwrite``) invalidates
the stages after it.
"""

from __future__ import annotations

import importlib
import json
import os
import time

from absl import logging

from uap_jax.runtime import distributed
from uap_jax.runtime import sharding
from uap_jax.config import Config, STAGES
from uap_jax.runtime.context import RunContext
from uap_jax.runtime.workdir import Workdir

# Settings that change what earlier stages produced: a rerun in the same
# work directory with other values would mix incompatible artefacts.
_FIXED_BY_WORKDIR = ("dataset", "seed", "victim_arch", "width", "victim_frac",
                     "attacker_frac", "independent_frac")


def _check_same_run(cfg: Config, workdir: Workdir) -> None:
  if not workdir.exists("config.json") or cfg.overwrite:
    return
  saved = workdir.read_json("config.json")
  changed = {k: (saved.get(k), getattr(cfg, k)) for k in _FIXED_BY_WORKDIR
             if k in saved and saved.get(k) != getattr(cfg, k)}
  if changed:
    raise ValueError(
        f"--workdir {workdir.root} holds a run made with other settings "
        f"{ {k: f'{a} -> {b}' for k, (a, b) in changed.items()} }; use a new "
        "--workdir, or --overwrite to recompute the requested stages.")


def run(cfg: Config) -> dict[str, dict]:
  """Runs ``cfg.stages`` in pipeline order.

  Args:
    cfg: the run's settings (validated here, before any work).

  Returns:
    Per stage run, its summary (``{"skipped": True}`` when already done).
  """
  cfg.validate()
  # Before any other JAX use: a multi-process run must start first.
  distributed.initialize_from(cfg.coordinator_address, cfg.num_processes,
                              cfg.process_id, cfg.distributed)
  if cfg.mesh:
    sharding.set_default_mesh(cfg.mesh)
  workdir = Workdir(cfg.workdir)
  _check_same_run(cfg, workdir)
  workdir.write_text("config.json", cfg.to_json() + "\n")
  ctx = RunContext(cfg, workdir)
  ordered = [s for s in STAGES if s in cfg.stages]
  results = {}
  invalidated = False
  for stage in ordered:
    if stage == "verify" and cfg.suspect:
      # Judging one outside suspect is a query, not a step of the run.
      results[stage] = importlib.import_module("uap_jax.stages.verify").run(ctx)
      continue
    settings = _as_json(cfg.stage_settings(stage))
    if workdir.stage_done(stage) and not cfg.overwrite and not invalidated:
      changed = _changed_settings(workdir, stage, settings)
      if not changed:
        logging.info("Stage %s: already done in %s (use --overwrite to redo).",
                     stage, workdir.root)
        results[stage] = {"skipped": True}
        continue
      logging.info("Stage %s: settings changed since it ran (%s); redoing it "
                   "and the stages after it.", stage,
                   ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()))
    module = importlib.import_module(f"uap_jax.stages.{stage}")
    logging.info("Stage %s: starting.", stage)
    workdir.clear_stage(stage)
    start = time.time()
    summary = module.run(ctx) or {}
    seconds = time.time() - start
    workdir.mark_done(stage, {"seconds": seconds, "summary": summary,
                              "settings": settings})
    logging.info("Stage %s: done in %.1f s.", stage, seconds)
    results[stage] = summary
    # Later stages built on the old artefacts of this one must be redone.
    invalidated = True
    for later in STAGES[STAGES.index(stage) + 1:]:
      if later not in cfg.stages:
        workdir.clear_stage(later)
  return results


def _as_json(settings: dict) -> dict:
  """Settings as a JSON round trip gives them back (lists, floats, strings)."""
  return json.loads(json.dumps(settings))


def _changed_settings(workdir: Workdir, stage: str, settings: dict) -> dict:
  """``{field: (then, now)}`` for settings that differ from the stage's marker.

  Markers written before settings were recorded count as unchanged.
  """
  recorded = workdir.read_json(os.path.join("stages", f"{stage}.json")).get("settings")
  if recorded is None:
    return {}
  # Only settings the marker knows: a setting added to Config later keeps, at
  # its default, the behaviour the stage ran with.
  return {k: (recorded[k], v) for k, v in settings.items()
          if k in recorded and recorded[k] != v}

