"""Stage `export_queries`: the query images a black-box suspect must answer."""

from __future__ import annotations

from uap_jax.fingerprint import blackbox
from uap_jax.fingerprint import controls
from uap_jax.runtime.context import RunContext


def run(ctx: RunContext) -> dict:
  """Saves ``WORKDIR/queries.npz`` and its manifest ``WORKDIR/queries.json``.

  The fingerprint queries go out with control queries (repeats, and
  held-out labelled images of the test split), all in an order seeded by
  ``--seed``; the manifest, which the owner keeps, says which is which.
  """
  data = ctx.data
  x_points = data.x_train[ctx.artifacts.fingerprints.points]
  holdout = controls.holdout_draw(data.x_test, data.y_test, data.num_classes,
                                  seed=ctx.cfg.seed)
  queries, manifest = blackbox.make_queries(
      x_points, ctx.artifacts.uaps, num_classes=data.num_classes,
      holdout=holdout, seed=ctx.cfg.seed)
  record = ctx.artifacts.commitment()
  # The queries are bound to the fingerprint committed to.
  manifest["commitment_sha256"] = record["sha256"] if record else None
  path = ctx.artifacts.save_queries(queries, manifest)
  c = manifest["controls"]
  return {"path": path, "num_queries": manifest["num_queries"],
          "num_grid_queries": manifest["num_grid_queries"],
          "repeats": len(c["repeat_positions"]),
          "holdout": len(c["holdout_positions"])}
