"""Stage `fingerprint`: points, then fingerprints of the victim and every suspect."""

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


def stack_fingerprints(s: stack_lib.Stack, x_points: np.ndarray, uaps: np.ndarray,
                       mode: str, strategy: str) -> np.ndarray:
  """``(M, V, D)`` fingerprints of a stack; no UAPs (``U = 0``): clean outputs only.

  The library rejects an empty UAP set (a mistake outside this ablation), so
  the no-UAP fingerprint is the clean half of the one with a zero UAP.
  """
  if len(uaps):
    return np.asarray(jax.block_until_ready(fp_lib.fingerprints(
        s, x_points, uaps, mode=mode, strategy=strategy)))
  zero = np.zeros((1,) + tuple(x_points.shape[2:]), np.float32)
  both = np.asarray(jax.block_until_ready(fp_lib.fingerprints(
      s, x_points, zero, mode=mode, strategy=strategy)))
  m, v, _ = both.shape
  k = x_points.shape[0]
  return both.reshape(m, v, k, 2, -1)[:, :, :, 0].reshape(m, v, -1)


def run(ctx: RunContext) -> dict:
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
        lambda sub: stack_fingerprints(sub, x_points, uaps, cfg.fp_mode, cfg.strategy),
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
             "per_model": diagnostics(fps, meta, len(uaps), data.num_classes)}
  ctx.artifacts.save_fingerprints(Fingerprints(fps, meta, points, cfg.fp_mode),
                                  info, summary)
  return {k: summary[k] for k in ("K", "V", "dim", "models", "seconds")}


def diagnostics(fps: np.ndarray, meta: list[dict], num_uaps: int,
                num_classes: int) -> list[dict]:
  """Per model, on the fingerprint points: how the victim's UAP moves it.

  Returns rows with the UAP's fooling rate on the model (top-1 changes),
  top-1 agreement with the victim on clean and on perturbed points, and the
  raw (encoder-free) fingerprint cosine with the victim.
  """
  m, v, d = fps.shape
  outs = fps.reshape(m, v, -1, 1 + num_uaps, num_classes)
  top1 = outs.argmax(-1)                       # (M, V, K, 1 + U)
  victim = top1[0]
  raw = fps.reshape(m, -1)
  raw = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
  rows = []
  for i, mt in enumerate(meta):
    rows.append({
        "name": mt.get("name"), "kind": mt.get("kind"), "family": mt.get("family"),
        "uap_fooling_rate": (float((top1[i, :, :, 1:] != top1[i, :, :, :1]).mean())
                             if num_uaps else None),
        "clean_agreement": float((top1[i, :, :, 0] == victim[:, :, 0]).mean()),
        "perturbed_agreement": (float((top1[i, :, :, 1:] == victim[:, :, 1:]).mean())
                                if num_uaps else None),
        "raw_cosine": float(raw[i] @ raw[0]),
    })
  return rows
