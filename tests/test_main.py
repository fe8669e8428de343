"""The command line's logging (which lines show at which verbosity), and the
case table of ``experiments/bad_inputs.py`` (built, not run).

One subprocess runs ``uap_jax.main.main`` under absl's ``app.run`` once per
scenario (the flags re-parsed each time), with the victim stage replaced by
a stub that saves a tiny orbax checkpoint: orbax's INFO lines and the
pipeline's own progress lines both have a chance to show (one JAX import,
about 6 s in all).
"""

from __future__ import annotations

import importlib.util
import logging as std_logging
import os
import subprocess
import sys

import pytest

from uap_jax import main as main_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCENARIOS = {
    "default": [],
    "v0": ["--verbosity=0"],
    "v-1": ["--verbosity=-1"],
    "short-v-1": ["-v=-1"],
    "threshold": ["--stderrthreshold=warning"],
    "default-again": [],
    "bad-flag": ["--victim_arch=resnet99"],
    # Flags parsed by main.parse_flags (app.run's parser), then main.main.
    "parse-unknown-flag": ["--nonsense=1"],
    "parse-not-a-number": ["--fp_k=many"],
    "parse-positional": ["victim"],
}

# Runs each scenario of argv[2:] ("NAME FLAG FLAG ..." strings) in turn.
_PROBE = r"""
import sys
import numpy as np
from absl import app, flags
from uap_jax import main, pipeline
from uap_jax.runtime import checkpoint

def victim(ctx):
  checkpoint.save_arrays(ctx.workdir.checkpoint_dir("probe"), {"a": np.zeros(2)}, {})
  return {}

real_run = pipeline.run
main.pipeline.run = lambda cfg: real_run(cfg, stages={"victim": victim})

def scenarios(argv):
  for i, scenario in enumerate(argv[2:]):
    name, *extra = scenario.split()
    flags.FLAGS.unparse_flags()
    sys.stderr.write(f"=== {name}\n")
    sys.stderr.flush()
    try:
      args = (main.parse_flags if name.startswith("parse-") else flags.FLAGS)(
          ["uap_jax", f"--workdir={argv[1]}/{i}", "--stages=victim",
           "--dataset=digits", *extra])
      main.main(args)
    except SystemExit as e:
      sys.stderr.write(f"EXIT {e.code}\n")
    sys.stderr.flush()

app.run(scenarios)
"""

OWN_LINE = "Stage victim: starting."


@pytest.fixture(scope="module")
def stderr_of(tmp_path_factory):
  """Scenario name -> the stderr lines it printed."""
  workdir = tmp_path_factory.mktemp("runs")
  proc = subprocess.run(
      [sys.executable, "-c", _PROBE, str(workdir),
       *(" ".join([name, *extra]) for name, extra in SCENARIOS.items())],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = {}
  for line in proc.stderr.splitlines():
    if line.startswith("=== "):
      current = lines.setdefault(line[4:], [])
    elif lines:
      current.append(line)
  assert list(lines) == list(SCENARIOS)
  return lines


def _orbax_lines(lines):
  return [line for line in lines if line.startswith("I") and (
      "checkpoint_manager.py" in line or "composite_checkpoint_handler.py" in line)]


def _has_own_line(lines):
  return any(OWN_LINE in line for line in lines)


@pytest.mark.parametrize("scenario", ["default", "default-again"])
def test_default_shows_own_progress_and_hides_orbax_info(stderr_of, scenario):
  lines = stderr_of[scenario]
  assert _has_own_line(lines)
  assert any("Stage victim: done in" in line for line in lines)
  assert not _orbax_lines(lines), lines


def test_explicit_verbosity_0_shows_the_libraries_info_too(stderr_of):
  assert _has_own_line(stderr_of["v0"])
  assert _orbax_lines(stderr_of["v0"])
  assert len(stderr_of["v0"]) > len(stderr_of["default"])


@pytest.mark.parametrize("scenario", ["v-1", "short-v-1", "threshold"])
def test_explicit_quiet_flags_hide_info_lines(stderr_of, scenario):
  lines = stderr_of[scenario]
  assert not _has_own_line(lines)
  assert not _orbax_lines(lines)
  assert not [line for line in lines if line.startswith("I")], lines


def test_error_is_said_once(stderr_of):
  lines = stderr_of["bad-flag"]
  assert lines[-1].startswith("EXIT error: Unknown architecture 'resnet99'")
  assert sum("resnet99" in line for line in lines) == 1, lines


@pytest.mark.parametrize("scenario, message", [
    ("parse-unknown-flag", "error: Unknown command line flag 'nonsense' (--helpfull"),
    ("parse-not-a-number", "error: flag --fp_k=many: invalid literal"),
    ("parse-positional", "error: unexpected arguments ['victim']: every setting is a --flag"),
])
def test_command_line_mistakes_are_one_error_line(stderr_of, scenario, message):
  lines = stderr_of[scenario]
  assert len(lines) == 1 and lines[0].startswith("EXIT " + message), lines


def _record(pathname, level=std_logging.INFO, name="absl"):
  return std_logging.LogRecord(name, level, pathname, 1, "msg", (), None)


def test_filter_drops_library_info_only():
  filt = main_lib.LibraryInfoFilter()
  orbax_dir = main_lib._package_dirs(("orbax",))[0]  # pylint: disable=protected-access
  in_orbax = os.path.join(orbax_dir, "checkpoint", "checkpoint_manager.py")
  assert not filt.filter(_record(in_orbax))
  assert filt.filter(_record(in_orbax, level=std_logging.WARNING))
  assert not filt.filter(_record("/x/y.py", name="jax._src.xla_bridge"))
  assert filt.filter(_record("/x/y.py", level=std_logging.ERROR, name="jax._src.xla_bridge"))
  assert filt.filter(_record(main_lib.pipeline.__file__))
  # A folder merely named like a library (a user's checkout) is not the library.
  assert filt.filter(_record("/home/jax/orbax/uap_jax/pipeline.py"))


# --------------------------------------------------------------------------
# experiments/bad_inputs.py: its case table (the script itself is not run).


def _bad_inputs():
  spec = importlib.util.spec_from_file_location(
      "bad_inputs", os.path.join(REPO, "experiments", "bad_inputs.py"))
  module = importlib.util.module_from_spec(spec)
  # dataclasses look their module up in sys.modules.
  sys.modules["bad_inputs"] = module
  spec.loader.exec_module(module)
  return module


def test_bad_input_cases_are_40_distinct_and_each_builds_a_command(tmp_path):
  bad_inputs = _bad_inputs()
  cases = bad_inputs.CASES
  names = [c.name for c in cases]
  assert len(set(names)) == len(names) >= 40
  for case in cases:
    argv = bad_inputs.command(case, str(tmp_path / "wd"), str(tmp_path / "files"))
    assert argv[:3] == [sys.executable, "-m", "uap_jax.main"], case.name
    assert all(isinstance(a, str) and "{" not in a for a in argv), case.name
    # The case's flags come last: absl keeps a flag's last value.
    assert argv[len(argv) - len(case.flags):] == [
        f.format(files=str(tmp_path / "files"), wd=str(tmp_path / "wd")) for f in case.flags]
  assert sum(not c.control for c in cases) >= 40
  # The table shows what each refusal lacks.
  record = {"exit": 0, "traceback": True, "messages": 2, "seconds": 20.0, "written": ["x"]}
  assert len(bad_inputs.problems(record, fast=15.0, timeout=60.0)) == 4
  record.update(exit=1, traceback=False, messages=1, seconds=3.0, written=[])
  assert bad_inputs.problems(record, fast=15.0, timeout=60.0) == []
