"""The pipeline's control flow with stub stages, and the command line end to end.

The stub-stage tests run in milliseconds: every stage is a function that
records its call, so resuming, invalidation, ``--overwrite``, ``--stages``
and interrupted stages are checked without training anything. One tiny run
of the real command line (``tiny_run``) checks the stages together.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from uap_jax.runtime import checkpoint
from uap_jax import config as config_lib
from uap_jax import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "quickstart.flags")

# The quickstart flagfile with everything made tiny (8x8 digits, MLPs).
TINY = [line.strip() for line in open(os.path.join(REPO, "experiments", "tiny.flags"))
       if line.startswith("--")]


def _main(args, **kw):
  return subprocess.run([sys.executable, "-m", "uap_jax.main", *args],
                        capture_output=True, text=True, cwd=REPO, **kw)


# --------------------------------------------------------------------------
# Control flow with stub stages.

STAGES = config_lib.STAGES


class Stubs:
  """Stub stages that record the order they ran in; one may be made to fail."""

  def __init__(self):
    self.calls = []
    self.fail = None

  def mapping(self):
    return {name: (lambda ctx, name=name: self._run(name, ctx)) for name in STAGES}

  def _run(self, name, ctx):
    if name == self.fail:
      raise RuntimeError(f"stage {name} interrupted")
    self.calls.append(name)
    return {"stage": name, "uap_xi": ctx.cfg.uap_xi}


def _stub_run(stubs, workdir, **settings):
  stubs.calls = []
  # The default 20 x 40 points exceed digits' 574 victim images, which the
  # pipeline refuses before any stage (test_bad_inputs_are_refused_...).
  settings.setdefault("fp_k", 10)
  settings.setdefault("dataset", "digits")
  cfg = config_lib.Config(workdir=str(workdir), **settings)
  return pipeline.run(cfg, stages=stubs.mapping())


def _markers(workdir):
  folder = os.path.join(workdir, "stages")
  return {f[:-len(".json")] for f in os.listdir(folder)} if os.path.isdir(folder) else set()


def test_stub_first_run_runs_every_stage_in_order_and_marks_it(tmp_path):
  stubs = Stubs()
  results = _stub_run(stubs, tmp_path)
  assert stubs.calls == list(STAGES)
  assert _markers(tmp_path) == set(STAGES)
  assert results["uap"] == {"stage": "uap", "uap_xi": 0.1}
  with open(tmp_path / "stages" / "uap.json") as f:
    marker = json.load(f)
  assert marker["summary"] == {"stage": "uap", "uap_xi": 0.1}
  assert marker["settings"]["uap_xi"] == 0.1 and "fp_k" not in marker["settings"]


def test_stub_rerun_skips_finished_stages(tmp_path):
  stubs = Stubs()
  _stub_run(stubs, tmp_path)
  results = _stub_run(stubs, tmp_path)
  assert stubs.calls == []
  assert results == {name: {"skipped": True} for name in STAGES}


@pytest.mark.parametrize("setting, value, first", [
    ("uap_xi", 0.25, "uap"),
    ("zoo_count", 3, "zoo"),
    ("n_views", 5, "verify"),
    ("enc_steps", 7, "encoder"),
])
def test_stub_changed_setting_reruns_its_stage_and_later_only(tmp_path, setting,
                                                             value, first):
  stubs = Stubs()
  _stub_run(stubs, tmp_path)
  _stub_run(stubs, tmp_path, **{setting: value})
  assert stubs.calls == list(STAGES[STAGES.index(first):])
  # The markers now hold the new value: the same settings again skip all.
  _stub_run(stubs, tmp_path, **{setting: value})
  assert stubs.calls == []


def test_stub_setting_without_a_stage_changes_nothing(tmp_path):
  stubs = Stubs()
  _stub_run(stubs, tmp_path)
  _stub_run(stubs, tmp_path, strategy="loop", share_mode="strided")
  assert stubs.calls == []


def test_stub_overwrite_reruns_every_requested_stage(tmp_path):
  stubs = Stubs()
  _stub_run(stubs, tmp_path)
  _stub_run(stubs, tmp_path, overwrite=True)
  assert stubs.calls == list(STAGES)
  _stub_run(stubs, tmp_path, overwrite=True, stages=["zoo", "uap"])
  assert stubs.calls == ["zoo", "uap"]


def test_stub_stages_flag_runs_only_those_and_clears_later_markers(tmp_path):
  stubs = Stubs()
  _stub_run(stubs, tmp_path, stages=["victim", "zoo"])
  assert stubs.calls == ["victim", "zoo"]
  assert _markers(tmp_path) == {"victim", "zoo"}
  _stub_run(stubs, tmp_path)  # the rest, resuming after zoo
  assert stubs.calls == list(STAGES[2:])
  _stub_run(stubs, tmp_path, stages=["fingerprint", "uap"], uap_xi=0.3)
  assert stubs.calls == ["uap", "fingerprint"]  # pipeline order, not flag order
  # Built on the old UAP: the later stages must run again.
  assert _markers(tmp_path) == {"victim", "zoo", "reference", "uap", "fingerprint"}
  _stub_run(stubs, tmp_path, uap_xi=0.3)
  assert stubs.calls == list(STAGES[STAGES.index("encoder"):])


def test_stub_stage_that_raises_leaves_no_marker_and_reruns(tmp_path):
  stubs = Stubs()
  stubs.fail = "fingerprint"
  with pytest.raises(RuntimeError, match="interrupted"):
    _stub_run(stubs, tmp_path)
  assert stubs.calls == ["victim", "zoo", "reference", "uap"]
  assert _markers(tmp_path) == {"victim", "zoo", "reference", "uap"}
  stubs.fail = None
  _stub_run(stubs, tmp_path)
  assert stubs.calls == list(STAGES[STAGES.index("fingerprint"):])
  # A finished stage redone alone and interrupted loses its old marker too;
  # the next run redoes it and, built on it, every later stage (whose own
  # markers and settings are unchanged).
  stubs.fail = "uap"
  with pytest.raises(RuntimeError):
    _stub_run(stubs, tmp_path, overwrite=True, stages=["uap"])
  assert _markers(tmp_path) == set(STAGES) - {"uap"}
  stubs.fail = None
  _stub_run(stubs, tmp_path)
  assert stubs.calls == list(STAGES[STAGES.index("uap"):])


def test_stub_outside_suspect_is_judged_every_time_without_a_marker(tmp_path):
  stubs = Stubs()
  _stub_run(stubs, tmp_path)
  (tmp_path / "stages" / "verify.json").unlink()
  suspect = tmp_path / "answers.npz"  # pipeline.check wants a readable suspect
  np.savez(suspect, outputs=np.zeros((4, 3), np.float32))
  for _ in range(2):
    _stub_run(stubs, tmp_path, stages=["verify"], suspect=str(suspect))
    assert stubs.calls == ["verify"]
  assert "verify" not in _markers(tmp_path)


@pytest.mark.parametrize("settings, message", [
    (dict(stages=["victim", "steal"]), "unknown stage"),
    (dict(strategy="pmap"), "Unknown model-axis strategy"),
    (dict(distributed="yes"), "--distributed must be auto, true or false"),
    (dict(share_mode="blocks"), "--share_mode must be contiguous or strided"),
    (dict(victim_arch="resnet99"), "Unknown architecture"),
    (dict(zoo_archs=["mlp", "nope"]), "Unknown architecture"),
    (dict(zoo_kinds=["steal"]), "(?i)unknown kind"),
    (dict(zoo_kinds=["adv_train"], adv_eps=0.0), "adv_eps"),
    (dict(test="bayes"), "--test must be one of"),
    (dict(uap_method="fgsm"), "uap_method"),
    (dict(fp_mode="ranks"), "fp_mode"),
    (dict(split_train=0.7, split_calib=0.3), "split_train"),
    (dict(n_views=50), "exceeds --fp_v"),
    (dict(n_views=1), "0 \\(every view\\) or 2"),
    (dict(n_views=-3), "0 \\(every view\\) or 2"),
])
def test_stub_bad_settings_are_rejected_before_any_stage(tmp_path, settings, message):
  stubs = Stubs()
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=message):
    _stub_run(stubs, workdir, **settings)
  assert stubs.calls == []
  assert not workdir.exists()  # not even config.json


def test_stub_stage_without_a_run_function_is_refused(tmp_path):
  stubs = Stubs()
  cfg = config_lib.Config(workdir=str(tmp_path / "run"), dataset="digits")
  partial = {k: v for k, v in stubs.mapping().items() if k != "report"}
  with pytest.raises(ValueError, match="report"):
    pipeline.run(cfg, stages=partial)
  assert stubs.calls == []


def test_every_config_stage_has_a_stage_module():
  from uap_jax import stages  # pylint: disable=g-import-not-at-top
  runs = stages.runs()
  assert tuple(runs) == STAGES
  assert all(callable(r) for r in runs.values())


# --------------------------------------------------------------------------
# The command line end to end, on tiny settings.


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
  assert res["victim_self"]["p_value"] < 0.01
  # ... and lies within the reference (a weak victim would not: report tests).
  assert res["victim_self"]["outside_reference"] is None
  assert 0.0 < res["victim_self"]["point_accuracy"] <= 1.0
  # The label judge judged the same suspects, and every held-out independent.
  labels = res["labels"]
  assert labels["num_piracy"] == res["num_piracy"] and labels["false_accusations"]["held_out"] > 0
  assert labels["victim_self_p_value"] < 0.01
  # Every untrained independent, not only the evaluated ones, against the pirates.
  assert set(res["auc_vs_reference"]) == set(res["auc"])
  assert 0.0 <= res["auc_vs_reference"]["all"] <= 1.0
  with open(os.path.join(report, "report.md")) as f:
    text = f.read()
  assert "## Judged on top-1 labels (the label judge)" in text
  assert "AUC against every untrained independent" in text


def _latest(workdir, name):
  """(step, arrays) of the newest checkpoint ``checkpoints/NAME``."""
  directory = os.path.join(workdir, "checkpoints", name)
  return checkpoint.latest_step(directory), checkpoint.load_arrays(directory)[0]


def test_rerun_with_changed_settings_redoes_that_stage_and_later(tiny_run, tmp_path):
  workdir, _ = tiny_run
  # A copy: the module's other tests keep the original settings.
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy, symlinks=True)
  proc = _main([f"--flagfile={QUICKSTART}", f"--workdir={copy}", *TINY, "--uap_xi=0.25"],
               timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  # The real CLI resumes: the stages before uap are skipped, not redone.
  assert proc.stderr.count("already done") == config_lib.STAGES.index("uap")
  assert "settings changed since it ran (uap_xi: 0.2 -> 0.25)" in proc.stderr
  for name in ("victim", "zoo"):
    assert (os.path.getmtime(os.path.join(copy, f"{name}.json"))
            == os.path.getmtime(os.path.join(workdir, f"{name}.json"))), name
  assert (checkpoint.latest_step(os.path.join(copy, "checkpoints", "victim"))
          == checkpoint.latest_step(os.path.join(workdir, "checkpoints", "victim")))
  with open(os.path.join(copy, "uap.json")) as f:
    assert json.load(f)["xi"] == 0.25
  # uap and the stages after it saved a new checkpoint step, over the old
  # one, with other content.
  for name, key in (("uap", "uaps"), ("fingerprints", "fingerprints"),
                    ("similarities", "similarities")):
    old_step, old = _latest(workdir, name)
    new_step, new = _latest(copy, name)
    assert new_step > old_step, name
    chex.assert_equal_shape([old[key], new[key]])
    assert not np.allclose(old[key], new[key]), name
  old_uap, new_uap = _latest(workdir, "uap")[1]["uaps"], _latest(copy, "uap")[1]["uaps"]
  assert np.abs(old_uap).max() <= 0.2 + 1e-6 and np.abs(new_uap).max() <= 0.25 + 1e-6


# --------------------------------------------------------------------------
# kill -9 in the zoo, fingerprint and verify stages, then rerun: the same
# results, bit for bit, as the uninterrupted tiny_run.


def _without_timings(obj):
  """``obj`` (parsed JSON) without the keys that hold wall-clock figures, or
  who trained a stack in this run (a resumed run reuses some)."""
  if isinstance(obj, dict):
    # seconds, train_seconds, examples_per_second; trained_by_process; the
    # commitment's creation time
    return {k: _without_timings(v) for k, v in obj.items()
            if "second" not in k and k not in ("trained_by_process", "created")}
  if isinstance(obj, list):
    return [_without_timings(v) for v in obj]
  return obj


def _saved_results(workdir):
  """Every result a run saved, as ``{name: array or JSON}``, via its Artifacts.

  The arrays (victim, each zoo stack's params and statistics, the UAPs,
  fingerprints and their points, the encoder, the similarities) and the
  JSON results (zoo table, split, verify.json, results.json) with their
  timings left out.
  """
  from uap_jax.runtime.artifacts import Artifacts  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime.workdir import Workdir  # pylint: disable=g-import-not-at-top
  artifacts = Artifacts(Workdir(workdir, writer=False))
  out = {}

  def add(prefix, tree):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      out[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)

  add("victim", (artifacts.victim.params, artifacts.victim.rest))
  for stack in artifacts.zoo:
    add(f"zoo:{stack.meta[0]['checkpoint']}", (stack.params, stack.rest))
  out["uaps"] = artifacts.uaps
  fingerprints = artifacts.fingerprints
  out["fingerprints"], out["points"] = fingerprints.fps, fingerprints.points
  encoders = artifacts.encoder()
  add("encoder", [e.state for e in encoders.encoders])
  out["encoder_history"] = np.stack([e.history for e in encoders.encoders])
  out["similarities"] = artifacts.similarities()
  out["encoder_config"] = encoders.config
  out["encoder_groups"] = encoders.groups
  out["split.json"] = artifacts.split()
  out["verify.json"] = _without_timings(artifacts.verification())
  for name in ("zoo.json", os.path.join("report", "results.json")):
    out[name] = _without_timings(artifacts.workdir.read_json(name))
  return out


def _assert_bit_identical(got, want):
  assert sorted(got) == sorted(want)
  for name, value in want.items():
    if isinstance(value, np.ndarray):
      assert (got[name].dtype, got[name].shape) == (value.dtype, value.shape), name
      assert got[name].tobytes() == value.tobytes(), f"{name} differs"
    else:
      assert got[name] == value, f"{name} differs"


def _markers_now(workdir):
  folder = os.path.join(workdir, "stages")
  return set(f[:-len(".json")] for f in os.listdir(folder)
             if f.endswith(".json")) if os.path.isdir(folder) else set()


def _saved_zoo_stacks(workdir):
  """Zoo stacks with a finished checkpoint step (orbax renames a step's
  temporary folder to its number only once the step is whole)."""
  folder = os.path.join(workdir, "checkpoints", "zoo")
  if not os.path.isdir(folder):
    return 0
  return sum(any(step.isdigit() for step in os.listdir(os.path.join(folder, stack)))
             for stack in os.listdir(folder))


def _kill_when(workdir, log_path, ready, what, timeout=300):
  """Runs the tiny CLI on ``workdir``; SIGKILLs it as soon as ``ready()``.

  The work directory is polled every 5 ms: the kill lands a few ms after the
  condition holds, well inside stages that take seconds.

  Returns:
    The stage markers left at the kill.
  """
  with open(log_path, "w") as log:
    proc = subprocess.Popen(
        [sys.executable, "-m", "uap_jax.main", f"--flagfile={QUICKSTART}",
         f"--workdir={workdir}", *TINY], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + timeout
    try:
      while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
          with open(log_path) as f:
            pytest.fail(f"the run ended (rc {proc.poll()}) before {what}:\n"
                        f"{f.read()[-3000:]}")
        time.sleep(0.005)
      os.kill(proc.pid, signal.SIGKILL)
    finally:
      proc.kill()  # no-op once dead; never leaves a run behind on a failure
      proc.wait()
  assert proc.returncode == -signal.SIGKILL
  return _markers_now(workdir)


def test_kill_9_in_zoo_fingerprint_and_verify_then_rerun_is_bit_identical(tiny_run, tmp_path):
  """A run SIGKILLed in the zoo, the fingerprint and the verify stage, rerun
  with the same flags each time, ends bit-identical to an uninterrupted run.

  The chain: kill in the zoo (after 2 of its stacks were saved, so the rerun
  reuses some stacks and trains the rest), rerun and kill in fingerprint
  (just after the uap stage's marker appears), rerun and kill in verify (just
  after the encoder's marker), rerun to the end. Each kill counts: a kill
  that landed only after the stage finished would leave that stage's marker
  (written last, after its artefacts), and the test asserts it is absent
  while the previous stage's is present, so a late kill fails the test
  instead of passing silently. Each rerun takes over the lock the killed
  run left.

  It also shows determinism: the chain starts in an empty work directory,
  as ``tiny_run`` (the reference) did, so two fresh runs with the same
  flags (one of them interrupted three times) give the same bits.
  """
  reference, _ = tiny_run
  workdir = str(tmp_path / "run")
  with open(os.path.join(reference, "zoo.json")) as f:
    planned_stacks = len(json.load(f)["stacks"])
  marker = lambda stage: os.path.exists(os.path.join(workdir, "stages", f"{stage}.json"))

  left = _kill_when(workdir, tmp_path / "zoo.log",
                    lambda: _saved_zoo_stacks(workdir) >= 2, "2 zoo stacks were saved")
  assert left == {"victim"}, left  # killed in the zoo stage
  assert 2 <= _saved_zoo_stacks(workdir) < planned_stacks

  left = _kill_when(workdir, tmp_path / "fingerprint.log", lambda: marker("uap"),
                    "the uap stage finished")
  assert left == {"victim", "zoo", "reference", "uap"}, left  # killed in the fingerprint stage
  with open(tmp_path / "fingerprint.log") as f:
    log = f.read()
  assert "taking over the lock left by pid" in log
  assert "Zoo stack extract_soft__mlp: already trained, reusing it." in log

  left = _kill_when(workdir, tmp_path / "verify.log", lambda: marker("encoder"),
                    "the encoder stage finished")
  # Killed in the verify stage.
  assert left == {"victim", "zoo", "reference", "uap", "fingerprint", "encoder"}, left

  proc = _main([f"--flagfile={QUICKSTART}", f"--workdir={workdir}", *TINY], timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _markers_now(workdir) == set(STAGES)
  _assert_bit_identical(_saved_results(workdir), _saved_results(reference))


def test_stage_settings_hold_their_own_and_earlier_stages_only():
  cfg = config_lib.Config()
  zoo = cfg.stage_settings("zoo")
  assert {"seed", "victim_arch", "zoo_count", "query_budget"} <= set(zoo)
  assert not {"uap_xi", "fp_k", "enc_temperature", "test"} & set(zoo)
  assert not {"workdir", "stages", "strategy", "suspect"} & set(cfg.stage_settings("report"))
  assert set(cfg.stage_settings("report")) == set(config_lib.FIRST_STAGE)
  with pytest.raises(ValueError, match="Unknown stage"):
    cfg.stage_settings("zooo")


def _run_in_process(workdir, *flags):
  return pipeline.run(config_lib.parse(
      [f"--flagfile={QUICKSTART}", f"--workdir={workdir}", *TINY, *flags]))


def _victim_answers(workdir, output, *flags):
  """The victim's own ``output`` on the run's exported queries, as an API gives them."""
  _run_in_process(workdir, "--stages=export_queries", *flags)
  stack = checkpoint.load_stack(os.path.join(workdir, "checkpoints", "victim"))
  with np.load(os.path.join(workdir, "queries.npz")) as q:
    from uap_jax.runtime import stack as stack_lib  # pylint: disable=g-import-not-at-top
    return stack_lib.predict(stack, q["queries"], output=output)[0]


def test_black_box_and_checkpoint_suspects_agree(tiny_run):
  workdir, _ = tiny_run
  probs = _victim_answers(workdir, "probs")
  answers = os.path.join(workdir, "victim_answers.npz")
  np.savez(answers, outputs=probs)
  verdicts = {}
  for suspect in (answers, os.path.join(workdir, "checkpoints", "victim")):
    _run_in_process(workdir, "--stages=verify", f"--suspect={suspect}")
    stem = os.path.splitext(os.path.basename(suspect))[0]
    with open(os.path.join(workdir, "verdicts", f"{stem}.json")) as f:
      verdicts[stem] = json.load(f)["verdicts"][0]
  a, b = verdicts["victim_answers"], verdicts["victim"]
  # The tiny run's few reference models cannot give the victim p < alpha
  # under the default model-level test; both paths must agree all the same.
  assert a["verdict"] == b["verdict"] != "not_pirated"
  assert a["p_value"] < 0.01 and abs(a["p_value"] - b["p_value"]) < 1e-3
  assert abs(a["similarity_mean"] - b["similarity_mean"]) < 1e-4
  assert a["statement"].startswith(a["verdict"]) and "reference models" in a["statement"]
  assert a["answer_check"]["valid"] and a["answer_check"]["controls"]
  # The same answers one row off (a recording slip) are not judged.
  shifted = os.path.join(workdir, "shifted_answers.npz")
  np.savez(shifted, outputs=np.roll(probs, 1, axis=0))
  _run_in_process(workdir, "--stages=verify", f"--suspect={shifted}")
  with open(os.path.join(workdir, "verdicts", "shifted_answers.json")) as f:
    v = json.load(f)["verdicts"][0]
  assert v["verdict"] == "invalid_answers" and v["p_value"] is None
  assert "repeated queries answered differently" in v["reason"]


def _judge_answers(workdir, answers, *flags):
  """Each ``{stem: outputs}`` judged as a recorded-answers suspect: its verdict."""
  verdicts = {}
  for stem, outputs in answers.items():
    path = os.path.join(workdir, f"{stem}.npz")
    np.savez(path, outputs=outputs)
    _run_in_process(workdir, "--stages=verify", f"--suspect={path}", *flags)
    with open(os.path.join(workdir, "verdicts", f"{stem}.json")) as f:
      verdicts[stem] = json.load(f)["verdicts"][0]
  return verdicts


def _sharpened(logits, temperature):
  sharp = np.exp(logits / temperature - (logits / temperature).max(-1, keepdims=True))
  return sharp / sharp.sum(-1, keepdims=True)


def test_labels_go_to_the_label_judge_and_a_sharper_softmax_is_re_tempered(tiny_run):
  workdir, _ = tiny_run
  logits = _victim_answers(workdir, "logits")
  with open(os.path.join(workdir, "verify.json")) as f:
    verify = json.load(f)
  with open(os.path.join(workdir, "encoder.json")) as f:
    assert json.load(f)["config"]["input_confidence"]["kind"] == "probs"
  v = _judge_answers(workdir, {"victim_labels": logits.argmax(-1),
                               "victim_sharp": _sharpened(logits, 0.5)})
  # The victim's own top classes: exactly the victim judged on labels.
  on_labels = verify["labels"]["victim_self"]
  assert v["victim_labels"]["judged_on"] == "labels"
  assert v["victim_labels"]["p_value"] == pytest.approx(on_labels["p_value"], rel=1e-4,
                                                        abs=1e-12)
  # The tiny run's encoder re-tempers every model to the victim's confidence
  # (--enc_confidence=auto, the bank not training it): a sharper softmax of
  # the victim is the victim, judged on its outputs with no confidence rule.
  sharp, itself = v["victim_sharp"], verify["victim_self"]
  assert sharp["judged_on"] == "outputs" and sharp["outside_reference"] is False
  assert sharp["similarity_mean"] == pytest.approx(itself["similarity_mean"], abs=2e-3)
  assert sharp["verdict"] == itself["verdict"]


def test_an_encoder_of_raw_answers_sends_a_sharper_softmax_to_the_label_judge(
    tiny_run, tmp_path):
  workdir = str(tmp_path / "raw")
  shutil.copytree(tiny_run[0], workdir, symlinks=True)
  raw = "--enc_confidence=raw"
  _run_in_process(workdir, "--stages=encoder,verify", "--overwrite", raw)
  with open(os.path.join(workdir, "verify.json")) as f:
    on_labels = json.load(f)["labels"]["victim_self"]
  # (Another name than the copied run's own verdicts/victim_sharp.json.)
  v = _judge_answers(workdir, {"victim_sharpest": _sharpened(
      _victim_answers(workdir, "logits", raw), 0.1)}, raw)["victim_sharpest"]
  assert v["judged_on"] == "labels"
  assert v["p_value"] == pytest.approx(on_labels["p_value"], rel=1e-4, abs=1e-12)
  assert v["statement"].startswith("Judged on top-1 labels: the answers' mean top-1 probability")
  assert v["outside_reference"] is False and v["scores_verdict"].startswith("inconclusive")


def test_wrong_recorded_outputs_are_refused(tiny_run, tmp_path):
  workdir, _ = tiny_run
  bad = tmp_path / "bad.npz"
  np.savez(bad, outputs=np.zeros((7, 10), np.float32))
  with pytest.raises(ValueError, match="7"):
    _run_in_process(workdir, "--stages=verify", f"--suspect={bad}")


@pytest.mark.parametrize("flag, message", [
    ("--dataset=nope", "nope"),
    ("--victim_arch=resnet99", "Unknown architecture"),
    ("--zoo_kinds=steal", "unknown 'steal'"),
    ("--zoo_count=-1", "zoo_count"),
    ("--prune_ratios=1.5", "prune_ratios"),
    ("--uap_p=3", "uap_p"),
    ("--uap_xi=0", "uap_xi"),
    ("--uap_delta=1.5", "uap_delta"),
    ("--uap_candidates=1", "uap_candidates"),
    ("--stages=victim,steal", "unknown 'steal'"),
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
  work = tmp_path / "run"
  cfg = config_lib.Config(workdir=str(work), stages=["uap"], dataset="digits")
  with pytest.raises(ValueError, match=r"uap needs what stage\(s\) victim make.*"
                     r"--stages=victim,uap"):
    pipeline.run(cfg)
  assert not work.exists()  # refused before anything was written


def test_stage_inputs_from_finished_or_requested_stages(tmp_path):
  stubs = Stubs()
  with pytest.raises(ValueError, match=r"fingerprint needs what stage\(s\) victim, zoo, reference, uap"):
    _stub_run(stubs, tmp_path, stages=["fingerprint", "report"])
  assert not stubs.calls
  _stub_run(stubs, tmp_path, stages=["victim", "zoo", "reference", "uap"])
  stubs.calls.clear()
  _stub_run(stubs, tmp_path, stages=["fingerprint"])  # its inputs are done
  assert stubs.calls == ["fingerprint"]


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
  pipeline.check(config_lib.parse([f"--flagfile={path}"]))


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


# --------------------------------------------------------------------------
# The work-directory lock, markers over whole artefacts, every check before
# anything is written (stub stages, digits: a few seconds in all).


def _snapshot(workdir):
  """Every file under ``workdir`` with its bytes (for "left untouched")."""
  out = {}
  for folder, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


def test_lock_refuses_a_second_run_at_once_and_writes_nothing(tmp_path):
  from uap_jax.runtime.workdir import Workdir, WorkdirInUse  # pylint: disable=g-import-not-at-top
  stubs = Stubs()
  _stub_run(stubs, tmp_path)
  before = _snapshot(tmp_path)
  with Workdir(str(tmp_path), writer=True).lock():
    with pytest.raises(WorkdirInUse, match=f"is in use by pid {os.getpid()} on host "):
      _stub_run(stubs, tmp_path, overwrite=True)
  assert stubs.calls == []
  after = _snapshot(tmp_path)
  assert after == before  # config.json and every marker as they were


def test_lock_is_released_after_a_run_and_after_a_failing_run(tmp_path):
  stubs = Stubs()
  _stub_run(stubs, tmp_path)
  assert not (tmp_path / "lock").exists()
  stubs.fail = "uap"
  with pytest.raises(RuntimeError):
    _stub_run(stubs, tmp_path, overwrite=True)
  assert not (tmp_path / "lock").exists()
  stubs.fail = None
  _stub_run(stubs, tmp_path)
  assert stubs.calls == list(STAGES[STAGES.index("uap"):])


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  with open(tmp_path / "lock", "w") as f:
    json.dump({"host": "here", "pid": dead.pid, "started": "earlier"}, f)
  stubs = Stubs()
  _stub_run(stubs, tmp_path)
  assert stubs.calls == list(STAGES)
  assert not (tmp_path / "lock").exists()


@pytest.mark.parametrize("settings, message", [
    (dict(fp_k=100), "--fp_k * --fp_v = 4000 points exceed the victim's 574 training "
                     "images (--victim_frac=0.4 of 1438); lower --fp_k or --fp_v"),
    (dict(zoo_count=0, zoo_counts=[]), "The zoo would hold 0 independent model(s) "
                                       "(independent_seed: 0, independent_arch: 0, "
                                       "independent_data: 0), but the encoder/verify "
                                       "split needs >= 3"),
    (dict(zoo_kinds=["prune"]), "--zoo_kinds has no independent kind"),
    (dict(dataset="digitz"), "digitz"),
])
def test_bad_inputs_are_refused_before_anything_is_written(tmp_path, settings, message):
  stubs = Stubs()
  fresh = tmp_path / "fresh"
  with pytest.raises(ValueError) as error:
    _stub_run(stubs, fresh, **settings)
  assert message in str(error.value)
  assert not fresh.exists()  # not even config.json or the lock
  # Over a finished run, even with --overwrite: no marker removed, no file
  # rewritten.
  done = tmp_path / "done"
  _stub_run(stubs, done)
  before = _snapshot(done)
  with pytest.raises(ValueError) as error:
    _stub_run(stubs, done, overwrite=True, **settings)
  assert message in str(error.value)
  assert stubs.calls == [] and _snapshot(done) == before


def test_a_dataset_typo_does_not_lock_the_user_out(tmp_path):
  stubs = Stubs()
  with pytest.raises(ValueError):
    _stub_run(stubs, tmp_path, dataset="digitz")
  _stub_run(stubs, tmp_path)  # the corrected command is not "other settings"
  assert stubs.calls == list(STAGES)


def test_split_count_check_only_when_the_split_is_made(tmp_path):
  stubs = Stubs()
  _stub_run(stubs, tmp_path, zoo_count=0, zoo_counts=[], stages=["victim", "zoo", "uap"])
  assert stubs.calls == ["victim", "zoo", "uap"]


class ArtifactStubs(Stubs):
  """Stubs that save what the real victim, zoo and uap stages save (tiny)."""

  def _run(self, name, ctx):
    summary = super()._run(name, ctx)
    wd, tree = ctx.workdir, {"a": np.arange(3, dtype=np.float32)}
    if name == "victim":
      wd.save_arrays("victim", tree, {"models": []})
      wd.write_json("victim.json", {})
    elif name == "zoo":
      wd.save_arrays("zoo/x__mlp", tree, {"models": []})
      wd.write_json("zoo.json", {"stacks": [{"checkpoint": "zoo/x__mlp"}]})
    elif name == "uap":
      wd.save_arrays("uap", tree, {})
      wd.write_json("uap.json", {})
    return summary


def _artifact_run(stubs, workdir):
  stubs.calls = []
  cfg = config_lib.Config(workdir=str(workdir), dataset="digits",
                          stages=["victim", "zoo", "uap"])
  return pipeline.run(cfg, stages=stubs.mapping(), verify_artifacts=True)


def test_marker_over_missing_or_damaged_artefacts_reruns_that_stage(tmp_path):
  stubs = ArtifactStubs()
  _artifact_run(stubs, tmp_path)
  assert stubs.calls == ["victim", "zoo", "uap"]
  _artifact_run(stubs, tmp_path)
  assert stubs.calls == []
  with open(tmp_path / "uap.json", "w") as f:
    f.write("{")  # cut short
  _artifact_run(stubs, tmp_path)
  assert stubs.calls == ["uap"]
  # The issue's case: the zoo's stack deleted (as its message advised) or
  # holding only orbax's commit marker; the zoo and what follows rerun.
  shutil.rmtree(tmp_path / "checkpoints" / "zoo" / "x__mlp")
  _artifact_run(stubs, tmp_path)
  assert stubs.calls == ["zoo", "uap"]
  step = tmp_path / "checkpoints" / "zoo" / "x__mlp" / "0"
  for item in os.listdir(step):
    if item != "commit_success.txt":
      shutil.rmtree(step / item) if (step / item).is_dir() else (step / item).unlink()
  _artifact_run(stubs, tmp_path)
  assert stubs.calls == ["zoo", "uap"]
  (tmp_path / "stages" / "victim.json").write_text("{")  # a damaged marker
  _artifact_run(stubs, tmp_path)
  assert stubs.calls == ["victim", "zoo", "uap"]


def test_python_api_gives_the_command_lines_verdicts(tiny_run, tmp_path):
  import uap_jax  # pylint: disable=g-import-not-at-top
  workdir, _ = tiny_run
  verifier = uap_jax.Verifier.from_workdir(workdir)
  queries = verifier.export_queries(str(tmp_path / "queries.npz"))
  stack = checkpoint.load_stack(os.path.join(workdir, "checkpoints", "victim"))
  with np.load(queries) as q:
    from uap_jax.runtime import stack as stack_lib  # pylint: disable=g-import-not-at-top
    probs = stack_lib.predict(stack, q["queries"], output="probs")[0]
  answers = str(tmp_path / "api_victim.npz")
  np.savez(answers, outputs=probs)
  api, = verifier.verify_outputs(answers)
  _run_in_process(workdir, "--stages=verify", f"--suspect={answers}")
  with open(os.path.join(workdir, "verdicts", "api_victim.json")) as f:
    cli, = json.load(f)["verdicts"]
  assert api["verdict"] == cli["verdict"] and api["p_value"] == cli["p_value"]
  # A white-box suspect as a bare function: the victim's own forward pass.
  params = jax.tree.map(lambda v: v[0], stack.params)
  rest = jax.tree.map(lambda v: v[0], stack.rest)
  white = verifier.verify(stack.logits_fn, (params, rest), name="victim_fn")
  assert white["verdict"] == cli["verdict"]
  assert abs(white["similarity_mean"] - cli["similarity_mean"]) < 1e-4
  with pytest.raises(ValueError, match="probabilities .* not logits"):
    verifier.verify(lambda v, x: jax.nn.softmax(stack.logits_fn(v, x)), (params, rest))
  with pytest.raises(ValueError, match="must return"):
    verifier.verify(lambda v, x: stack.logits_fn(v, x)[:, :2], (params, rest))
  with pytest.raises(ValueError, match="Unknown setting"):
    uap_jax.Verifier.from_workdir(workdir, alpah=0.1)
  with pytest.raises(FileNotFoundError, match="has not finished"):
    uap_jax.Verifier.from_workdir(str(tmp_path / "empty"))


def _changes_since_a_marker_without(tmp_path, stage, field):
  """A stage marker recorded before ``field`` existed, and what a run now
  with the default settings (or ``{field: value}``) counts as changed."""
  from uap_jax.runtime.workdir import Workdir  # pylint: disable=g-import-not-at-top
  workdir = Workdir(str(tmp_path))
  settings = pipeline._as_json(config_lib.Config().stage_settings(stage))  # pylint: disable=protected-access
  recorded = {k: v for k, v in settings.items() if k != field}
  workdir.write_json(os.path.join("stages", f"{stage}.json"), {"settings": recorded})
  return lambda **now: pipeline._changed_settings(workdir, stage, {**settings, **now})  # pylint: disable=protected-access


def test_a_setting_newer_than_the_stage_marker_counts_only_off_its_default(tmp_path):
  changed = _changes_since_a_marker_without(tmp_path, "reference", "reference_models")
  assert changed() == {}
  assert changed(reference_models="py:m:f") == {"reference_models": ("", "py:m:f")}
  assert changed(seed=7)["seed"] == (0, 7)


def test_an_encoder_from_before_enc_confidence_counts_as_raw(tmp_path):
  changed = _changes_since_a_marker_without(tmp_path, "encoder", "enc_confidence")
  # Its default, auto, re-tempers where such an encoder did not: a change.
  assert changed() == {"enc_confidence": ("raw", "auto")}
  assert changed(enc_confidence="raw") == {}


def test_auto_score_is_the_encoder_for_a_trained_victim_and_follow_for_a_given_one():
  assert config_lib.Config().verify_score == "encoder"
  assert config_lib.Config(victim="py:m:f").verify_score == "uap_follow"
  assert config_lib.Config(victim="py:m:f", score="encoder").verify_score == "encoder"
  with pytest.raises(ValueError, match="score"):
    config_lib.Config(score="bogus").validate()
  with pytest.raises(ValueError, match="needs a UAP"):
    config_lib.Config(victim="py:m:f", num_uaps=0).validate()
  config_lib.Config(num_uaps=0).validate()  # the encoder takes clean-only fingerprints


def test_cross_fitted_encoders_run_end_to_end_and_score_bank_models_unseen(tiny_run, tmp_path):
  workdir, _ = tiny_run
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy, symlinks=True)
  proc = _main([f"--flagfile={QUICKSTART}", f"--workdir={copy}", *TINY, "--enc_crossfit=arch",
                "--stages=encoder,verify"], timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "settings changed since it ran (enc_crossfit: auto -> arch)" in proc.stderr
  with open(os.path.join(copy, "encoder.json")) as f:
    described = json.load(f)["crossfit"]
  # The tiny bank has one architecture (MLP): it is cut by recipe instead.
  assert (described["mode"], described["by"], described["encoders"]) == ("arch", "recipe", 2)
  from uap_jax.runtime.artifacts import Artifacts  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime.workdir import Workdir  # pylint: disable=g-import-not-at-top
  from uap_jax.verify import similarity  # pylint: disable=g-import-not-at-top
  artifacts = Artifacts(Workdir(copy, writer=False))
  encoders, fp = artifacts.encoder(), artifacts.fingerprints
  sims = artifacts.similarities()
  for encoder, group in zip(encoders.encoders, encoders.groups):
    np.testing.assert_allclose(
        sims[group], similarity.similarities(encoder, fp.fps[group], fp.fps[fp.victim_index]),
        atol=1e-5)
  with open(os.path.join(copy, "verify.json")) as f:
    held = json.load(f)["false_accusations"]["held_out"]
  assert held >= 8  # the bank's 8 models judged twice, and the zoo's independents


def test_api_evasion_table_reads_a_finished_run(tiny_run, tmp_path):
  workdir, _ = tiny_run
  spec = importlib.util.spec_from_file_location(
      "api_evasion", os.path.join(REPO, "experiments", "api_evasion.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  out = str(tmp_path / "evasion")
  module.main([f"--workdir={workdir}", "--transforms=none,topk:1,labels", f"--out={out}"])
  with open(out + ".json") as f:
    rows = json.load(f)
  assert [(r["transform"], r["score"]) for r in rows] == [
      ("none", "encoder"), ("none", "uap_follow"), ("topk:1", "encoder"),
      ("topk:1", "uap_follow"), ("labels", "encoder"), ("labels", "uap_follow")]
  # Top-1 answers and labels are the same one-hot rows: uap_follow reads top-1 only.
  same = {r["transform"]: r for r in rows if r["score"] == "uap_follow"}
  assert same["topk:1"]["detected"] == same["labels"]["detected"] == same["none"]["detected"]
  # The encoder hands both to the label judge, which judges them alike.
  learned = {r["transform"]: r for r in rows if r["score"] == "encoder"}
  suspects = learned["none"]["num_piracy"] + learned["none"]["num_independents"]
  for spec in ("topk:1", "labels"):
    assert learned[spec]["judged_on_labels"] == suspects
  assert ({k: learned["topk:1"][k] for k in ("detected", "accused", "auc")}
          == {k: learned["labels"][k] for k in ("detected", "accused", "auc")})
  with open(out + ".md") as f:
    assert "| labels | encoder |" in f.read()


def _experiment(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(REPO, "experiments", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_seed_table_sums_the_runs_and_the_label_judge(tiny_run, tmp_path):
  workdir, _ = tiny_run
  out = str(tmp_path / "seeds")
  _experiment("seed_table").main([workdir, workdir, "--name=tiny", f"--out={out}"])
  with open(out + ".json") as f:
    table = json.load(f)
  with open(os.path.join(workdir, "verify.json")) as f:
    verification = json.load(f)
  row, held = table["runs"][0], verification["false_accusations"]
  assert row["detected"] == verification["protocols"]["random"]["detected_piracy"]
  assert row["victim_self_p"] == verification["victim_self"]["p_value"]
  assert row["auc_vs_reference"] == verification["protocols"]["random"][
      "auc_vs_reference"]["all"]
  assert row["labels_detected"] == verification["labels"]["protocols"]["random"][
      "detected_piracy"]
  assert table["total"]["held_out_accused"] == f"{2 * held['accused']}/{2 * held['held_out']}"
  with open(out + ".md") as f:
    assert "label judge: detected / held-out accused" in f.read()


def test_adaptive_table_has_a_row_per_piracy_kind(tiny_run, tmp_path):
  workdir, _ = tiny_run
  out = str(tmp_path / "adaptive")
  _experiment("adaptive_table").main([f"--workdir={workdir}", f"--out={out}"])
  with open(out + ".json") as f:
    result = json.load(f)
  with open(os.path.join(workdir, "zoo.json")) as f:
    zoo = json.load(f)["models"]
  piracy = {m["kind"] for m in zoo if m["family"] == "piracy"}
  assert {r["kind"] for r in result["rows"]} == piracy
  for r in result["rows"]:
    detected, evaluated = r["default_detected"]
    assert 0 <= detected <= evaluated <= r["models"]
  assert os.path.getsize(out + ".png") > 0


def test_false_claim_crafts_are_refused_by_the_commitment(tiny_run, tmp_path):
  workdir, _ = tiny_run
  out = str(tmp_path / "claim")
  _experiment("false_claim").main([f"--workdir={workdir}", "--max_targets=1", f"--out={out}"])
  with open(out + ".json") as f:
    rows = json.load(f)
  assert [r["attack"] for r in rows] == ["committed", "joint_uap", "cherry_points", "both"]
  assert [r["guard"] for r in rows] == ["judged", "refused", "refused", "refused"]
  # The committed fingerprint is the seed's draw; a crafted one is not.
  assert [r["rederivation"] for r in rows] == ["matches", "differs", "differs", "differs"]
  # The joint UAP is tuned to the target: it fools it at least as the victim's does.
  assert rows[1]["fooling_target"] >= rows[0]["fooling_target"]


def test_verdicts_cite_the_commitment_and_a_changed_fingerprint_is_refused(tiny_run, tmp_path):
  workdir, _ = tiny_run
  with open(os.path.join(workdir, "commitment.json")) as f:
    record = json.load(f)
  with open(os.path.join(workdir, "verify.json")) as f:
    assert json.load(f)["commitment"] == {"sha256": record["sha256"],
                                          "created": record["created"]}
  with open(os.path.join(workdir, "queries.json")) as f:
    assert json.load(f)["commitment_sha256"] == record["sha256"]
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy, symlinks=True)
  with open(os.path.join(copy, "commitment.json"), "w") as f:
    json.dump(dict(record, sha256="0" * 64), f)
  proc = _main([f"--flagfile={QUICKSTART}", f"--workdir={copy}", *TINY, "--stages=verify",
                "--overwrite"], timeout=300)
  assert proc.returncode != 0
  assert "no longer matches the commitment made at" in proc.stderr


@pytest.mark.parametrize("method, candidates", [("pipelined", 3),
                                                ("sgd", None)])
def test_uap_stage_gives_deepfool_its_candidate_classes(monkeypatch, method,
                                                        candidates):
  # --uap_candidates reaches DeepFool-UAP and is not passed to SGD-UAP, which
  # has no such option.
  import types   # pylint: disable=g-import-not-at-top
  from uap_jax import attacks   # pylint: disable=g-import-not-at-top
  from uap_jax.stages import uap as uap_stage   # pylint: disable=g-import-not-at-top
  seen = {}
  monkeypatch.setattr(attacks, "compute_victim_uap",
                      lambda *args, **kwargs: seen.update(kwargs))
  cfg = config_lib.Config(uap_method=method, uap_candidates=3)
  images = np.zeros((8, 4, 4, 1), np.uint8)
  victim = types.SimpleNamespace(variables=np.zeros((1, 2)),
                                 logits_fn=lambda v, x: x)
  ctx = types.SimpleNamespace(
      cfg=cfg, data=types.SimpleNamespace(x_train=images, x_test=images),
      artifacts=types.SimpleNamespace(victim=victim),
      parts={"victim": np.arange(8)})
  uap_stage.victim_uaps(ctx)
  assert seen["algorithm"] == method
  assert seen.get("num_candidates") == candidates
