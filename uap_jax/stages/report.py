"""Stage `report`: results.json, report.md and plots in ``WORKDIR/report/``.

Loads the saved artefacts, builds the results with :mod:`uap_jax.report`
(schema in :mod:`uap_jax.report.results`) and saves them; nothing is
recomputed here (the similarities are the verify stage's).
"""

from __future__ import annotations

from absl import logging

from uap_jax import config as config_lib
from uap_jax.report import plots
from uap_jax.report import results
from uap_jax.report import tables
from uap_jax.runtime.context import RunContext


def run(ctx: RunContext) -> dict:
  art = ctx.artifacts
  res = results.build(ctx.cfg.dataset, art.victim_summary(), art.uap_summary(),
                      art.verification(), ctx.workdir.stage_seconds(config_lib.STAGES))
  # The report's own time is not known until it is written; it is in stages/.
  ctx.workdir.write_json("report/results.json", res)
  text = tables.markdown(res)
  ctx.workdir.write_text("report/report.md", text)
  names = [m["name"] for m in art.fingerprints.models]
  files = [ctx.workdir.save_figure(f"report/{stem}.png", fig, dpi=120)
           for stem, fig in plots.figures(res, art.similarities(), art.split()["calib"],
                                          names).items()]
  logging.info("Report: %s", ctx.workdir.path("report"))
  logging.info("\n%s", text.split("## Suspects")[0])
  return {"files": ["results.json", "report.md"] + [f.rsplit("/", 1)[-1] for f in files]}
