"""The command line: its logging (which lines show at which verbosity), its
flags (enums, presets, ``--help`` by stage), the console script and the
wheel, and the case table of ``experiments/bad_inputs.py`` (built, not run).

One subprocess runs ``uap_jax.main.main`` under absl's ``app.run`` once per
scenario (the flags re-parsed each time), with the victim stage replaced by
a stub that saves a tiny orbax checkpoint: orbax's INFO lines and the
pipeline's own progress lines both have a chance to show (one JAX import,
about 6 s in all).
"""

from __future__ import annotations

import configparser
import dataclasses
import glob
import importlib
import importlib.util
import logging as std_logging
import os
import re
import shutil
import subprocess
import sys
import zipfile

from absl import flags
import pytest

from uap_jax import cli
from uap_jax import config as config_lib
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
    "parse-not-a-choice": ["--optimizer=rmsprop"],
    "parse-unknown-preset": ["--preset=nope"],
    # A shipped preset read in place: tiny.flags sets --dataset=digits.
    "parse-preset": ["--preset=tiny"],
    "parse-help": ["--help"],
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
    ("parse-unknown-flag", "error: Unknown command line flag 'nonsense' (--help lists"),
    ("parse-not-a-choice", "error: flag --optimizer=rmsprop: value should be one of <sgd|adam>"),
    ("parse-unknown-preset", "error: --preset: unknown preset 'nope'; choose from "),
    ("parse-not-a-number", "error: flag --fp_k=many: invalid literal"),
    ("parse-positional", "error: unexpected arguments ['victim']: every setting is a --flag"),
])
def test_command_line_mistakes_are_one_error_line(stderr_of, scenario, message):
  lines = stderr_of[scenario]
  assert len(lines) == 1 and lines[0].startswith("EXIT " + message), lines


def test_preset_is_read_in_place(stderr_of):
  assert _has_own_line(stderr_of["parse-preset"])


def test_help_exits_0_with_nothing_on_stderr(stderr_of):
  # The help itself goes to stdout (tested on help_text below).
  assert stderr_of["parse-help"] == ["EXIT 0"]


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


# --------------------------------------------------------------------------
# Flags: choices, presets, --help by stage (a fresh FlagValues: no JAX run).


def _defined_flags():
  flag_values = flags.FlagValues()
  config_lib.define_flags(flags, flag_values)
  cli.define_flags(flag_values)
  return flag_values


def _choice_fields():
  return [f for f in dataclasses.fields(config_lib.Config) if "choices" in f.metadata]


def test_every_field_with_choices_is_an_enum_flag():
  fields = {f.name for f in _choice_fields()}
  assert {"strategy", "optimizer", "uap_method", "uap_p", "fp_rule", "fp_mode",
          "test", "stages", "zoo_kinds"} <= fields
  flag_values = _defined_flags()
  for field in _choice_fields():
    choices = tuple(field.metadata["choices"])
    parser = flag_values[field.name].parser
    for choice in choices:
      assert parser.parse(choice) in (choice, [choice]), field.name
    with pytest.raises(ValueError, match=re.escape("|".join(choices))):
      parser.parse("bogus")


@pytest.mark.parametrize("flag, message", [
    ("--optimizer=rmsprop", "flag --optimizer=rmsprop: value should be one of <sgd|adam>"),
    ("--uap_p=1", "value should be one of <2|inf>"),
    ("--stages=victim,steal", "flag --stages=victim,steal: unknown 'steal'; each item must be one of <victim|zoo|"),
    ("--zoo_kinds=prune,steal", "unknown 'steal'"),
])
def test_a_value_outside_the_choices_is_refused_as_flags_parse(flag, message):
  with pytest.raises(ValueError) as error:
    config_lib.parse([flag])
  assert message in str(error.value)
  assert "\n" not in str(error.value)


def test_choice_flags_still_take_their_values():
  cfg = config_lib.parse(["--stages=victim,zoo", "--uap_p=2", "--zoo_kinds=prune",
                          "--test=model_z", "--stages=verify"])
  assert (cfg.stages, cfg.uap_p, cfg.zoo_kinds, cfg.test) == (["verify"], "2", ["prune"], "model_z")


def test_every_experiment_flagfile_is_a_shipped_preset():
  flagfiles = sorted(f[:-len(".flags")] for f in os.listdir(os.path.join(REPO, "experiments"))
                     if f.endswith(".flags"))
  assert cli.preset_names() == tuple(flagfiles)
  assert "quickstart" in flagfiles and "tiny" in flagfiles
  path = cli.preset_path("tiny")
  assert os.path.samefile(path, os.path.join(REPO, "experiments", "tiny.flags"))


def test_presets_expand_in_place_so_later_flags_win():
  argv = cli.expand_presets(["uap-jax", "--epochs=1", "--preset=quickstart,tiny",
                             "--preset", "tiny", "--epochs=2"])
  assert argv == ["uap-jax", "--epochs=1", f"--flagfile={cli.preset_path('quickstart')}",
                  f"--flagfile={cli.preset_path('tiny')}",
                  f"--flagfile={cli.preset_path('tiny')}", "--epochs=2"]
  cfg = config_lib.parse(argv[1:])
  assert (cfg.dataset, cfg.epochs, cfg.workdir) == ("digits", 2.0, "runs/quickstart")
  with pytest.raises(ValueError, match="unknown preset 'nope'; choose from .*quickstart"):
    cli.expand_presets(["uap-jax", "--preset=tiny,nope"])
  with pytest.raises(ValueError, match="--preset needs a value"):
    cli.expand_presets(["uap-jax", "--preset"])


def test_help_lists_the_tools_flags_by_stage_with_defaults_and_choices():
  flag_values = _defined_flags()
  text = cli.help_text(flag_values)
  groups = cli.flag_groups(flag_values)
  names = [n for _, group in groups for n in group]
  # Every Config field once, plus --preset.
  assert sorted(names) == sorted([f.name for f in dataclasses.fields(config_lib.Config)] + ["preset"])
  titles = [t for t, _ in groups]
  assert titles[0].startswith("run settings") and "victim stage" in titles
  assert titles.index("victim stage") < titles.index("zoo stage") < titles.index("verify stage")
  # Each flag under its stage's heading.
  for title, group in groups:
    section = text.split(f"\n{title}:\n")[1].split("\n\n")[0]
    for name in group:
      assert f"--{name}:" in section or f"--[no]{name}:" in section, (title, name)
  assert "victim_arch" in dict(groups)["victim stage"]
  assert "workdir" in dict(groups)[titles[0]]
  assert "--optimizer: <sgd|adam>:" in text
  assert "(default: 'lenet5')" in text
  assert "--preset=quickstart" in text and "-v,--verbosity" in text
  # Not absl's or the libraries' flags (--helpfull has those).
  for other in ("--log_dir", "--only_check_args", "--pdb", "orbax_use_distributed_barrier"):
    assert other not in text, other


def test_help_flags_replace_absls_and_keep_helpfull():
  main_lib.cli.install_help_flags()
  main_lib.cli.install_help_flags()  # twice: a no-op
  assert isinstance(flags.FLAGS["help"], cli.GroupedHelpFlag)
  assert flags.FLAGS["?"] is flags.FLAGS["help"]
  assert isinstance(flags.FLAGS["helpshort"], cli.GroupedHelpFlag)
  assert "helpfull" in flags.FLAGS


# --------------------------------------------------------------------------
# Packaging: the console script and the wheel.


def _setup_cfg():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPO, "setup.cfg"))
  return parser


def test_console_script_resolves_to_main_run():
  scripts = _setup_cfg()["options.entry_points"]["console_scripts"].split("\n")
  entry = [s.split("=", 1)[1].strip() for s in scripts if s.split("=")[0].strip() == "uap-jax"]
  assert entry == ["uap_jax.main:run"]
  module, function = entry[0].split(":")
  assert callable(getattr(importlib.import_module(module), function))


def test_package_data_and_license_are_there():
  cfg = _setup_cfg()
  patterns = cfg["options.package_data"]["uap_jax"].split()
  assert patterns == ["py.typed", "presets/*.flags"]
  package = os.path.join(REPO, "uap_jax")
  assert os.path.isfile(os.path.join(package, "py.typed"))
  assert len(glob.glob(os.path.join(package, "presets", "*.flags"))) == len(cli.preset_names()) >= 2
  assert cfg["metadata"]["license"] == "Apache-2.0"
  with open(os.path.join(REPO, cfg["metadata"]["license_files"].strip())) as f:
    assert "Apache License" in f.read(300)
  extras = cfg["options.extras_require"]
  assert {"torch", "keras", "test"} <= set(extras)
  assert "torch2jax" in extras["torch"] and "keras>=3" in extras["keras"]


def test_wheel_ships_the_presets_py_typed_and_the_console_script(tmp_path):
  """Builds the wheel from a copy of the sources (about 10 s: pip fetches setuptools)."""
  src = tmp_path / "src"
  src.mkdir()
  for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
    shutil.copy(os.path.join(REPO, name), src / name)
  shutil.copytree(os.path.join(REPO, "uap_jax"), src / "uap_jax", symlinks=True,
                  ignore=shutil.ignore_patterns("__pycache__"))
  (src / "experiments").mkdir()
  for path in glob.glob(os.path.join(REPO, "experiments", "*.flags")):
    shutil.copy(path, src / "experiments")
  proc = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src),
       "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  [wheel] = glob.glob(str(tmp_path / "dist" / "uap_jax-*.whl"))
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
  assert "uap_jax/py.typed" in names
  assert {f"uap_jax/presets/{n}.flags" for n in cli.preset_names()} <= names
  assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
  assert "uap-jax = uap_jax.main:run" in entry_points
  # The scripts of experiments/ are not shipped as modules.
  assert not [n for n in names if n.startswith("uap_jax/presets/") and n.endswith(".py")]
