"""The command line end to end on tiny settings, resuming, and its error paths."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from uap_jax.runtime import checkpoint
from uap_jax import config as config_lib
from uap_jax import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "quickstart.flags")

# The quickstart flagfile with everything made tiny (8x8 digits, MLPs).
TINY = [
    "--dataset=digits", "--victim_arch=mlp", "--zoo_archs=mlp", "--epochs=3",
    "--zoo_count=1", "--zoo_counts=independent_seed:2,independent_arch:2,independent_data:2",
    "--zoo_epochs=1", "--finetune_epochs=0.5", "--extract_rounds=1", "--batch_size=64",
    "--uap_method=sgd", "--uap_max_passes=2", "--uap_samples=100", "--uap_xi=0.2",
    "--fp_k=5", "--fp_v=6", "--n_views=4", "--enc_steps=40", "--split_train=0.4",
    "--split_calib=0.3",
]


def _main(args, **kw):
  return subprocess.run([sys.executable, "-m", "uap_jax.main", *args],
                        capture_output=True, text=True, cwd=REPO, **kw)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  proc = _main([f"--flagfile={QUICKSTART}", f"--workdir={workdir}", *TINY], timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def test_every_report_file_and_schema(tiny_run):
  workdir, _ = tiny_run
  report = os.path.join(workdir, "report")
  for name in ("results.json", "report.md", "roc.png", "similarity.png",
               "confidence_vs_views.png"):
    assert os.path.getsize(os.path.join(report, name)) > 0, name
  with open(os.path.join(report, "results.json")) as f:
    res = json.load(f)
  for key in ("dataset", "victim", "uap", "suspects", "auc", "tpr_at_1pct_fpr",
              "tpr_at_5pct_fpr", "seconds", "leave_kind_out", "references"):
    assert key in res, key
  assert res["dataset"] == "digits"
  assert set(res["seconds"]) >= {"victim", "zoo", "uap", "fingerprint", "encoder", "verify"}
  assert "all" in res["auc"]
  families = {s["family"] for s in res["suspects"]}
  assert families == {"piracy", "independent"}
  for s in res["suspects"]:
    assert set(s) == set(("name", "kind", "family", "arch", "test_accuracy", "agreement",
                          "similarity_mean", "p_value", "confidence", "verdict",
                          "views_for_9999"))
    assert s["verdict"] in ("pirated", "not_pirated", "inconclusive")
    assert 0.0 <= s["p_value"] <= 1.0 and abs(s["confidence"] - (1 - s["p_value"])) < 1e-9
  # The victim judged against itself is pirated with near-certainty.
  assert res["victim_self"]["confidence"] > 0.9999


def test_rerun_resumes_and_skips_finished_stages(tiny_run):
  workdir, _ = tiny_run
  before = os.path.getmtime(os.path.join(workdir, "victim.json"))
  proc = _main([f"--flagfile={QUICKSTART}", f"--workdir={workdir}", *TINY], timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stderr.count("already done") == len(config_lib.STAGES)
  assert os.path.getmtime(os.path.join(workdir, "victim.json")) == before


def test_rerun_with_changed_settings_redoes_that_stage_and_later(tiny_run, tmp_path):
  workdir, _ = tiny_run
  # A copy: the module's other tests keep the original settings.
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy, symlinks=True)
  proc = _main([f"--flagfile={QUICKSTART}", f"--workdir={copy}", *TINY, "--uap_xi=0.25"],
               timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stderr.count("already done") == config_lib.STAGES.index("uap")
  assert "settings changed since it ran (uap_xi: 0.2 -> 0.25)" in proc.stderr
  # The stages after it saved over their earlier checkpoints.
  with open(os.path.join(copy, "uap.json")) as f:
    assert json.load(f)["xi"] == 0.25
  for name in ("uap", "fingerprints", "encoder"):
    assert checkpoint.exists(os.path.join(copy, "checkpoints", name)), name


def test_stage_settings_hold_their_own_and_earlier_stages_only():
  cfg = config_lib.Config()
  zoo = cfg.stage_settings("zoo")
  assert {"seed", "victim_arch", "zoo_count", "query_budget"} <= set(zoo)
  assert not {"uap_xi", "fp_k", "enc_temperature", "test"} & set(zoo)
  assert not {"workdir", "stages", "strategy", "suspect"} & set(cfg.stage_settings("report"))
  assert set(cfg.stage_settings("report")) == set(config_lib.FIRST_STAGE)
  with pytest.raises(ValueError, match="Unknown stage"):
    cfg.stage_settings("zooo")


def test_black_box_and_checkpoint_suspects_agree(tiny_run):
  workdir, _ = tiny_run
  proc = _main([f"--flagfile={QUICKSTART}", f"--workdir={workdir}", *TINY,
                "--stages=export_queries"], timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  # Answer the exported queries with the victim itself, as an API would.
  stack = checkpoint.load_stack(os.path.join(workdir, "checkpoints", "victim"))
  with np.load(os.path.join(workdir, "queries.npz")) as q:
    from uap_jax.runtime import stack as stack_lib  # pylint: disable=g-import-not-at-top
    probs = stack_lib.predict(stack, q["queries"], output="probs")[0]
  answers = os.path.join(workdir, "victim_answers.npz")
  np.savez(answers, outputs=probs)
  verdicts = {}
  for suspect in (answers, os.path.join(workdir, "checkpoints", "victim")):
    proc = _main([f"--flagfile={QUICKSTART}", f"--workdir={workdir}", *TINY,
                  "--stages=verify", f"--suspect={suspect}"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stem = os.path.splitext(os.path.basename(suspect))[0]
    with open(os.path.join(workdir, "verdicts", f"{stem}.json")) as f:
      verdicts[stem] = json.load(f)["verdicts"][0]
  a, b = verdicts["victim_answers"], verdicts["victim"]
  assert a["verdict"] == b["verdict"] == "pirated"
  assert abs(a["similarity_mean"] - b["similarity_mean"]) < 1e-4


def test_wrong_recorded_outputs_are_refused(tiny_run, tmp_path):
  workdir, _ = tiny_run
  bad = tmp_path / "bad.npz"
  np.savez(bad, outputs=np.zeros((7, 10), np.float32))
  proc = _main([f"--flagfile={QUICKSTART}", f"--workdir={workdir}", *TINY,
                "--stages=verify", f"--suspect={bad}"], timeout=300)
  assert proc.returncode != 0
  assert "error:" in proc.stderr and "7" in proc.stderr


@pytest.mark.parametrize("flag, message", [
    ("--dataset=nope", "nope"),
    ("--victim_arch=resnet99", "Unknown architecture"),
    ("--zoo_kinds=steal", "unknown kind"),
    ("--zoo_count=-1", "zoo_count"),
    ("--prune_ratios=1.5", "prune_ratios"),
    ("--uap_p=3", "uap_p"),
    ("--uap_xi=0", "uap_xi"),
    ("--uap_delta=1.5", "uap_delta"),
    ("--stages=victim,steal", "unknown stage"),
    ("--strategy=pmap", "strategy"),
    ("--victim_frac=0.9", "victim_frac"),
])
def test_bad_flags_fail_fast_with_a_clear_message(tmp_path, flag, message):
  with pytest.raises(ValueError) as error:
    pipeline.run(config_lib.parse(
        [f"--flagfile={QUICKSTART}", f"--workdir={tmp_path}", *TINY, flag]))
  assert message.lower() in str(error.value).lower()
  assert not os.path.exists(tmp_path / "victim.json")


def test_cli_reports_a_bad_flag_in_one_line(tmp_path):
  proc = _main([f"--flagfile={QUICKSTART}", f"--workdir={tmp_path}", *TINY,
                "--victim_arch=resnet99"], timeout=120)
  assert proc.returncode != 0
  assert "error: Unknown architecture 'resnet99'" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_stage_needing_a_victim_says_so(tmp_path):
  cfg = config_lib.Config(workdir=str(tmp_path), stages=["uap"], dataset="digits")
  with pytest.raises(FileNotFoundError, match="victim"):
    pipeline.run(cfg)


def test_workdir_of_another_run_is_refused(tmp_path):
  cfg = config_lib.Config(workdir=str(tmp_path), stages=[], dataset="digits")
  pipeline.run(cfg)
  other = config_lib.Config(workdir=str(tmp_path), stages=[], dataset="mnist5k")
  with pytest.raises(ValueError, match="other settings"):
    pipeline.run(other)


@pytest.mark.parametrize("flagfile", sorted(
    f for f in os.listdir(os.path.join(REPO, "experiments")) if f.endswith(".flags")))
def test_every_experiment_flagfile_is_valid_and_documented(flagfile):
  path = os.path.join(REPO, "experiments", flagfile)
  with open(path) as f:
    assert f.readline().startswith("#"), "a flagfile opens with comments saying what it runs"
  config_lib.parse([f"--flagfile={path}"]).validate()


def test_protocol_table_reads_a_finished_run(tiny_run):
  workdir, _ = tiny_run
  spec = importlib.util.spec_from_file_location(
      "protocol_table", os.path.join(REPO, "experiments", "protocol_table.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  row = module.run_row(workdir)
  with open(os.path.join(workdir, "report", "results.json")) as f:
    res = json.load(f)
  assert row["auc_all"] == round(res["auc"]["all"], 3)
  assert row["detected"] == f"{res['detected_piracy']}/{res['num_piracy']}"
  assert row["wall_minutes"] > 0
  assert module.markdown([row]).count("\n") == 3
  with pytest.raises(FileNotFoundError, match="finish the run"):
    module.run_row(os.path.dirname(workdir))
