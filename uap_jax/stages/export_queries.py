"""Stage `export_queries`: the query images a black-box suspect must answer."""

from __future__ import annotations

from uap_jax.fingerprint import blackbox
from uap_jax.runtime.context import RunContext
from uap_jax.stages import fingerprint as fp_stage
from uap_jax.stages import uap as uap_stage


def run(ctx: RunContext) -> dict:
  """Writes ``WORKDIR/queries.npz`` and its manifest ``WORKDIR/queries.json``."""
  _, _, points = fp_stage.load(ctx)
  x_points = ctx.data.x_train[points["points"]]
  path = ctx.workdir.path("queries.npz")
  manifest = blackbox.export_queries(path, x_points, uap_stage.load_uaps(ctx),
                                     num_classes=ctx.data.num_classes)
  return {"path": path, "num_queries": manifest["num_queries"]}
