"""Stage `verify`: verdicts on suspects.

Without ``--suspect``: every model of the zoo's evaluation part under the
saved random split and leave-kind-out, with the other tests and the
encoder-free references (:func:`uap_jax.verify.protocols.evaluate_zoo`,
:mod:`uap_jax.verify.references`). Saves ``verify.json`` and the
similarities.

With ``--suspect=PATH``: a checkpoint directory saved by this project (every
model in it is judged), any other model spec (``py:MODULE:FUNCTION``, a
TorchScript or ``.keras`` file; :mod:`uap_jax.adapters`) or an ``.npz`` of a
black-box suspect's recorded answers to ``WORKDIR/queries.npz`` (stage
export_queries); or several of them, a comma list or a directory of them,
each checked and fingerprinted before any verdict is written, one verdict
file each. Answers that do not look like a classifier's in query order
(:mod:`uap_jax.fingerprint.controls`) get ``invalid_answers`` with the
reason and no test. Writes
``verdicts/NAME.json``, NAME the suspect's file or folder name; a suspect at
another path with the same name gets ``NAME-HASH.json`` (HASH from its
absolute path), so no verdict replaces another's. ``verdicts/index.json`` and
``verdicts/index.md`` list every verdict file with its source, suspects,
verdicts and p-values.
"""

from __future__ import annotations

import glob
import hashlib
import os

import numpy as np
from absl import logging

from uap_jax import adapters
from uap_jax import fingerprint as fp_lib
from uap_jax.adapters import spec as spec_lib
from uap_jax.adapters import suspects
from uap_jax.fingerprint import blackbox
from uap_jax.fingerprint import controls
from uap_jax.report import tables
from uap_jax.runtime import checkpoint
from uap_jax.runtime.artifacts import Artifacts
from uap_jax.runtime.context import RunContext
from uap_jax.runtime.workdir import Workdir
from uap_jax.verify import commitment
from uap_jax.verify import crossfit
from uap_jax.verify import protocols
from uap_jax.verify import references
from uap_jax.verify import summary


def _settings(ctx: RunContext) -> protocols.Settings:
  cfg = ctx.cfg
  return protocols.Settings(method=cfg.test, score=cfg.verify_score,
                            num_views=cfg.n_views or cfg.fp_v,
                            alpha=cfg.alpha,
                            seed=cfg.seed, train_frac=cfg.split_train,
                            calib_frac=cfg.split_calib)


def _saved_encoder(ctx: RunContext) -> crossfit.CrossFitted:
  return ctx.artifacts.encoder()


def evaluate_zoo(ctx: RunContext) -> tuple[dict, np.ndarray]:
  """Every protocol on the zoo; also the ``(M, V)`` similarities to the victim."""
  cfg, art = ctx.cfg, ctx.artifacts
  fp, split = art.fingerprints, art.split()
  part = ctx.parts["victim"]
  samples = references.sample_references(
      art.all_stacks(), fp.models, fp.victim_index, split, ctx.data.x_train[part],
      ctx.data.y_train[part], seed=cfg.seed, alpha=cfg.alpha, strategy=cfg.strategy)
  return protocols.evaluate_zoo(
      _saved_encoder(ctx), fp.fps, fp.models, fp.victim_index, split, _settings(ctx),
      num_uaps=len(art.uaps), num_classes=ctx.data.num_classes,
      point_labels=point_labels(ctx), sample_references=samples,
      label_judge=art.label_judge())


def committed(ctx: RunContext) -> dict:
  """The commitment every verdict cites, checked against the saved fingerprint.

  Raises:
    ValueError: the fingerprint changed since the commitment was made.
  """
  record = ctx.artifacts.commitment()
  if record is None:
    return commitment.missing()
  fp = ctx.artifacts.fingerprints
  return commitment.check(record, fp.points, ctx.artifacts.uaps, fp.fps[fp.victim_index],
                          ctx.cfg.seed)


def point_labels(ctx: RunContext) -> np.ndarray:
  """``(V, K)`` true labels of the fingerprint points (view j, point i)."""
  return np.asarray(ctx.data.y_train[ctx.artifacts.fingerprints.points]).T


def _check_answers_fit_mode(path: str, kind: str, mode: str, score: str,
                            has_label_judge: bool) -> bool:
  """Refuses answers that cannot give this run's kind of fingerprints.

  Returns:
    Whether the answers are labels judged by a run of probabilities or
    logits (every fingerprint is then reduced to labels).
  """
  if kind == "labels" and mode != "labels":
    if score != "encoder" or has_label_judge:
      return True
    raise ValueError(
        f"The answers in {path} are labels only, and this run has no label judge "
        "(it was made before there was one): rerun --stages=encoder,verify to train "
        "it, or verify them with the encoder-free --score=uap_follow.")
  if kind == "probs" and mode == "logits":
    raise ValueError(
        f"The answers in {path} are probabilities, but this run's fingerprints "
        "use --fp_mode=logits: record the suspect's logits (saved with "
        "kind='logits'), or rerun the run with --fp_mode=probs.")
  return False


def _suspect_fingerprints(ctx: RunContext, path: str
                          ) -> tuple[list[str], np.ndarray | None,
                                     controls.AnswerCheck | None, bool]:
  """Names, ``(S, V, D)`` fingerprints, the answer check (None for a
  checkpoint) of the suspect(s) at ``path``, and whether they are labels to
  judge against a run of probabilities; no fingerprints for answers that
  fail the check."""
  fp = ctx.artifacts.fingerprints
  if path.endswith(".npz"):
    manifest = ctx.artifacts.queries_manifest_path
    if not os.path.exists(manifest):
      raise FileNotFoundError(
          f"{manifest} is missing: run --stages=export_queries, have the suspect "
          "answer WORKDIR/queries.npz, then verify its answers.")
    answers = blackbox.load_answers(path, manifest)
    names = [os.path.splitext(os.path.basename(path))[0]]
    check = answers.check()
    if answers.controls is None:
      logging.warning("%s: %s.", manifest, controls.NO_CONTROLS_NOTE)
    if not check.valid:
      return names, None, check, False
    labels_only = _check_answers_fit_mode(path, answers.kind, fp.mode, ctx.cfg.verify_score,
                                          ctx.artifacts.label_judge() is not None)
    return names, np.asarray(fp_lib.fingerprints_from_outputs(
        answers.clean, answers.perturbed, mode="labels" if labels_only else fp.mode,
        outputs=answers.kind))[None], check, labels_only
  if spec_lib.is_stack_checkpoint(path):
    suspect = checkpoint.load_stack(path)
  else:  # a model from anywhere: checked on the data, then one model's stack
    adapter = adapters.check_against_data(path, ctx.data, flag="--suspect")
    suspect = adapters.to_stack(
        adapter, {"name": suspects.display_name(path), "source": path},
        num_classes=ctx.data.num_classes, image_shape=ctx.data.image_shape)
  if suspect.num_classes != ctx.data.num_classes:
    raise ValueError(
        f"The suspect at {path} has {suspect.num_classes} classes but the victim "
        f"has {ctx.data.num_classes}: it cannot answer the same task.")
  return suspect.names, np.asarray(fp_lib.fingerprints(
      suspect, ctx.data.x_train[fp.points], ctx.artifacts.uaps,
      mode=fp.mode, strategy=ctx.cfg.strategy)), None, False


def judge(ctx: RunContext, suspect_fps: np.ndarray, labels_only: bool = False) -> list[dict]:
  """Verdicts on suspects' ``(S, V, D)`` fingerprints against this run
  (:func:`uap_jax.verify.protocols.judge`, with the run's label judge)."""
  fp = ctx.artifacts.fingerprints
  return protocols.judge(
      _saved_encoder(ctx), suspect_fps, fp.fps, fp.models, fp.victim_index,
      ctx.artifacts.split()["calib"], _settings(ctx), num_uaps=len(ctx.artifacts.uaps),
      num_classes=ctx.data.num_classes, point_labels=point_labels(ctx),
      labels_only=labels_only, label_judge=ctx.artifacts.label_judge())


def verify_external(ctx: RunContext, path: str) -> dict:
  """Verdict(s) on a suspect checkpoint or a recorded-outputs .npz."""
  return verify_sources(ctx, [path])[0]


def verify_sources(ctx: RunContext, sources: list[str]) -> list[dict]:
  """Verdicts on several suspects, judged as one batch; one file each.

  Args:
    ctx: the run's context.
    sources: suspect sources (see :func:`uap_jax.adapters.suspects.split_sources`).

  Returns:
    Per source ``{"suspect", "verdicts", "file"}``.
  """
  for source in sources:
    if suspects.is_answers(source) or not source.startswith("py:"):
      blackbox.check_suspect(source)
  cited = committed(ctx)
  # Every model is checked and fingerprinted before any verdict is written.
  per_source = [_suspect_fingerprints(ctx, source) for source in sources]
  outs = []
  for source, (names, suspect_fps, check, labels_only) in zip(sources, per_source):
    if suspect_fps is None:
      results = [controls.invalid_verdict(check)]
    else:
      results = judge(ctx, suspect_fps, labels_only)
      if check is not None:
        results = [dict(v, answer_check=check.as_json()) for v in results]
    source_id = suspects.source_id(source)
    verdicts = []
    for name, v in zip(names, results):
      verdicts.append(dict(suspect=name, source=source_id, **v))
      if v["p_value"] is None:
        logging.warning("Suspect %s: %s, not judged: %s", name, v["verdict"],
                        v.get("reason", ""))
      else:
        logging.info("Suspect %s: %s", name, v["statement"])
    out = {"suspect": source_id, "verdicts": verdicts, "commitment": cited}
    file = save_verdicts(ctx.artifacts, ctx.workdir, out)
    logging.info("Verdicts on %s written to %s (all verdicts: %s).", source, file,
                 ctx.workdir.path(_INDEX + ".md"))
    outs.append({**out, "file": file})
  return outs


# The verdicts' own index; a suspect named "index" gets a hashed name.
_INDEX = os.path.join("verdicts", "index")


def verdict_name(workdir: Workdir, source: str) -> str:
  """The name (``verdicts/NAME.json``) of the verdicts on ``source``.

  The suspect's file or folder name, unless a verdict file of that name
  holds another source's verdicts: then the name plus a hash of the absolute
  path, so two suspects never share a file and a rerun on the same suspect
  replaces its own.

  Args:
    workdir: the run's work directory.
    source: the suspect's path.

  Returns:
    NAME, without ``verdicts/`` and ``.json``.
  """
  stem = suspects.display_name(source)
  source = suspects.source_id(source)
  digest = hashlib.sha256(source.encode()).hexdigest()
  candidates = ([stem] if stem and stem != "index" else []) + [
      f"{stem}-{digest[:8]}", f"{stem}-{digest}"]
  for name in candidates:
    if _verdict_source(workdir, name) in (None, source):
      return name
  return candidates[-1]


def _verdict_source(workdir: Workdir, name: str) -> str | None:
  """The source of ``verdicts/NAME.json``: None when there is none, "" when
  unreadable (so that it is never written over)."""
  rel = os.path.join("verdicts", f"{name}.json")
  if not workdir.exists(rel):
    return None
  try:
    return str(workdir.read_json(rel).get("suspect", ""))
  except (ValueError, AttributeError):
    return ""


def save_verdicts(artifacts: Artifacts, workdir: Workdir, out: dict) -> str:
  """Saves the verdicts ``out`` on one source and rewrites the index.

  Args:
    artifacts: the run's artefacts (the writer of verdict files).
    workdir: the run's work directory.
    out: ``{"suspect": absolute path, "verdicts": [...]}``.

  Returns:
    The path of the verdict file.
  """
  file = artifacts.save_verdicts(verdict_name(workdir, out["suspect"]), out)
  _write_index(workdir)
  return file


def _write_index(workdir: Workdir) -> None:
  """``verdicts/index.json`` and ``index.md`` from every verdict file there.

  Rebuilt from the files themselves, so it lists the ones written before
  it existed and never disagrees with them.
  """
  entries = []
  index_json = os.path.basename(_INDEX) + ".json"
  for path in sorted(glob.glob(workdir.path("verdicts", "*.json"))):
    if os.path.basename(path) == index_json:
      continue
    rel = os.path.relpath(path, workdir.root)
    try:
      out = workdir.read_json(rel)
      rows = [{"suspect": v["suspect"], "verdict": v["verdict"],
               "p_value": v["p_value"],
               **({"reason": v["reason"]} if "reason" in v else {})}
              for v in out["verdicts"]]
    except (ValueError, KeyError, TypeError) as e:
      logging.warning("Verdict file %s is unreadable (%s); left out of the "
                      "index.", path, e)
      continue
    entries.append({"file": rel, "source": out.get("suspect"), "verdicts": rows})
  workdir.write_json(_INDEX + ".json", {"verdict_files": entries})
  workdir.write_text(_INDEX + ".md", _index_markdown(entries))


def _index_markdown(entries: list[dict]) -> str:
  lines = ["# Suspect verdicts", "",
           "| verdict file | source | suspect | verdict | p-value |",
           "|---|---|---|---|---|"]
  for e in entries:
    for v in e["verdicts"]:
      # No test ran on invalid answers: no p-value, the reason instead.
      p_value = ("–" if v["p_value"] is None else f"{float(v['p_value']):.3g}")
      verdict = v["verdict"] + (f": {v['reason']}" if v.get("reason") else "")
      lines.append(f"| `{e['file']}` | `{e['source']}` | {v['suspect']} | "
                   f"{verdict.replace('|', '/')} | {p_value} |")
  return "\n".join(lines) + "\n"


def run(ctx: RunContext) -> dict:
  if ctx.cfg.suspect:
    outs = verify_sources(ctx, suspects.split_sources(ctx.cfg.suspect))
    return {"verdicts": [(v["suspect"], v["verdict"]) for o in outs for v in o["verdicts"]],
            "file": outs[0]["file"], "files": [o["file"] for o in outs]}
  cited = committed(ctx)
  result, sims = evaluate_zoo(ctx)
  ctx.artifacts.save_verification(dict(result, commitment=cited), sims)
  r = result["protocols"]["random"]
  logging.info("Random split (%s, %s): AUC %s, TPR@1%%FPR %s, %d/%d independents accused, "
               "%d/%d pirates detected", result["score"], r["method"], r["auc"],
               r["tpr_at_1pct_fpr"], r["accused_independents"], r["num_independents"],
               r["detected_piracy"], r["num_piracy"])
  me = result["victim_self"]
  if me["p_value"] >= ctx.cfg.alpha:
    logging.warning("The victim itself, judged as a suspect, gets p = %.2g >= alpha = %g: "
                    "a suspect is accused only if it scores closer to the victim than the "
                    "victim itself. %s", me["p_value"],
                    ctx.cfg.alpha, tables.POWER_FIX)
  if me.get("outside_reference") == "accuracy":
    logging.warning(tables.WEAK_VICTIM.format(accuracy=me["point_accuracy"]))
  fa = result["false_accusations"]
  logging.info("Held-out independents over every protocol: %d of %d accused (95%% "
               "upper bound %.3f)", fa["accused"], fa["held_out"], fa["upper_95"] or 1.0)
  on_labels = result.get("labels")
  if on_labels:
    lr, lfa = on_labels["protocols"]["random"], on_labels["false_accusations"]
    logging.info("Judged on top-1 labels (the label judge): %d/%d pirates detected, "
                 "%d/%d independents accused; held out: %d of %d accused",
                 lr["detected_piracy"], lr["num_piracy"], lr["accused_independents"],
                 lr["num_independents"], lfa["accused"], lfa["held_out"])
  return summary.brief(r)
