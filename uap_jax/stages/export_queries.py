"""Stage `export_queries`: the query images a black-box suspect must answer."""

from __future__ import annotations

from uap_jax.fingerprint import blackbox
from uap_jax.runtime.context import RunContext


def run(ctx: RunContext) -> dict:
  """Saves ``WORKDIR/queries.npz`` and its manifest ``WORKDIR/queries.json``."""
  x_points = ctx.data.x_train[ctx.artifacts.fingerprints.points]
  queries, manifest = blackbox.make_queries(x_points, ctx.artifacts.uaps,
                                            num_classes=ctx.data.num_classes)
  path = ctx.artifacts.save_queries(queries, manifest)
  return {"path": path, "num_queries": manifest["num_queries"]}
