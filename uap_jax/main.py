"""Command line: ``uap-jax --preset=NAME`` or ``python -m uap_jax.main --flagfile=FILE``.

Only parses flags, sets up logging and calls the library; every flag but
``--preset`` and absl's is a field of :class:`uap_jax.config.Config`.
``--help`` lists them by stage, ``--helpfull`` adds absl's and the
libraries' (:mod:`uap_jax.cli`). The console script ``uap-jax`` calls
:func:`run`.

Logging: by default uap-jax's own progress shows at INFO (stages, steps,
losses, accuracies, ETAs) while the INFO lines of the libraries in
:data:`QUIET_LIBRARIES` (orbax's checkpoint steps, JAX's backend set-up) are
dropped; their warnings and errors still show. An explicit ``--verbosity``
(``-v``) applies to every logger as absl defines it: ``-v=0`` shows the
libraries' INFO lines too, ``-v=-1`` only warnings. An explicit
``--stderrthreshold`` drops lines below its level from stderr.
"""

from __future__ import annotations

import functools
import importlib.util
import logging as std_logging
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging

from uap_jax import cli
from uap_jax import config
from uap_jax import pipeline
from uap_jax.runtime import distributed

config.define_flags(flags)
cli.define_flags()

# Libraries whose INFO lines are their internals: before this default they
# were 2,121 of the quickstart's 2,403 lines.
QUIET_LIBRARIES = ("orbax", "jax", "jaxlib", "flax")

# --stderrthreshold's values (absl normalises numbers to these names).
_LEVELS = {"debug": std_logging.DEBUG, "info": std_logging.INFO,
           "warning": std_logging.WARNING, "error": std_logging.ERROR,
           "fatal": std_logging.FATAL}


def _package_dirs(names: tuple[str, ...]) -> tuple[str, ...]:
  """The installed directories of the packages ``names`` (without importing them)."""
  dirs = []
  for name in names:
    try:
      spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
      spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
      dirs.append(os.path.join(os.path.realpath(location), ""))
  return tuple(dirs)


class LibraryInfoFilter(std_logging.Filter):
  """Drops records below WARNING that come from the given libraries.

  Orbax logs through absl's logger, so the logger's name does not tell its
  records from uap-jax's: the file that logged does (``record.pathname``).
  """

  def __init__(self, names: tuple[str, ...] = QUIET_LIBRARIES):
    super().__init__()
    self.names = names
    self.dirs = _package_dirs(names)

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    if record.name.split(".")[0] in self.names:
      return False
    return not _realpath(record.pathname).startswith(self.dirs)


@functools.lru_cache(maxsize=None)
def _realpath(path: str) -> str:
  # Once per file that logs, not once per line.
  return os.path.realpath(path)


class ThresholdFilter(std_logging.Filter):
  """Drops records below a level (for an explicit --stderrthreshold)."""

  def __init__(self, level: int):
    super().__init__()
    self.level = level

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= self.level


def configure_logging(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Sets the run's logging after the flags are parsed (see the module doc).

  Args:
    flag_values: the parsed flags (absl's ``--verbosity`` and
      ``--stderrthreshold`` among them).
  """
  handler = logging.get_absl_handler()
  # A second call (tests calling main twice) replaces the filters it added.
  for f in [f for f in handler.filters
            if isinstance(f, (LibraryInfoFilter, ThresholdFilter))]:
    handler.removeFilter(f)
  quiet = not flag_values["verbosity"].present
  if quiet:
    logging.set_verbosity(logging.INFO)
    handler.addFilter(LibraryInfoFilter())
  # Records of the libraries' own Python loggers are then not even made;
  # those they log through absl's logger are dropped by the filter.
  for name in QUIET_LIBRARIES:
    std_logging.getLogger(name).setLevel(std_logging.WARNING if quiet
                                         else std_logging.NOTSET)
  if flag_values["stderrthreshold"].present:
    # Without a log file (absl's app never starts one) every line goes to
    # stderr, so absl's threshold alone would change nothing.
    # absl's flag holds a level name ('0'..'3' become names too).
    handler.addFilter(ThresholdFilter(
        _LEVELS[flag_values["stderrthreshold"].value]))


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag said in one ``error:`` line.

  absl's own parser prints the error and then a generic hint as the last
  line; here the error is the last line, with the hint in it.

  ``--preset=NAME`` is read as ``--flagfile`` of the shipped preset, in place.

  Args:
    argv: the command line.

  Returns:
    The arguments left after the flags.
  """
  cli.install_help_flags()
  try:
    argv = cli.expand_presets(argv)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    raise SystemExit(f"error: {e} (--help lists the tool's flags).") from None


def main(argv):
  if len(argv) > 1:
    # Not app.UsageError: that prints the whole module doc before the reason.
    raise SystemExit(f"error: unexpected arguments {argv[1:]}: every setting is a "
                     "--flag, e.g. --stages=victim.")
  configure_logging()
  try:
    cli.check_presets()
    cfg = config.from_flags(flags.FLAGS)
    pipeline.run(cfg)
  except (ValueError, FileNotFoundError) as e:
    # One line, the last the user sees (a log line as well would repeat it).
    if distributed.in_multi_process_run():
      print(f"error: {e}", file=sys.stderr)
      distributed.exit_now(1)
    raise SystemExit(f"error: {e}") from None
  except Exception:  # pylint: disable=broad-exception-caught
    if distributed.in_multi_process_run():
      # The others must not wait for this process at their next barrier.
      traceback.print_exc()
      distributed.exit_now(1)
    raise


def run() -> None:
  """The console script ``uap-jax``: absl's app with :func:`parse_flags`."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
