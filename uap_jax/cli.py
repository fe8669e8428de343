"""The command line's own parts: presets and ``--help`` grouped by stage.

``uap-jax`` (the console script) and ``python -m uap_jax.main`` take the same
flags: one per field of :class:`uap_jax.config.Config`, ``--preset`` and
absl's. This module holds what the command line adds to absl:

* **Presets**: the flagfiles of ``experiments/`` ship inside the package as
  ``uap_jax/presets/NAME.flags`` (in the source tree ``uap_jax/presets`` is a
  link to ``experiments/``), so ``--preset=quickstart,tiny`` works wherever
  uap-jax is installed and from any directory. :func:`expand_presets` turns
  each name into a ``--flagfile=PATH`` in place, so later flags still
  override it.
* **Help**: ``--help`` (``-?``, ``--helpshort``) lists the tool's own flags
  grouped by the stage they change first (absl key flags registered under
  one group per stage, rendered by absl's ``FlagValues.module_help``), with
  defaults, choices and help, then the logging flags as
  :func:`uap_jax.main.configure_logging` reads them; ``--helpfull`` stays
  absl's list of every flag, the libraries' included.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap

from absl import app
from absl import flags

from uap_jax import config

PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")
PROGRAM = "uap-jax"
# Settings that steer how a run executes (no ``stage`` metadata).
RUN_GROUP = "run"
# absl's logging flags as uap_jax.main.configure_logging reads them (absl's
# own help texts describe a log file the command line never writes).
LOGGING_HELP = """
logging:
  -v,--verbosity: not given (the default): uap-jax's progress at INFO (stages,
    steps, losses, accuracies, ETAs) and only the warnings and errors of orbax,
    jax and flax; -v=0: every library's INFO lines too; -v=-1: warnings only.
  --stderrthreshold: <debug|info|warning|error|fatal>: drop the lines below
    this level."""


def preset_names() -> tuple[str, ...]:
  """The presets shipped with the package (``presets/NAME.flags``), sorted."""
  if not os.path.isdir(PRESET_DIR):
    return ()
  return tuple(sorted(f[:-len(".flags")] for f in os.listdir(PRESET_DIR)
                      if f.endswith(".flags")))


def preset_path(name: str) -> str:
  """The flagfile of one preset.

  Args:
    name: a preset name (``quickstart``), as :func:`preset_names` lists.

  Returns:
    The absolute path of ``presets/NAME.flags``.

  Raises:
    ValueError: the name is not a shipped preset (the message lists them).
  """
  names = preset_names()
  if name not in names:
    raise ValueError(f"--preset: unknown preset {name!r}; choose from "
                     f"{', '.join(names) or '(none shipped)'}, or give a file "
                     "with --flagfile=PATH.")
  return os.path.join(PRESET_DIR, name + ".flags")


def expand_presets(argv: list[str]) -> list[str]:
  """Replaces each ``--preset=A,B`` of a command line by ``--flagfile``s.

  In place, so flags after a preset override it (absl keeps a flag's last
  value). ``--preset A`` (value as the next argument) works too.

  Args:
    argv: the command line, program name first.

  Returns:
    The command line with ``--flagfile=PATH`` for each preset, in order.

  Raises:
    ValueError: an unknown or empty preset name.
  """
  out = list(argv[:1])
  rest = list(argv[1:])
  while rest:
    arg = rest.pop(0)
    if arg == "--":
      out += [arg] + rest
      break
    name, eq, value = arg.lstrip("-").partition("=")
    if not arg.startswith("-") or name != "preset":
      out.append(arg)
      continue
    if not eq:
      if not rest:
        raise ValueError("--preset needs a value, e.g. --preset=quickstart.")
      value = rest.pop(0)
    names = [n.strip() for n in value.split(",")]
    if not all(names):
      raise ValueError(f"--preset={value}: empty preset name; choose from "
                       f"{', '.join(preset_names())}.")
    out += [f"--flagfile={preset_path(n)}" for n in names]
  return out


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines ``--preset`` (a pre-pass expands it; the flag carries its help).

  Args:
    flag_values: where to define it (default: the global flags).
  """
  flags.DEFINE_string(
      "preset", "",
      "Comma list of shipped flagfiles to read in place, e.g. "
      "--preset=quickstart or --preset=quickstart,tiny (later flags override "
      f"them): {', '.join(preset_names())}.", flag_values=flag_values)


def check_presets(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Refuses a ``--preset`` that only a flagfile set (the pre-pass missed it).

  Args:
    flag_values: the parsed flags.

  Raises:
    ValueError: naming the fix.
  """
  if flag_values["preset"].value:
    raise ValueError(f"--preset={flag_values['preset'].value} inside a flagfile "
                     "is not read: write --flagfile=PATH there, or give --preset "
                     "on the command line.")


def flag_groups(flag_values: flags.FlagValues = flags.FLAGS
                ) -> list[tuple[str, list[str]]]:
  """The tool's flags by group: run settings, one group per stage, logging.

  A Config field belongs to the stage of its ``stage`` metadata (the first
  stage whose output it changes) or, without one, to the run settings. A
  field that a later helper adds lands in its group with no change here.

  Args:
    flag_values: the defined flags.

  Returns:
    ``[(title, [flag names])]`` in pipeline order, empty groups left out.
  """
  by_group: dict[str, list[str]] = {RUN_GROUP: []}
  for stage in config.STAGES:
    by_group[stage] = []
  for field in dataclasses.fields(config.Config):
    by_group[field.metadata.get("stage", RUN_GROUP)].append(field.name)
  if "preset" in flag_values:
    by_group[RUN_GROUP].insert(0, "preset")
  titles = {RUN_GROUP: "run settings (how the run executes; changing one "
                       "redoes no stage)"}
  groups = [(titles.get(g, f"{g} stage"), names)
            for g, names in by_group.items() if names]
  return groups


def help_text(flag_values: flags.FlagValues = flags.FLAGS) -> str:
  """The ``--help`` text: usage, presets, then the flags by group.

  Args:
    flag_values: the defined flags.

  Returns:
    The text, ending in a newline.
  """
  lines = [
      f"{PROGRAM}: tells whether a suspect image classifier was stolen from "
      "yours (UAP fingerprints).",
      "",
      f"usage: {PROGRAM} [--preset=NAME[,NAME]] [--flagfile=FILE] [--FLAG=VALUE ...]",
      "       (python -m uap_jax.main takes the same flags)",
      "",
      "Flags are read in order and the last value of a flag wins, e.g.",
      f"  {PROGRAM} --preset=quickstart               the quickstart (under 3 min on 2 CPU cores)",
      f"  {PROGRAM} --preset=quickstart,tiny --workdir=runs/tiny   the same, tiny",
      *textwrap.wrap(f"Presets: {', '.join(preset_names())} (experiments/NAME.flags, "
                     "shipped in the package).", width=78),
      "A setting of a stage's group changes that stage's output: a rerun with",
      "another value redoes the stage and those after it.",
      "--helpfull lists every flag, absl's and the libraries' too.",
  ]
  for title, names in flag_groups(flag_values):
    for name in names:
      flag_values.register_key_flag_for_module(title, flag_values[name])
    lines.append(flag_values.module_help(title))
  lines.append(LOGGING_HELP)
  return "\n".join(lines) + "\n"


class GroupedHelpFlag(flags.BooleanFlag):
  """``--help``: prints :func:`help_text` to stdout and exits 0."""

  def __init__(self, name: str, short_name: str | None = None):
    super().__init__(name, False,
                     "show the tool's flags by stage (--helpfull: every flag)",
                     short_name=short_name, allow_hide_cpp=True)

  def parse(self, argument):
    if self._parse(argument):
      sys.stdout.write(help_text())
      sys.stdout.flush()
      sys.exit(0)


def install_help_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Puts :class:`GroupedHelpFlag` in place of absl's ``--help``/``--helpshort``.

  absl's ``--help`` shows the main module's key flags under that module's
  name; the console script's main module is pip's wrapper, and one group per
  stage says more. absl's other help flags (``--helpfull``) stay. Calling
  again does nothing.

  Args:
    flag_values: the global flags (absl's ``app`` defines its help flags there).
  """
  if "help" in flag_values and isinstance(flag_values["help"], GroupedHelpFlag):
    return
  app.define_help_flags()  # idempotent: absl's, replaced below
  for name in ("help", "?", "helpshort"):
    if name in flag_values:
      flag_values.__delattr__(name)
  flags.DEFINE_flag(GroupedHelpFlag("help", "?"), flag_values)
  flags.DEFINE_flag(GroupedHelpFlag("helpshort"), flag_values)
