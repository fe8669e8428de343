"""Stage `fingerprint`: points, then fingerprints of the victim and every suspect.

Loads the victim, the zoo and the UAPs from ``ctx.artifacts``, calls
:mod:`uap_jax.fingerprint`, and saves the fingerprints, the points and the
per-model diagnostics (``fingerprints.json``) with
``ctx.artifacts.save_fingerprints``.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging

from uap_jax.runtime import distributed
from uap_jax import fingerprint as fp_lib
from uap_jax.runtime import stack as stack_lib
from uap_jax.runtime.context import RunContext
from uap_jax.runtime.artifacts import Fingerprints
from uap_jax.verify import commitment


def choose_points(ctx: RunContext) -> np.ndarray:
  """``(K, V)`` indices into ``x_train`` of the fingerprint points."""
  cfg, data = ctx.cfg, ctx.data
  part = ctx.parts["victim"]
  if cfg.fp_k * cfg.fp_v > len(part):
    raise ValueError(
        f"--fp_k * --fp_v = {cfg.fp_k * cfg.fp_v} points exceed the victim's "
        f"{len(part)} training images; lower --fp_k or --fp_v.")
  logits = stack_lib.predict(ctx.artifacts.victim, data.x_train[part],
                             strategy=cfg.strategy)[0]
  local = fp_lib.select_points(logits, cfg.fp_k, cfg.fp_v, rule=cfg.fp_rule, seed=cfg.seed)
  return part[local]


def run(ctx: RunContext) -> dict:
  """Fingerprints the victim and every zoo model; saves them with the points.

  Args:
    ctx: the run; takes the victim, the zoo stacks and the UAPs from
      ``ctx.artifacts``.

  Returns:
    The stage summary: K, V, dim (D), models, seconds.
  """
  cfg, data = ctx.cfg, ctx.data
  uaps = ctx.artifacts.uaps
  start = time.time()
  points = choose_points(ctx)
  x_points = data.x_train[points]
  fps, meta, timings = [], [], []
  for s in ctx.artifacts.all_stacks():
    t0 = time.time()
    # Each process fingerprints its share of the stack; all get the whole.
    fps.append(np.asarray(distributed.map_suspects(
        lambda sub: np.asarray(jax.block_until_ready(fp_lib.fingerprints(
            sub, x_points, uaps, mode=cfg.fp_mode, strategy=cfg.strategy))),
        s, mode=cfg.share_mode, everywhere=True)))
    timings.append({"arch": s.arch, "models": s.size, "seconds": time.time() - t0})
    meta.extend(dict(m, arch=m.get("arch", s.arch)) for m in s.meta)
    logging.info("Fingerprinted %d %s model(s) in %.1f s", s.size, s.arch,
                 timings[-1]["seconds"])
  fps = np.concatenate(fps)
  if not np.isfinite(fps).all():
    raise ValueError("Fingerprints contain NaN or inf: a model produced non-finite "
                     "outputs; check the zoo's training (learning rates).")
  info = {"K": cfg.fp_k, "V": cfg.fp_v, "rule": cfg.fp_rule}
  summary = {"K": cfg.fp_k, "V": cfg.fp_v, "rule": cfg.fp_rule, "mode": cfg.fp_mode,
             "num_uaps": int(len(uaps)), "dim": int(fps.shape[-1]),
             "models": len(meta), "seconds": time.time() - start, "per_stack": timings,
             "per_model": fp_lib.diagnostics.per_model(fps, meta, len(uaps),
                                                       data.num_classes)}
  saved = Fingerprints(fps, meta, points, cfg.fp_mode)
  ctx.artifacts.save_fingerprints(saved, info, summary)
  # The owner's commitment, before any suspect is judged against it.
  ctx.artifacts.save_commitment(commitment.make(points, uaps, fps[saved.victim_index],
                                                cfg.seed))
  return {k: summary[k] for k in ("K", "V", "dim", "models", "seconds")}

