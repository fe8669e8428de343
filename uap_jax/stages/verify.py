"""Stage `verify`: verdicts on suspects.

Without ``--suspect``: every model of the zoo's evaluation part under the
saved random split and leave-kind-out, with the other tests and the
encoder-free references (:func:`uap_jax.verify.protocols.evaluate_zoo`,
:mod:`uap_jax.verify.references`). Saves ``verify.json`` and the
similarities.

With ``--suspect=PATH``: a checkpoint directory saved by this project (every
model in it is judged) or an ``.npz`` of a black-box suspect's recorded
answers to ``WORKDIR/queries.npz`` (stage export_queries). Writes
``verdicts/NAME.json``.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from uap_jax import fingerprint as fp_lib
from uap_jax.fingerprint import blackbox
from uap_jax.runtime import checkpoint
from uap_jax.runtime.context import RunContext
from uap_jax.verify import encoder as encoder_lib
from uap_jax.verify import protocols
from uap_jax.verify import references
from uap_jax.verify import summary


def _settings(ctx: RunContext) -> protocols.Settings:
  cfg = ctx.cfg
  return protocols.Settings(method=cfg.test, num_views=cfg.n_views, alpha=cfg.alpha,
                            seed=cfg.seed, train_frac=cfg.split_train,
                            calib_frac=cfg.split_calib)


def _saved_encoder(ctx: RunContext) -> encoder_lib.TrainedEncoder:
  state, config, history = ctx.artifacts.encoder()
  return encoder_lib.TrainedEncoder(state=state, config=config, history=history)


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
      sample_references=samples)


def _suspect_fingerprints(ctx: RunContext, path: str) -> tuple[list[str], np.ndarray]:
  """Names and ``(S, V, D)`` fingerprints of the suspect(s) at ``path``."""
  fp = ctx.artifacts.fingerprints
  if path.endswith(".npz"):
    manifest = ctx.artifacts.queries_manifest_path
    if not os.path.exists(manifest):
      raise FileNotFoundError(
          f"{manifest} is missing: run --stages=export_queries, have the suspect "
          "answer WORKDIR/queries.npz, then verify its answers.")
    clean, perturbed = blackbox.load_recorded_outputs(path, manifest)
    names = [os.path.splitext(os.path.basename(path))[0]]
    return names, np.asarray(fp_lib.fingerprints_from_outputs(
        clean, perturbed, mode=fp.mode))[None]
  suspect = checkpoint.load_stack(path)
  if suspect.num_classes != ctx.data.num_classes:
    raise ValueError(
        f"The suspect at {path} has {suspect.num_classes} classes but the victim "
        f"has {ctx.data.num_classes}: it cannot answer the same task.")
  return suspect.names, np.asarray(fp_lib.fingerprints(
      suspect, ctx.data.x_train[fp.points], ctx.artifacts.uaps,
      mode=fp.mode, strategy=ctx.cfg.strategy))


def verify_external(ctx: RunContext, path: str) -> dict:
  """Verdict(s) on a suspect checkpoint or a recorded-outputs .npz."""
  fp = ctx.artifacts.fingerprints
  names, suspect_fps = _suspect_fingerprints(ctx, path)
  results = protocols.judge(_saved_encoder(ctx), suspect_fps, fp.fps, fp.victim_index,
                            ctx.artifacts.split()["calib"], _settings(ctx))
  verdicts = []
  for name, v in zip(names, results):
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
  return summary.brief(r)
