"""Command line: ``python -m uap_jax.main --flagfile=experiments/NAME.flags``.

Only parses flags and calls the library; every flag is a field of
:class:`uap_jax.config.Config` (``--helpfull`` lists them).
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging

from uap_jax import config
from uap_jax import pipeline

config.define_flags(flags)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]} (all settings are --flags).")
  logging.set_verbosity(logging.INFO)
  try:
    cfg = config.from_flags(flags.FLAGS)
    pipeline.run(cfg)
  except (ValueError, FileNotFoundError) as e:
    logging.error("%s", e)
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main)
