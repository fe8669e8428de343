"""Stage `uap`: the victim's universal adversarial perturbation(s)."""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging

from uap_jax import attacks
from uap_jax.runtime import stack as stack_lib
from uap_jax.runtime.context import RunContext


def run(ctx: RunContext) -> dict:
  """Computes ``num_uaps`` UAPs of the victim (one seed each) and saves them.

  ``--num_uaps=0`` saves an empty set: the no-UAP ablation (clean outputs).
  """
  cfg, data = ctx.cfg, ctx.data
  victim = ctx.artifacts.victim
  logits_fn = victim.logits_fn
  variables = jax.tree.map(lambda a: a[0], victim.variables)
  rng = np.random.default_rng([cfg.seed, 7])
  part = ctx.parts["victim"]
  sample = np.sort(rng.choice(part, min(cfg.uap_samples, len(part)), replace=False))
  x = stack_lib.to_float(data.x_train[sample])
  x_test = stack_lib.to_float(data.x_test)
  p = "inf" if cfg.uap_p == "inf" else 2
  uaps, rows = [], []
  for u in range(cfg.num_uaps):
    key = jax.random.fold_in(jax.random.key(cfg.seed), 1000 + u)
    start = time.time()
    common = dict(key=key, xi=cfg.uap_xi, p=p, delta=cfg.uap_delta,
                  max_passes=cfg.uap_max_passes)
    if cfg.uap_method == "sgd":
      result = attacks.sgd_uap(logits_fn, variables, x, **common)
    else:
      method = {"deepfool": "minibatch"}.get(cfg.uap_method, cfg.uap_method)
      result = attacks.uap(logits_fn, variables, x, method=method, **common)
    v = np.asarray(jax.block_until_ready(result.v))
    seconds = time.time() - start
    test_rate = float(attacks.fooling_rate(logits_fn, variables, x_test, v))
    norm = float(np.abs(v).max() if p == "inf" else np.sqrt((v ** 2).sum()))
    rows.append({"index": u, "fooling_rate_train": float(result.fooling_rate),
                 "fooling_rate_test": test_rate, "passes": int(result.passes),
                 "norm": norm, "seconds": seconds,
                 "history": [None if np.isnan(h) else float(h)
                             for h in np.asarray(result.history)]})
    logging.info("UAP %d: fooling rate train %.3f test %.3f, %d passes, %.1f s",
                 u, rows[-1]["fooling_rate_train"], test_rate, rows[-1]["passes"], seconds)
    uaps.append(v)
  if not uaps:
    return _save_no_uap(ctx, x.shape[1:])
  summary = {
      "num_uaps": len(uaps),
      "algorithm": {"deepfool": "deepfool_uap_minibatch", "pipelined": "deepfool_uap_pipelined", "sequential":
                    "deepfool_uap_sequential", "sgd": "sgd_uap"}[cfg.uap_method],
      "p": cfg.uap_p, "xi": cfg.uap_xi, "delta": cfg.uap_delta,
      "max_passes": cfg.uap_max_passes, "train_samples": int(len(sample)),
      "fooling_rate_train": float(np.mean([r["fooling_rate_train"] for r in rows])),
      "fooling_rate_test": float(np.mean([r["fooling_rate_test"] for r in rows])),
      "passes": [r["passes"] for r in rows],
      "seconds": float(sum(r["seconds"] for r in rows)), "uaps": rows,
  }
  ctx.artifacts.save_uaps(np.stack(uaps), summary)
  return {k: summary[k] for k in ("algorithm", "fooling_rate_train", "fooling_rate_test")}


def _save_no_uap(ctx: RunContext, image_shape: tuple[int, ...]) -> dict:
  """--num_uaps=0: fingerprints will hold clean outputs only."""
  summary = {"num_uaps": 0, "algorithm": "none", "p": ctx.cfg.uap_p, "xi": 0.0,
             "delta": None, "max_passes": 0, "train_samples": 0,
             "fooling_rate_train": None, "fooling_rate_test": None, "passes": [],
             "seconds": 0.0, "uaps": []}
  ctx.artifacts.save_uaps(np.zeros((0, *image_shape), np.float32), summary)
  logging.info("No UAP (--num_uaps=0): fingerprints of clean outputs only.")
  return {k: summary[k] for k in ("algorithm", "fooling_rate_train", "fooling_rate_test")}
