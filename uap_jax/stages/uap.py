"""Stage `uap`: the victim's universal adversarial perturbation(s)."""

from __future__ import annotations

import jax
import numpy as np
from absl import logging

from uap_jax import attacks
from uap_jax.runtime import stack as stack_lib
from uap_jax.runtime.context import RunContext


def victim_uaps(ctx: RunContext) -> tuple[np.ndarray, dict]:
  """The victim's ``num_uaps`` UAPs (one key each) as the run's seed draws them.

  Deterministic given the victim, the data, the settings and the seed, so
  anyone holding those can re-derive a committed fingerprint's UAPs.

  Args:
    ctx: the run's context (settings, data, artefacts).

  Returns:
    ``(U, H, W, C)`` UAPs and their summary (fooling rates, passes, times).
  """
  cfg, data = ctx.cfg, ctx.data
  victim = ctx.artifacts.victim
  variables = jax.tree.map(lambda a: a[0], victim.variables)
  rng = np.random.default_rng([cfg.seed, 7])
  part = ctx.parts["victim"]
  sample = np.sort(rng.choice(part, min(cfg.uap_samples, len(part)), replace=False))
  return attacks.compute_victim_uap(
      victim.logits_fn, variables, stack_lib.to_float(data.x_train[sample]),
      stack_lib.to_float(data.x_test), key=jax.random.key(cfg.seed),
      algorithm=cfg.uap_method, p=cfg.uap_p, xi=cfg.uap_xi,
      delta=cfg.uap_delta, max_passes=cfg.uap_max_passes,
      num_uaps=cfg.num_uaps,
      **({} if cfg.uap_method == "sgd" else
         {"num_candidates": cfg.uap_candidates}))


def run(ctx: RunContext) -> dict:
  """Computes ``num_uaps`` UAPs of the victim (one key each) and saves them.

  ``--num_uaps=0`` saves an empty set: the no-UAP ablation (clean outputs).

  Args:
    ctx: the run's context (settings, data, artefacts).

  Returns:
    The summary's algorithm and mean fooling rates, for the stage log.
  """
  uaps, summary = victim_uaps(ctx)
  ctx.artifacts.save_uaps(uaps, summary)
  for row in summary["uaps"]:
    logging.info("UAP %d: fooling rate train %.3f test %.3f, %d passes, %.1f s",
                 row["index"], row["fooling_rate_train"], row["fooling_rate_test"],
                 row["passes"], row["seconds"])
  if not summary["uaps"]:
    logging.info("No UAP (--num_uaps=0): fingerprints of clean outputs only.")
  return {k: summary[k] for k in ("algorithm", "fooling_rate_train", "fooling_rate_test")}
