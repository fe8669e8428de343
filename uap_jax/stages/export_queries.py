"""Stage `export_queries`: the query images a black-box suspect must answer."""

from __future__ import annotations

from uap_jax.fingerprint import blackbox
from uap_jax.runtime.context import RunContext


def run(ctx: RunContext) -> dict:
  """Writes ``WORKDIR/queries.npz`` and its manifest ``WORKDIR/queries.json``."""
  x_points = ctx.data.x_train[ctx.artifacts.fingerprints.points]
  path = ctx.artifacts.queries_path
  manifest = blackbox.export_queries(path, x_points, ctx.artifacts.uaps,
                                     num_classes=ctx.data.num_classes)
  return {"path": path, "num_queries": manifest["num_queries"]}
