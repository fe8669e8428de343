"""Runs the stages of a run in order, resuming from what is finished.

The order and the stage modules are :mod:`uap_jax.stages`. A stage is
finished when ``WORKDIR/stages/STAGE.json`` exists; it is written last,
after the stage saved its artefacts, so an interrupted stage reruns. The
marker records the settings the stage depends on
(:meth:`Config.stage_settings`): a rerun with other values redoes the stage.
Rerunning a finished stage (settings changed, or ``--overwrite``) invalidates
the stages after it, and so does a marker over artefacts that are not whole
(:meth:`~uap_jax.runtime.artifacts.Artifacts.complete`): that stage reruns.

Before anything is written: :func:`check` rejects bad settings,
:func:`check_data` what the data set and its partition rule out, and a run
holds the work directory's lock (:meth:`Workdir.lock`), so a second run on
the same directory is refused at once.
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

from absl import logging

from uap_jax import adapters
from uap_jax.adapters import suspects
from uap_jax import stages as stages_lib
from uap_jax import zoo
from uap_jax.zoo import reference
from uap_jax.config import Config, INDEPENDENT_KINDS, STAGES
from uap_jax.runtime import compile_cache
from uap_jax.runtime import distributed
from uap_jax.runtime import engine
from uap_jax.runtime import sharding
from uap_jax.runtime.context import RunContext
from uap_jax.runtime.workdir import Workdir
from uap_jax.verify import splits

# Settings that change what earlier stages produced: a rerun in the same
# work directory with other values would mix incompatible artefacts.
_FIXED_BY_WORKDIR = ("dataset", "seed", "victim_arch", "width", "victim_frac",
                     "attacker_frac", "independent_frac")
# Stages that read no data: a run of these alone in a work directory whose
# config.json holds its data set need not load it.
_DATALESS_STAGES = ("encoder", "report")


def check(cfg: Config) -> None:
  """Checks every setting of a run, without starting JAX's backends.

  :meth:`Config.validate` (each field on its own), then what the library
  checks itself: the model-axis strategy, the multi-process modes, the zoo's
  settings with its architecture names (:func:`uap_jax.zoo.check_config`),
  the encoder/calibration split (:func:`uap_jax.verify.splits.check_fractions`)
  when the encoder or verify stage runs, the >= 3 independent models that
  split needs, and a ``--suspect`` path that exists and (an ``.npz``) reads.

  Args:
    cfg: the run's settings.

  Raises:
    ValueError: naming the flag and the fix for the first bad setting.
  """
  cfg.validate()
  # Only the name: resolving 'auto' would start JAX's backends before
  # jax.distributed could.
  engine.check_strategy(cfg.strategy)
  distributed.check_mode(cfg.distributed)
  distributed.check_share_mode(cfg.share_mode)
  zoo.check_config(cfg)
  reference.check_config(cfg)
  try:
    splits.check_fractions(cfg.split_train, cfg.split_calib)
  except ValueError as e:
    raise ValueError(f"--split_train={cfg.split_train}, --split_calib="
                     f"{cfg.split_calib}: {e}") from e
  _check_split_counts(cfg)
  if cfg.suspect:
    suspects.check_sources(cfg.suspect)
  if cfg.victim and "victim" in cfg.stages:
    adapters.check_spec(cfg.victim)
  if cfg.reference_models and "reference" in cfg.stages:
    suspects.check_reference_models(cfg.reference_models)
  if os.path.exists(cfg.workdir) and not os.path.isdir(cfg.workdir):
    raise ValueError(f"--workdir={cfg.workdir} is a file, not a directory: name "
                     "a new or existing run directory.")


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


def check_data(cfg: Config, data, part_sizes: Mapping[str, int]) -> None:
  """The checks that need the data set and its partition; writes nothing.

  Args:
    cfg: the run's settings (already checked by :func:`check`).
    data: the loaded data set (``y_train`` is used).
    part_sizes: training images per part (``victim``, ``attacker``,
      ``independent``), from :attr:`RunContext.planned_parts`.

  Raises:
    ValueError: naming the flags and the fix.
  """
  if cfg.victim and "victim" in cfg.stages:
    adapters.check_against_data(cfg.victim, data, flag="--victim")
  if cfg.reference_models and "reference" in cfg.stages:
    for spec in suspects.split_sources(cfg.reference_models, flag="--reference_models"):
      adapters.check_against_data(spec, data, flag="--reference_models")
  victim = int(part_sizes["victim"])
  if "fingerprint" in cfg.stages and cfg.fp_k * cfg.fp_v > victim:
    raise ValueError(
        f"--fp_k * --fp_v = {cfg.fp_k * cfg.fp_v} points exceed the victim's "
        f"{victim} training images (--victim_frac={cfg.victim_frac} of "
        f"{len(data.y_train)}); lower --fp_k or --fp_v, or raise --victim_frac.")


def _check_split_counts(cfg: Config) -> None:
  """The zoo holds the >= 3 independents the encoder/verify split needs."""
  if not ("encoder" in cfg.stages or ("verify" in cfg.stages and not cfg.suspect)):
    return
  counts = cfg.kind_counts()
  independents = {k: n for k, n in counts.items() if k in INDEPENDENT_KINDS}
  total = sum(independents.values())
  if total >= 3:
    return
  detail = (", ".join(f"{k}: {n}" for k, n in independents.items())
            if independents else "--zoo_kinds has no independent kind")
  raise ValueError(
      f"The zoo would hold {total} independent model(s) ({detail}), but the "
      "encoder/verify split needs >= 3 (encoder training, calibration, "
      "evaluation); raise --zoo_count or give counts such as "
      "--zoo_counts=independent_seed:3, and keep independent_* kinds in --zoo_kinds.")


def _needs_data(cfg: Config, workdir: Workdir) -> bool:
  """Whether the run must load its data set before it writes anything.

  Stages that read data need it, and so does a fresh (or overwritten) work
  directory: its config.json must not record a data set that does not load.
  """
  if any(s not in _DATALESS_STAGES for s in cfg.stages):
    return True
  return cfg.overwrite or not workdir.exists("config.json")


def run(cfg: Config, stages: Mapping[str, stages_lib.StageRun] | None = None, *,
        verify_artifacts: bool | None = None) -> dict[str, dict]:
  """Runs ``cfg.stages`` in pipeline order, holding the work directory's lock.

  Every check comes before any work and before anything is written: the
  flags (:func:`check`), the lock (another run refused at once), the data
  set and the checks on it (:func:`check_data`), the saved settings. Only
  then is ``config.json`` written and do the stages run.

  Args:
    cfg: the run's settings (checked here, before any work).
    stages: stage name -> ``run(ctx) -> dict`` for every stage of
      ``cfg.stages``; default: the real stages (:func:`uap_jax.stages.runs`).
      Tests pass stubs to check the control flow alone.
    verify_artifacts: whether a finished stage is redone when its artefacts
      are not whole (:meth:`Artifacts.complete`); default: with the real
      stages only, since stubs save no artefacts.

  Returns:
    Per stage run, its summary (``{"skipped": True}`` when already done).
  """
  check(cfg)
  # Before any other JAX use: a multi-process run must start first.
  distributed.initialize_from(cfg.coordinator_address, cfg.num_processes,
                              cfg.process_id, cfg.distributed)
  compile_cache.enable(cfg.compile_cache)
  if cfg.mesh:
    sharding.set_default_mesh(cfg.mesh)
  if verify_artifacts is None:
    verify_artifacts = stages is None
  stages = stages_lib.runs() if stages is None else stages
  missing = [s for s in cfg.stages if s not in stages]
  if missing:
    raise ValueError(f"No run function for stage(s) {missing}.")
  workdir = Workdir(cfg.workdir)
  # The cheap refusals first, before the data set loads; both again below,
  # under the lock, where no other run can change the directory meanwhile.
  workdir.check_free()  # every process: all get the writer's answer
  _check_same_run(cfg, workdir)
  _check_inputs_exist(cfg, workdir)
  ctx = RunContext(cfg, workdir)
  if _needs_data(cfg, workdir):
    check_data(cfg, ctx.data, {k: len(v) for k, v in ctx.planned_parts.items()})
  with workdir.lock():
    _check_same_run(cfg, workdir)
    if not cfg.suspect:
      # Judging an outside suspect is a query of the run, not a change of
      # its settings: the run's config.json stays as it was.
      workdir.write_text("config.json", cfg.to_json() + "\n")
    return _run_stages(cfg, stages, ctx, verify_artifacts)


def _check_inputs_exist(cfg: Config, workdir: Workdir) -> None:
  """Every stage asked for has its inputs: from a stage run now or one done."""
  for stage in cfg.stages:
    absent = [s for s in stages_lib.needs(stage)
              if s not in cfg.stages and not workdir.stage_done(s)]
    if absent:
      wanted = ",".join(s for s in STAGES if s in set(cfg.stages) | set(absent))
      raise ValueError(
          f"--stages={','.join(cfg.stages)}: {stage} needs what stage(s) "
          f"{', '.join(absent)} make, and {workdir.root} has not finished them: "
          f"run them too (--stages={wanted}), or point --workdir at a run that has.")


def _run_stages(cfg: Config, stages: Mapping[str, stages_lib.StageRun],
                ctx: RunContext, verify_artifacts: bool) -> dict[str, dict]:
  """The stages of ``cfg.stages`` in order, skipping the finished ones."""
  workdir = ctx.workdir
  results = {}
  invalidated = False
  for stage in [s for s in STAGES if s in cfg.stages]:
    if stage == "verify" and cfg.suspect:
      # Judging one outside suspect is a query, not a step of the run.
      results[stage] = stages[stage](ctx)
      continue
    settings = _as_json(cfg.stage_settings(stage))
    if stage == "victim" and cfg.victim:
      # The same spec over changed weights is another victim.
      settings["victim_variables"] = ctx.given_victim_digest
    # Process 0 looks at the markers and decides for every process: they
    # must agree, and a marker may be changing under a reader's eyes.
    skip = (distributed.is_main_process() and not cfg.overwrite and not invalidated
            and workdir.stage_done(stage)
            and _still_done(ctx, stage, settings, verify_artifacts))
    if distributed.broadcast_from_main("skip" if skip else "run") == "skip":
      logging.info("Stage %s: already done in %s (use --overwrite to redo).",
                   stage, workdir.root)
      results[stage] = {"skipped": True}
      continue
    results[stage] = _run_stage(stage, stages[stage], ctx, settings)
    # Later stages built on the old artefacts of this one must be redone.
    invalidated = True
    for later in STAGES[STAGES.index(stage) + 1:]:
      if later not in cfg.stages:
        workdir.clear_stage(later)
    # Nobody starts the next stage before this one's marker and artefacts
    # are written.
    distributed.wait_for_all(f"stage {stage} done")
  return results


def _still_done(ctx: RunContext, stage: str, settings: dict,
                verify_artifacts: bool) -> bool:
  """Whether a stage marked done can be skipped: whole artefacts, same settings."""
  problem = _not_whole(ctx, stage, verify_artifacts)
  if problem:
    logging.warning("Stage %s: marked done, but %s; running it again, and "
                    "the stages after it.", stage, problem)
    return False
  changed = _changed_settings(ctx.workdir, stage, settings)
  if changed:
    logging.info("Stage %s: settings changed since it ran (%s); redoing it "
                 "and the stages after it.", stage,
                 ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()))
    return False
  return True


def _not_whole(ctx: RunContext, stage: str, verify_artifacts: bool) -> str | None:
  """Why a stage marked done must run again (None: it is finished).

  A marker counts only over whole artefacts: a damaged marker, or missing
  or unreadable artefacts (an interrupted save, a file deleted by hand),
  mean the stage reruns instead of failing on them later, every time.
  """
  marker = os.path.join("stages", f"{stage}.json")
  try:
    ctx.workdir.read_json(marker)
  except ValueError:
    return f"its marker {ctx.workdir.path(marker)} is not valid JSON"
  return ctx.artifacts.complete(stage) if verify_artifacts else None


def _run_stage(stage: str, stage_run: stages_lib.StageRun, ctx: RunContext,
               settings: dict) -> dict:
  """Runs one stage; its marker is cleared first and written only on success."""
  logging.info("Stage %s: starting.", stage)
  ctx.workdir.clear_stage(stage)
  start = time.time()
  summary = stage_run(ctx) or {}
  seconds = time.time() - start
  ctx.workdir.mark_done(stage, {"seconds": seconds, "summary": summary,
                                "settings": settings})
  logging.info("Stage %s: done in %.1f s.", stage, seconds)
  return summary


def _as_json(settings: dict) -> dict:
  """Settings as a JSON round trip gives them back (lists, floats, strings)."""
  return json.loads(json.dumps(settings))


# Settings whose default does something that stages run before the setting
# existed did not do, and what those stages did instead: a rerun redoes them.
BEFORE_THEY_EXISTED = {"enc_confidence": "raw"}


def _changed_settings(workdir: Workdir, stage: str, settings: dict) -> dict:
  """``{field: (then, now)}`` for settings that differ from the stage's marker.

  Markers written before settings were recorded count as unchanged.
  """
  recorded = workdir.read_json(os.path.join("stages", f"{stage}.json")).get("settings")
  if recorded is None:
    return {}
  # A setting added to Config after the stage ran keeps, at its default, the
  # behaviour the stage ran with; set to anything else, it is a change. One
  # whose default changed that behaviour counts as what the stage did.
  defaults = {**_as_json(Config().stage_settings(stage)), **BEFORE_THEY_EXISTED}
  then = {k: recorded.get(k, defaults.get(k, v)) for k, v in settings.items()}
  return {k: (then[k], v) for k, v in settings.items() if then[k] != v}

