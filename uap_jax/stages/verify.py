"""Stage `verify`: verdicts on suspects.

Without ``--suspect``: every model of the zoo's evaluation part, under two
protocols — the saved random split (``split.json``) and leave-kind-out (for
each kind, an encoder and a calibration set that never saw it) — plus
encoder-free references: raw fingerprint cosine with and without the UAP
half, top-1 agreement with the victim on clean and on UAP-perturbed points,
SAC-m- and SAC-w-style sample-correlation fingerprints and the agreement on
the victim's mistakes (:mod:`uap_jax.verify.sac`), all scored on the same suspects with the same calibration independents.
Writes ``verify.json``.

With ``--suspect=PATH``: a checkpoint directory saved by this project (every
model in it is judged) or an ``.npz`` of a black-box suspect's recorded
answers to ``WORKDIR/queries.npz`` (stage export_queries). Writes
``verdicts/NAME.json``.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from uap_jax.fingerprint import blackbox
from uap_jax.runtime import checkpoint
from uap_jax import fingerprint as fp_lib
from uap_jax.verify import sac
from uap_jax.runtime import stack as stack_lib
from uap_jax import verify
from uap_jax.runtime.context import RunContext
from uap_jax.verify import encoder as encoder_lib

TESTS = verify.METHODS
# SAC-m reference: CutMix-ed inputs from the victim's training part. SAC's
# paper uses on the order of 100 samples; the matrix costs N^2 only.
SAC_SAMPLES = sac.DEFAULT_NUM_SAMPLES
# Misclassified victim training images for error_agreement (more samples
# make the agreement fraction less noisy; SAC-w uses the first SAC_SAMPLES).
ERROR_SAMPLES = 500


def raw_similarities(fps: np.ndarray, victim: int, clean_only: bool = False,
                     num_uaps: int = 1, num_classes: int | None = None) -> np.ndarray:
  """Encoder-free score: cosine of each raw view with the victim's mean view."""
  if clean_only:
    m, v, _ = fps.shape
    fps = fps.reshape(m, v, -1, 1 + num_uaps, num_classes)[:, :, :, 0].reshape(m, v, -1)
  unit = fps / np.maximum(np.linalg.norm(fps, axis=-1, keepdims=True), 1e-12)
  proto = unit[victim].mean(0)
  proto = proto / max(np.linalg.norm(proto), 1e-12)
  return unit @ proto


def agreement_scores(fps: np.ndarray, victim: int, num_uaps: int,
                     num_classes: int) -> dict[str, np.ndarray]:
  """Encoder-free per-view top-1 agreement with the victim, ``(M, V)`` each.

  ``agreement_clean``: fraction of a view's K points where the model's top-1
  equals the victim's on the clean point; ``agreement_uap``: the same on the
  points plus the victim's UAP(s) (the paper's premise: a copy follows the
  victim where the victim's UAP sends it). Absent without a UAP.
  """
  m, v, _ = fps.shape
  top1 = fps.reshape(m, v, -1, 1 + num_uaps, num_classes).argmax(-1)  # (M, V, K, 1+U)
  # View j holds the same images for every model: compare point by point.
  same = top1 == top1[victim][None]
  out = {"agreement_clean": same[..., 0].mean(-1)}
  if num_uaps:
    out["agreement_uap"] = same[..., 1:].mean((-2, -1))
  return out


def _evaluate(ctx, sims, meta, eval_idx, calib_idx, method):
  cfg = ctx.cfg
  return verify.evaluate(
      sims[eval_idx], [meta[i]["family"] for i in eval_idx],
      [meta[i]["kind"] for i in eval_idx], sims[calib_idx],
      names=[meta[i]["name"] for i in eval_idx], num_views=cfg.n_views,
      method=method, alpha=cfg.alpha)


def _brief(result: dict) -> dict:
  return {k: result[k] for k in ("auc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr",
                                 "accused_independents", "num_independents",
                                 "detected_piracy", "num_piracy")}


def sample_references(ctx: RunContext, meta: list[dict], victim: int,
                      split: dict) -> dict[str, dict]:
  """SAC-style one-number-per-model references, evaluated like the others.

  Every model of ``meta`` (the victim and the zoo, in fingerprint order) is
  scored; the evaluation suspects are ``split["eval"]`` and the reference
  the calibration independents ``split["calib"]``. One score per model, so
  accusations use :func:`uap_jax.verify.sac.prediction_p_value` at ``--alpha``.

  * ``sac_m``: correlation matrix of softmax outputs on CutMix-ed victim
    training images, -L1 distance to the victim's (SAC-m).
  * ``sac_w``: the same on victim training images the victim misclassifies
    (SAC-w).
  * ``error_agreement``: on (up to ERROR_SAMPLES) such images, how often a
    model repeats the victim's top-1 (its mistakes).

  Returns:
    Per reference, :func:`uap_jax.verify.sac.evaluate_scores`'s dict.
  """
  cfg, data = ctx.cfg, ctx.data
  stacks = ctx.artifacts.all_stacks()
  names = [m["name"] for s in stacks for m in s.meta]
  if names != [m["name"] for m in meta]:
    raise ValueError(
        "The zoo's models differ from the fingerprinted ones; rerun the "
        "fingerprint stage (--stages=fingerprint,encoder,verify --overwrite).")
  part = ctx.parts["victim"]
  key = jax.random.fold_in(jax.random.key(cfg.seed), 4242)
  x_mix = np.asarray(sac.cutmix_inputs(data.x_train[part], SAC_SAMPLES,
                                       jax.random.fold_in(key, 0)))
  victim_logits = stack_lib.predict(stacks[0], data.x_train[part], strategy=cfg.strategy)[0]
  wrong = sac.misclassified_indices(data.y_train[part], victim_logits, ERROR_SAMPLES,
                                    jax.random.fold_in(key, 1))
  x_wrong = np.asarray(stack_lib.to_float(data.x_train[part[wrong]]))
  logits = np.concatenate([stack_lib.predict(s, np.concatenate([x_mix, x_wrong]),
                                             strategy=cfg.strategy) for s in stacks])
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  n_mix, n_w = len(x_mix), min(SAC_SAMPLES, len(wrong))
  mix, err = slice(0, n_mix), slice(n_mix, n_mix + n_w)
  scores = {
      "sac_m": sac.scores_from_outputs(probs[:, mix], probs[victim, mix]),
      "sac_w": sac.scores_from_outputs(probs[:, err], probs[victim, err]),
      "error_agreement": sac.error_agreement(logits[:, n_mix:], logits[victim, n_mix:]),
  }
  samples = {"sac_m": n_mix, "sac_w": n_w, "error_agreement": len(wrong)}
  eval_idx, calib_idx = split["eval"], split["calib"]
  out = {}
  for name, score in scores.items():
    result = sac.evaluate_scores(
        score[eval_idx], [meta[i]["family"] for i in eval_idx],
        [meta[i]["kind"] for i in eval_idx], score[calib_idx],
        names=[meta[i]["name"] for i in eval_idx], alpha=cfg.alpha)
    result.update(samples=samples[name], inputs="cutmix" if name == "sac_m" else
                  "victim-misclassified training images",
                  score="top-1 agreement" if name == "error_agreement"
                  else "-L1 distance of cosine correlation matrices")
    out[name] = result
  return out


def _saved_encoder(ctx: RunContext) -> encoder_lib.TrainedEncoder:
  state, config, history = ctx.artifacts.encoder()
  return encoder_lib.TrainedEncoder(state=state, config=config, history=history)


def evaluate_zoo(ctx: RunContext) -> tuple[dict, np.ndarray]:
  """Every protocol on the zoo; also the ``(M, V)`` similarities to the victim."""
  cfg = ctx.cfg
  fp = ctx.artifacts.fingerprints
  fps, meta, victim = fp.fps, fp.models, fp.victim_index
  enc, split = _saved_encoder(ctx), ctx.artifacts.split()
  num_uaps = len(ctx.artifacts.uaps)
  sims = verify.similarities(enc, fps, fps[victim])
  random = _evaluate(ctx, sims, meta, split["eval"], split["calib"], cfg.test)
  other_tests = {}
  for t in TESTS:
    if t != cfg.test:
      try:
        other_tests[t] = _brief(_evaluate(ctx, sims, meta, split["eval"], split["calib"], t))
      except ValueError as e:  # e.g. too few calibration models for this test
        other_tests[t] = {"error": str(e)}
  references = {}
  for name, clean_only in (("raw_cosine", False), ("raw_cosine_clean_only", True)):
    raw = raw_similarities(fps, victim, clean_only, num_uaps, ctx.data.num_classes)
    references[name] = _brief(_evaluate(ctx, raw, meta, split["eval"], split["calib"], cfg.test))
  for name, score in agreement_scores(fps, victim, num_uaps, ctx.data.num_classes).items():
    references[name] = _brief(_evaluate(ctx, score, meta, split["eval"], split["calib"], cfg.test))
  references.update(sample_references(ctx, meta, victim, split))

  folds = {}
  for fold in verify.leave_kind_out_splits(meta, seed=cfg.seed, train_frac=cfg.split_train,
                                           calib_frac=cfg.split_calib):
    kind = fold["held_out_kind"]
    logging.info("Leave-kind-out: %s (%d train, %d calib, %d eval)", kind,
                 len(fold["train"]), len(fold["calib"]), len(fold["eval"]))
    # Each fold's encoder has the saved encoder's settings.
    fold_enc = verify.train_encoder(fps, meta, fold["train"], enc.config)
    fold_sims = verify.similarities(fold_enc, fps, fps[victim])
    try:
      result = _evaluate(ctx, fold_sims, meta, fold["eval"], fold["calib"], cfg.test)
    except ValueError as e:
      # E.g. holding out an independent kind leaves fewer calibration models
      # than the model-level tests need: that fold is reported, not fatal.
      logging.warning("Leave-kind-out fold %s: %s", kind, e)
      folds[kind] = {"family": fold["held_out_family"], "error": str(e)}
      continue
    held = [r for r in result["suspects"] if r["kind"] == kind]
    folds[kind] = dict(_brief(result), family=fold["held_out_family"],
                       auc_held_out=result["auc"].get(kind) if fold["held_out_family"] == "piracy"
                       else result["auc"].get("all"),
                       held_out_verdicts={v: sum(r["verdict"] == v for r in held)
                                          for v in ("pirated", "inconclusive", "not_pirated")},
                       similarity_mean=float(np.mean([r["similarity_mean"] for r in held])))
  zoo_rows = {m["name"]: m for m in meta}
  for row in random["suspects"]:
    src = zoo_rows[row["name"]]
    row.update(arch=src.get("arch"), test_accuracy=src.get("test_accuracy"),
               agreement=src.get("agreement"))
  return {"protocols": {"random": random, "leave_kind_out": folds},
          "other_tests": other_tests, "references": references,
          "victim_self": verify.verify_suspect(sims[victim], sims[split["calib"]],
                                               num_views=cfg.n_views, method=cfg.test,
                                               alpha=cfg.alpha)}, sims


def verify_external(ctx: RunContext, path: str) -> dict:
  """Verdict(s) on a suspect checkpoint or a recorded-outputs .npz."""
  cfg = ctx.cfg
  fp = ctx.artifacts.fingerprints
  fps, victim = fp.fps, fp.victim_index
  enc, split = _saved_encoder(ctx), ctx.artifacts.split()
  reference = verify.similarities(enc, fps[split["calib"]], fps[victim])
  if path.endswith(".npz"):
    manifest = ctx.artifacts.queries_manifest_path
    if not os.path.exists(manifest):
      raise FileNotFoundError(
          f"{manifest} is missing: run --stages=export_queries, have the suspect "
          "answer WORKDIR/queries.npz, then verify its answers.")
    clean, perturbed = blackbox.load_recorded_outputs(path, manifest)
    names = [os.path.splitext(os.path.basename(path))[0]]
    suspect_fps = np.asarray(fp_lib.fingerprints_from_outputs(
        clean, perturbed, mode=fp.mode))[None]
  else:
    suspect = checkpoint.load_stack(path)
    if suspect.num_classes != ctx.data.num_classes:
      raise ValueError(
          f"The suspect at {path} has {suspect.num_classes} classes but the victim "
          f"has {ctx.data.num_classes}: it cannot answer the same task.")
    names = suspect.names
    suspect_fps = np.asarray(fp_lib.fingerprints(
        suspect, ctx.data.x_train[fp.points], ctx.artifacts.uaps,
        mode=fp.mode, strategy=cfg.strategy))
  sims = verify.similarities(enc, suspect_fps, fps[victim])
  verdicts = []
  for name, s in zip(names, sims):
    v = verify.verify_suspect(s, reference, num_views=cfg.n_views, method=cfg.test,
                              alpha=cfg.alpha)
    verdicts.append(dict(suspect=name, source=os.path.abspath(path), **v))
    logging.info("Suspect %s: %s (p = %.3g, confidence %.6f, %d views)", name,
                 v["verdict"], v["p_value"], v["confidence"], v["views_used"])
  out = {"suspect": os.path.abspath(path), "verdicts": verdicts}
  stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
  ctx.artifacts.save_verdicts(stem, out)
  return out


def run(ctx: RunContext) -> dict:
  if ctx.cfg.suspect:
    out = verify_external(ctx, ctx.cfg.suspect)
    return {"verdicts": [(v["suspect"], v["verdict"]) for v in out["verdicts"]]}
  result, sims = evaluate_zoo(ctx)
  ctx.artifacts.save_verification(result, sims)
  r = result["protocols"]["random"]
  logging.info("Random split: AUC %s, TPR@1%%FPR %s, %d/%d independents accused",
               r["auc"], r["tpr_at_1pct_fpr"], r["accused_independents"], r["num_independents"])
  return _brief(r)
