"""Recorded answers of black-box suspects: validated as what they claim,
unreadable files refused with one message, verdict files that cannot collide.

Tiny arrays only (no model): the exported queries of random points.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from uap_jax.fingerprint import blackbox
from uap_jax.runtime.artifacts import Artifacts
from uap_jax.runtime.workdir import Workdir
from uap_jax.stages import verify as verify_stage

K, V, U, C = 2, 3, 1, 4
Q = (1 + U) * V * K


@pytest.fixture(name="manifest")
def _manifest():
  rng = np.random.default_rng(0)
  x_points = rng.uniform(0, 1, (K, V, 3, 3, 1)).astype(np.float32)
  uaps = rng.uniform(-0.1, 0.1, (U, 3, 3, 1)).astype(np.float32)
  # No control queries: these tests are about reading a file; the controls
  # have their own (tests/test_controls.py).
  return blackbox.make_queries(x_points, uaps, num_classes=C, num_repeats=0)[1]


def _probs(seed=0):
  logits = np.random.default_rng(seed).normal(size=(Q, C)).astype(np.float32)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return logits, e / e.sum(-1, keepdims=True)


def _save(tmp_path, name="answers.npz", **arrays):
  path = str(tmp_path / name)
  np.savez(path, **arrays)
  return path


# ------------------------------------------------- what the answers claim


def test_probabilities_logits_and_labels_are_read_as_what_they_are(
    tmp_path, manifest):
  logits, probs = _probs()
  cases = [
      (dict(outputs=probs), "probs", False),
      (dict(outputs=logits), "logits", False),
      (dict(outputs=probs.argmax(-1)), "labels", False),
      (dict(outputs=np.eye(C, dtype=np.float32)[probs.argmax(-1)]), "labels",
       False),
      (dict(outputs=probs, kind="probs"), "probs", True),
      # Non-negative logits are fine once the file says so.
      (dict(outputs=np.abs(logits), kind="logits"), "logits", True),
      (dict(outputs=probs.argmax(-1), kind="labels"), "labels", True),
  ]
  for i, (arrays, kind, declared) in enumerate(cases):
    answers = blackbox.load_answers(_save(tmp_path, f"a{i}.npz", **arrays),
                                    manifest)
    assert (answers.kind, answers.declared) == (kind, declared), i
    assert answers.clean.shape == (V, K, C)
    assert answers.perturbed.shape == (U, V, K, C)


def test_inferred_kind_is_what_fingerprints_from_outputs_guesses(
    tmp_path, manifest):
  # An undeclared file keeps giving the fingerprints it gave before.
  from uap_jax import fingerprint  # pylint: disable=g-import-not-at-top
  logits, probs = _probs()
  for outputs in (logits, probs):
    answers = blackbox.load_answers(_save(tmp_path, outputs=outputs), manifest)
    stacked = np.concatenate([answers.clean[None], answers.perturbed])
    assert answers.kind == fingerprint.detect_output_kind(stacked)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_probabilities_that_do_not_sum_to_one_are_refused(
    tmp_path, manifest, scale):
  _, probs = _probs()
  path = _save(tmp_path, outputs=probs * scale)
  with pytest.raises(ValueError, match=(
      rf"no negative value.*{Q} of {Q} rows sum to {scale:g}, not 1"
      r".*kind='logits'")):
    blackbox.load_answers(path, manifest)
  with pytest.raises(ValueError, match="says kind='probs'.*not 1"):
    blackbox.load_answers(
        _save(tmp_path, "p.npz", outputs=probs * scale, kind="probs"), manifest)


def test_a_few_bad_probability_rows_are_refused(tmp_path, manifest):
  _, probs = _probs()
  probs[3] *= 1.5
  probs[5] *= 0.9
  with pytest.raises(ValueError, match=rf"2 of {Q} rows sum to 0\.9\.\.1\.5, not 1"):
    blackbox.load_answers(_save(tmp_path, outputs=probs), manifest)


def test_probabilities_with_negative_values_are_refused(tmp_path, manifest):
  _, probs = _probs()
  broken = probs.copy()
  broken[:, 0] -= 0.2
  broken[:, 1] += 0.2  # rows still sum to 1
  assert broken.min() < 0
  with pytest.raises(ValueError, match="sum to 1 per row like probabilities.*"
                     "negative values.*kind='logits'"):
    blackbox.load_answers(_save(tmp_path, outputs=broken), manifest)
  with pytest.raises(ValueError, match="says kind='probs'.*negative values"):
    blackbox.load_answers(_save(tmp_path, "p.npz", outputs=broken, kind="probs"),
                          manifest)
  # Declared logits with the same values are the user's call.
  assert blackbox.load_answers(
      _save(tmp_path, "l.npz", outputs=broken, kind="logits"),
      manifest).kind == "logits"


def test_mostly_probability_rows_with_a_negative_one_are_refused(
    tmp_path, manifest):
  _, probs = _probs()
  probs[0, 0] = -0.3  # one bad row; the others are probabilities
  with pytest.raises(ValueError, match=rf"1 of {Q} rows hold negative"):
    blackbox.load_answers(_save(tmp_path, outputs=probs), manifest)


@pytest.mark.parametrize("arrays, message", [
    (dict(kind="scores"), "kind must be one of 'probs', 'logits', 'labels'"),
    (dict(kind=np.array(["probs", "probs"])), "kind must be one of"),
    (dict(kind="labels"), "says kind='labels' but .* not one-hot"),
])
def test_bad_kind_is_refused(tmp_path, manifest, arrays, message):
  _, probs = _probs()
  with pytest.raises(ValueError, match=message):
    blackbox.load_answers(_save(tmp_path, outputs=probs, **arrays), manifest)


def test_integer_labels_declared_as_probs_are_refused(tmp_path, manifest):
  _, probs = _probs()
  with pytest.raises(ValueError, match="kind='probs' but holds integer labels"):
    blackbox.load_answers(
        _save(tmp_path, outputs=probs.argmax(-1), kind="probs"), manifest)


def test_nan_is_refused(tmp_path, manifest):
  logits, _ = _probs()
  logits[1, 2] = np.inf
  with pytest.raises(ValueError, match="NaN or inf"):
    blackbox.load_answers(_save(tmp_path, outputs=logits, kind="logits"),
                          manifest)


def test_load_recorded_outputs_is_load_answers(tmp_path, manifest):
  logits, _ = _probs()
  path = _save(tmp_path, outputs=logits)
  clean, perturbed = blackbox.load_recorded_outputs(path, manifest)
  answers = blackbox.load_answers(path, manifest)
  np.testing.assert_array_equal(clean, answers.clean)
  np.testing.assert_array_equal(perturbed, answers.perturbed)


# ------------------------------------------------------- unreadable files


def _truncated(path):
  data = open(path, "rb").read()
  open(path, "wb").write(data[:len(data) // 2])


def _corrupt_member(path):
  data = bytearray(open(path, "rb").read())
  at = data.find(b"\x93NUMPY") + 150  # inside the stored array's bytes
  data[at] ^= 0xFF
  open(path, "wb").write(bytes(data))


def _corrupt_compressed(path):
  logits, _ = _probs()
  np.savez_compressed(path, outputs=np.tile(logits, (20, 1)))
  with zipfile.ZipFile(path) as z:
    offset = z.getinfo("outputs.npy").header_offset
  data = bytearray(open(path, "rb").read())
  data[offset + 120] ^= 0xFF  # past the local header, in the deflate stream
  open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (_truncated, "truncated or damaged.*copy it again"),
    (_corrupt_member, "a member is corrupted.*CRC.*copy it again"),
    (_corrupt_compressed, "a member is corrupted.*copy it again"),
    (lambda p: open(p, "w").write("not a zip"),
     "is not an .npz file .*zip archive.*np.savez\\(path, outputs=answers\\)"),
    (lambda p: open(p, "w").close(), "not an .npz file .*empty"),
    (lambda p: np.save(open(p, "wb"), np.zeros(3)),
     "single .npy array, not an .npz.*np.savez"),
    (lambda p: np.savez(p, outputs=np.array([{"a": 1}], dtype=object)),
     "object \\(pickled\\) arrays"),
    (lambda p: np.savez(p, answers=np.zeros(3)), "no 'outputs' array"),
])
def test_unreadable_answers_give_one_message(tmp_path, manifest, damage, message):
  logits, _ = _probs()
  path = _save(tmp_path, outputs=logits)
  damage(path)
  with pytest.raises(ValueError, match=message) as info:
    blackbox.load_answers(path, manifest)
  assert path in str(info.value)
  # The same message before any work (the stage's first check).
  with pytest.raises(ValueError, match=message):
    blackbox.check_suspect(path)


def test_missing_answers_name_the_file(tmp_path, manifest):
  path = str(tmp_path / "nope.npz")
  with pytest.raises(FileNotFoundError, match="nope.npz: no such file"):
    blackbox.load_answers(path, manifest)
  with pytest.raises(FileNotFoundError, match="nope.npz: no such file"):
    blackbox.check_suspect(path)
  with pytest.raises(FileNotFoundError, match="no such file or directory.*"
                     "checkpoint directory"):
    blackbox.check_suspect(str(tmp_path / "no_checkpoint"))
  with pytest.raises(ValueError, match="is a directory"):
    os.mkdir(tmp_path / "dir.npz")
    blackbox.check_suspect(str(tmp_path / "dir.npz"))


def test_unreadable_manifest_names_the_fix(tmp_path):
  logits, _ = _probs()
  path = _save(tmp_path, outputs=logits)
  with pytest.raises(FileNotFoundError, match="no such file.*export_queries"):
    blackbox.load_answers(path, str(tmp_path / "queries.json"))
  (tmp_path / "queries.json").write_text("{")
  with pytest.raises(ValueError, match="unreadable.*export the queries again"):
    blackbox.load_answers(path, str(tmp_path / "queries.json"))


def test_unreadable_queries_file(tmp_path):
  path = tmp_path / "queries.npz"
  path.write_text("junk")
  with pytest.raises(ValueError, match="queries file .* export the queries "
                     "again"):
    blackbox.load_queries(str(path))


# -------------------------------------------------- labels and --fp_mode


def test_label_answers_for_a_probs_run_name_the_fix():
  check = verify_stage._check_answers_fit_mode  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="labels only.*no label judge.*--stages=encoder,verify"
                     ".*--score=uap_follow"):
    check("a.npz", "labels", "probs", "encoder", False)
  with pytest.raises(ValueError, match="probabilities.*--fp_mode=logits"):
    check("a.npz", "probs", "logits", "uap_cosine", True)
  # Labels against a probability run: judged on labels, by the label judge
  # or an encoder-free score.
  assert check("a.npz", "labels", "probs", "encoder", True)
  assert check("a.npz", "labels", "probs", "uap_cosine", False)
  assert check("a.npz", "labels", "logits", "raw_cosine", False)
  for kind, mode in (("labels", "labels"), ("probs", "probs"),
                     ("probs", "labels"), ("logits", "logits")):
    assert not check("a.npz", kind, mode, "encoder", False)


# -------------------------------------------------------- verdict files


def _out(source, verdict="pirated", p=1e-4, names=("answers",)):
  return {"suspect": os.path.abspath(source),
          "verdicts": [{"suspect": n, "source": os.path.abspath(source),
                        "verdict": verdict, "p_value": p} for n in names]}


def test_verdict_files_of_same_named_suspects_do_not_collide(tmp_path):
  workdir = Workdir(str(tmp_path / "run"), writer=True)
  art = Artifacts(workdir)
  a, b = str(tmp_path / "a" / "answers.npz"), str(tmp_path / "b" / "answers.npz")
  file_a = verify_stage.save_verdicts(art, workdir, _out(a))
  file_b = verify_stage.save_verdicts(art, workdir, _out(b, "not_pirated", 0.5))
  assert os.path.basename(file_a) == "answers.json"
  assert file_b != file_a
  assert os.path.basename(file_b).startswith("answers-")
  with open(file_a) as f:
    assert json.load(f)["suspect"] == os.path.abspath(a)
  with open(file_b) as f:
    assert json.load(f)["verdicts"][0]["verdict"] == "not_pirated"
  # A rerun on either suspect replaces its own file, never the other's.
  assert verify_stage.save_verdicts(art, workdir, _out(b, "inconclusive")) == file_b
  assert verify_stage.save_verdicts(art, workdir, _out(a)) == file_a
  assert sorted(os.listdir(workdir.path("verdicts"))) == sorted(
      ["answers.json", os.path.basename(file_b), "index.json", "index.md"])


def test_verdict_index_lists_every_file(tmp_path):
  workdir = Workdir(str(tmp_path / "run"), writer=True)
  art = Artifacts(workdir)
  a, b = str(tmp_path / "a" / "answers.npz"), str(tmp_path / "b" / "answers.npz")
  ckpt = str(tmp_path / "zoo_stack")
  verify_stage.save_verdicts(art, workdir, _out(a))
  verify_stage.save_verdicts(art, workdir, _out(b, "not_pirated", 0.5))
  verify_stage.save_verdicts(art, workdir, _out(ckpt, names=("m0", "m1")))
  with open(workdir.path("verdicts", "index.json")) as f:
    index = json.load(f)["verdict_files"]
  assert sorted(e["source"] for e in index) == sorted(
      os.path.abspath(p) for p in (a, b, ckpt))
  by_source = {e["source"]: e for e in index}
  assert by_source[os.path.abspath(b)]["verdicts"] == [
      {"suspect": "answers", "verdict": "not_pirated", "p_value": 0.5}]
  assert [v["suspect"] for v in by_source[os.path.abspath(ckpt)]["verdicts"]
          ] == ["m0", "m1"]
  for e in index:
    assert os.path.isfile(workdir.path(e["file"]))
  table = open(workdir.path("verdicts", "index.md")).read()
  assert table.count("\n| `verdicts/") == 4  # one row per suspect
  assert "| not_pirated | 0.5 |" in table and "| m1 | pirated | 0.0001 |" in table


def test_a_suspect_named_index_does_not_replace_the_index(tmp_path):
  workdir = Workdir(str(tmp_path / "run"), writer=True)
  file = verify_stage.save_verdicts(Artifacts(workdir), workdir,
                                    _out(str(tmp_path / "index.npz")))
  assert os.path.basename(file).startswith("index-")
  with open(workdir.path("verdicts", "index.json")) as f:
    assert len(json.load(f)["verdict_files"]) == 1


def test_verdict_file_of_an_earlier_version_is_kept(tmp_path):
  # verdicts/answers.json of another source, written before the index existed.
  workdir = Workdir(str(tmp_path / "run"), writer=True)
  workdir.write_json(os.path.join("verdicts", "answers.json"),
                     _out(str(tmp_path / "old" / "answers.npz")))
  name = verify_stage.verdict_name(workdir, str(tmp_path / "new" / "answers.npz"))
  assert name.startswith("answers-")
  assert verify_stage.verdict_name(
      workdir, str(tmp_path / "old" / "answers.npz")) == "answers"


# -------------------------------------------- the stage, on stub artefacts


class _StubArtifacts(Artifacts):
  """Real verdict saving; fingerprints and the manifest from the test."""

  def __init__(self, workdir, manifest, mode):
    super().__init__(workdir)
    self._mode = mode
    self.judge_on_labels = None
    workdir.write_json("queries.json", manifest)

  def label_judge(self):
    return self.judge_on_labels

  @property
  def fingerprints(self):
    from uap_jax.runtime.artifacts import Fingerprints  # pylint: disable=g-import-not-at-top
    return Fingerprints(fps=np.zeros((2, V, 1)), models=[{"kind": "victim"}, {}],
                        points=np.zeros((K, V), int), mode=self._mode)

  def split(self):
    return {"calib": [1]}

  @property
  def uaps(self):
    return np.zeros((1, 1, 1, 1))


@pytest.fixture(name="stub_stage")
def _stub_stage(tmp_path, manifest, monkeypatch):
  seen = {}

  def judge(_, suspect_fps, *args, **kwargs):
    seen["fps"] = suspect_fps
    seen["labels_only"] = kwargs.get("labels_only")
    seen["label_judge"] = kwargs.get("label_judge")
    return [{"verdict": "pirated", "p_value": 1e-3, "confidence": 0.999,
             "views_used": V, "statement": "pirated (stub)"}]

  def from_outputs(clean, perturbed, *, mode, outputs):
    seen["outputs"] = outputs
    return np.zeros((V, 1))

  monkeypatch.setattr(verify_stage.protocols, "judge", judge)
  monkeypatch.setattr(verify_stage, "_saved_encoder", lambda ctx: None)
  monkeypatch.setattr(verify_stage.fp_lib, "fingerprints_from_outputs",
                      from_outputs)

  def make(mode):
    import types  # pylint: disable=g-import-not-at-top
    workdir = Workdir(str(tmp_path / "run"), writer=True)
    cfg = types.SimpleNamespace(test="welch", score="uap_cosine", verify_score="uap_cosine",
                                n_views=V, fp_v=V, alpha=0.01,
                                seed=0, split_train=0.5, split_calib=0.25)
    data = types.SimpleNamespace(y_train=np.zeros(1, int), num_classes=3)
    return types.SimpleNamespace(cfg=cfg, workdir=workdir, data=data,
                                 artifacts=_StubArtifacts(workdir, manifest, mode))
  return make, seen


def test_stage_passes_the_declared_kind_and_names_the_file(
    tmp_path, stub_stage, caplog):
  make, seen = stub_stage
  logits, probs = _probs()
  # Logits that happen to be non-negative and sum to 1: only kind= says so.
  path = _save(tmp_path, outputs=probs, kind="logits")
  with caplog.at_level("INFO"):
    out = verify_stage.verify_external(make("logits"), path)
  assert seen["outputs"] == "logits"
  assert os.path.basename(out["file"]) == "answers.json"
  assert out["file"] in caplog.text
  other = tmp_path / "other"
  other.mkdir()
  out2 = verify_stage.verify_external(make("probs"), _save(other, outputs=logits))
  assert seen["outputs"] == "logits"
  assert out2["file"] != out["file"]


def test_stage_judges_label_answers_by_the_label_judge_or_without_an_encoder(
    tmp_path, stub_stage):
  make, seen = stub_stage
  _, probs = _probs()
  path = _save(tmp_path, outputs=probs.argmax(-1))
  ctx = make("probs")
  ctx.cfg.score = ctx.cfg.verify_score = "encoder"
  with pytest.raises(ValueError, match="no label judge"):
    verify_stage.verify_external(ctx, path)
  assert "outputs" not in seen
  ctx.artifacts.judge_on_labels = object()  # a run that trained its label judge
  verify_stage.verify_external(ctx, path)
  assert seen["outputs"] == "labels" and seen["labels_only"]
  assert seen["label_judge"] is ctx.artifacts.judge_on_labels
  del seen["outputs"]
  verify_stage.verify_external(make("probs"), path)
  assert seen["outputs"] == "labels" and seen["labels_only"]
  verify_stage.verify_external(make("labels"), path)
  assert seen["outputs"] == "labels" and not seen["labels_only"]


def test_stage_refuses_a_missing_file_before_loading_anything(
    tmp_path, stub_stage, monkeypatch):
  make, _ = stub_stage
  ctx = make("probs")
  monkeypatch.setattr(type(ctx.artifacts), "fingerprints",
                      property(lambda self: pytest.fail("loaded fingerprints")))
  with pytest.raises(FileNotFoundError, match="missing.npz: no such file"):
    verify_stage.verify_external(ctx, str(tmp_path / "missing.npz"))


def test_a_bad_suspect_is_refused_before_the_run_writes_anything(tmp_path):
  from uap_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from uap_jax import pipeline  # pylint: disable=g-import-not-at-top
  work = tmp_path / "run"
  bad = tmp_path / "answers.npz"
  bad.write_bytes(b"hello")
  ran = []
  for suspect, error in ((tmp_path / "missing.npz", FileNotFoundError),
                         (bad, ValueError)):
    cfg = config_lib.parse([f"--workdir={work}", "--stages=verify", f"--suspect={suspect}"])
    with pytest.raises(error, match="answers|suspect"):
      pipeline.run(cfg, stages={"verify": lambda ctx: ran.append(ctx)})
  assert not ran and not work.exists()
