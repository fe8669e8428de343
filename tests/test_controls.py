"""Control queries: answers that are not a classifier's, in query order, are
not judged; a real classifier's, through a noisy API, are.

The "classifier" here is a fixed random linear map on the query pixels (no
training, no JAX), so the tests are cheap and the answers are a deterministic
function of the image, as a real model's are. Its held-out "labels" are its
own predictions, so it is a perfect classifier of its task.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from uap_jax.fingerprint import blackbox
from uap_jax.fingerprint import controls
from uap_jax.runtime.workdir import Workdir
from uap_jax.stages import verify as verify_stage

K, V, U, C = 4, 10, 1, 5
SHAPE = (4, 4, 1)


def _classifier_logits(images: np.ndarray) -> np.ndarray:
  weights = np.random.default_rng(42).normal(size=(int(np.prod(SHAPE)), C))
  x = images.reshape(len(images), -1).astype(np.float32) / 255.0
  return (x - 0.5) @ weights * 4.0


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


@pytest.fixture(name="export", scope="module")
def _export(tmp_path_factory):
  rng = np.random.default_rng(0)
  x_points = rng.integers(0, 256, (K, V) + SHAPE).astype(np.uint8)
  uaps = rng.uniform(-0.3, 0.3, (U,) + SHAPE).astype(np.float32)
  pool = rng.integers(0, 256, (400,) + SHAPE).astype(np.uint8)
  holdout = controls.holdout_draw(pool, _classifier_logits(pool).argmax(-1), C,
                                  total=100, seed=0)
  path = str(tmp_path_factory.mktemp("export") / "queries.npz")
  manifest = blackbox.export_queries(path, x_points, uaps, num_classes=C,
                                     holdout=holdout, seed=3)
  return path, manifest


def _logits(export):
  return _classifier_logits(blackbox.load_queries(export[0]))


def _check(tmp_path, export, name="answers.npz", **arrays):
  path = str(tmp_path / name)
  np.savez(path, **arrays)
  return blackbox.load_answers(path, export[1]).check()


# ------------------------------------------------------------ the export


def test_export_hides_controls_in_a_seeded_order(export):
  path, manifest = export
  queries = blackbox.load_queries(path)
  c = manifest["controls"]
  g = (1 + U) * V * K
  assert manifest["num_grid_queries"] == g
  assert len(c["repeat_positions"]) == controls.num_repeats_for(g) == 40
  assert len(c["holdout_positions"]) == len(c["holdout_labels"]) == 100
  assert manifest["num_queries"] == len(queries) == g + 40 + 100
  # A repeat is the same image at two positions.
  for a, b in c["repeat_positions"]:
    assert a != b
    np.testing.assert_array_equal(queries[a], queries[b])
  # Grid positions are not the first G: position says nothing.
  assert c["grid_position"] != list(range(g))
  # The grid comes back in grid order through grid_position.
  x_points, uaps = _points()
  grid_only, _ = blackbox.make_queries(x_points, uaps, num_classes=C,
                                       num_repeats=0)
  np.testing.assert_array_equal(
      grid_only[np.asarray(blackbox.make_queries(
          x_points, uaps, num_classes=C, num_repeats=0)[1]["controls"][
              "grid_position"])],
      queries[np.asarray(c["grid_position"])])
  # The checksum covers the presented order, which the seed sets.
  seed3 = blackbox.make_queries(x_points, uaps, num_classes=C, seed=3)[1]
  seed4 = blackbox.make_queries(x_points, uaps, num_classes=C, seed=4)[1]
  assert seed3["queries_sha256"] != seed4["queries_sha256"]


def _points():
  rng = np.random.default_rng(0)
  return (rng.integers(0, 256, (K, V) + SHAPE).astype(np.uint8),
          rng.uniform(-0.3, 0.3, (U,) + SHAPE).astype(np.float32))


def test_holdout_draw_is_class_balanced_and_seeded():
  labels = np.repeat(np.arange(4), [50, 50, 50, 3])
  images = np.arange(len(labels), dtype=np.uint8)[:, None, None, None]
  x, y = controls.holdout_draw(images, labels, 4, total=40, seed=1)
  assert np.bincount(y).tolist() == [10, 10, 10, 3]  # a small class gives all
  x2, _ = controls.holdout_draw(images, labels, 4, total=40, seed=1)
  np.testing.assert_array_equal(x, x2)
  np.testing.assert_array_equal(labels[x[:, 0, 0, 0]], y)


def test_damaged_controls_are_refused(export):
  manifest = json.loads(json.dumps(export[1]))
  manifest["controls"]["grid_position"][0] = manifest["controls"][
      "grid_position"][1]
  with pytest.raises(ValueError, match="controls do not fit.*export the "
                     "queries again"):
    blackbox.load_manifest(manifest)
  del manifest["controls"]
  with pytest.raises(ValueError, match="lacks.*controls"):
    blackbox.load_manifest(manifest)


# ------------------------------------------------- real answers are judged


@pytest.mark.parametrize("api", [
    "probs", "logits", "labels", "rounded_1", "rounded_2", "noise_0.3",
    "top1_as_labels", "temperature_5"])
def test_a_classifier_through_a_noisy_api_passes(tmp_path, export, api):
  logits = _logits(export)
  rng = np.random.default_rng(1)
  rounded = lambda d: np.round(_softmax(logits), d)
  arrays = {
      "probs": dict(outputs=_softmax(logits)),
      "logits": dict(outputs=logits, kind="logits"),
      "labels": dict(outputs=logits.argmax(-1)),
      # Rounded by the API, renormalised when recorded (the README's rule).
      "rounded_1": dict(outputs=rounded(1) / rounded(1).sum(-1, keepdims=True)),
      "rounded_2": dict(outputs=rounded(2) / rounded(2).sum(-1, keepdims=True)),
      "noise_0.3": dict(outputs=_softmax(logits + rng.normal(0, .3, logits.shape))),
      "top1_as_labels": dict(outputs=logits.argmax(-1), kind="labels"),
      "temperature_5": dict(outputs=_softmax(logits / 5)),
  }[api]
  check = _check(tmp_path, export, **arrays)
  assert check.valid, check.reasons
  assert check.stats["holdout_accuracy"] > 0.9
  assert check.stats["repeats_disagreeing"] <= 0.1 * check.stats["repeats"]


def test_rows_under_their_query_id_pass(tmp_path, export):
  probs = _softmax(_logits(export))
  perm = np.random.default_rng(5).permutation(len(probs))
  assert _check(tmp_path, export, outputs=probs[perm], query_id=perm).valid


# ---------------------------------------------- garbage is never judged


def _garbage(name, logits, rng):
  probs = _softmax(logits)
  q = len(probs)
  return {
      "shifted_by_one": dict(outputs=np.roll(probs, 1, axis=0)),
      "shifted_back_by_one": dict(outputs=np.roll(probs, -1, axis=0)),
      "shuffled_no_query_id": dict(outputs=probs[rng.permutation(q)]),
      "wrong_query_ids": dict(outputs=probs, query_id=rng.permutation(q)),
      "reversed": dict(outputs=probs[::-1]),
      "uniform_rows": dict(outputs=np.full_like(probs, 1.0 / C)),
      "constant_label": dict(outputs=np.full(q, 2)),
      "random_labels": dict(outputs=rng.integers(0, C, q)),
      "random_probabilities": dict(
          outputs=rng.dirichlet(np.ones(C), q).astype(np.float32)),
      "labels_shifted_by_one": dict(outputs=np.roll(logits.argmax(-1), 1)),
  }[name]


GARBAGE = ("shifted_by_one", "shifted_back_by_one", "shuffled_no_query_id",
           "wrong_query_ids", "reversed", "uniform_rows", "constant_label",
           "random_labels", "random_probabilities", "labels_shifted_by_one")


@pytest.mark.parametrize("name", GARBAGE)
def test_garbage_answers_are_invalid(tmp_path, export, name):
  check = _check(tmp_path, export,
                 **_garbage(name, _logits(export), np.random.default_rng(2)))
  assert not check.valid
  assert check.reasons
  verdict = controls.invalid_verdict(check)
  assert verdict["verdict"] == "invalid_answers"
  assert verdict["p_value"] is None and verdict["confidence"] is None


def test_shifted_rows_fail_the_repeats_with_the_fix(tmp_path, export):
  check = _check(tmp_path, export, **_garbage(
      "shifted_by_one", _logits(export), np.random.default_rng(0)))
  assert any("repeated queries answered differently" in r and "query_id" in r
             for r in check.reasons), check.reasons
  assert any("held-out labelled images" in r for r in check.reasons)


def test_uniform_and_constant_answers_say_so(tmp_path, export):
  logits = _logits(export)
  rng = np.random.default_rng(0)
  uniform = _check(tmp_path, export, **_garbage("uniform_rows", logits, rng))
  assert "is the same answer" in uniform.reasons[0]
  assert uniform.stats["holdout_accuracy"] == pytest.approx(1 / C, abs=0.01)
  constant = _check(tmp_path, export, "c.npz",
                    **_garbage("constant_label", logits, rng))
  assert "answered with class 2" in constant.reasons[0]


def test_any_permutation_that_is_not_the_identity_fails(tmp_path, export):
  # Property-style: a misordering that moves a fair share of rows is caught.
  probs = _softmax(_logits(export))
  q = len(probs)
  for seed in range(15):
    rng = np.random.default_rng(100 + seed)
    # Swap many random pairs, shift a block, or a full shuffle.
    perm = np.arange(q)
    style = seed % 3
    if style == 0:
      perm = rng.permutation(q)
    elif style == 1:
      start = int(rng.integers(0, q // 2))
      perm[start:] = np.roll(perm[start:], int(rng.integers(1, 5)))
    else:
      a = rng.choice(q, size=q // 2, replace=False)
      perm[a] = perm[np.roll(a, 1)]
    assert not np.array_equal(perm, np.arange(q))
    check = controls.check_answers(probs[perm], export[1]["controls"])
    assert not check.valid, (seed, check.stats)


# ------------------------------------------------- exports without controls


def test_an_old_export_falls_back_and_says_so(tmp_path, export):
  logits = _logits(export)
  g = export[1]["num_grid_queries"]
  old = {k: v for k, v in export[1].items()
         if k not in ("controls", "num_grid_queries")}
  old.update(format=blackbox.FORMAT_V1, num_queries=g)
  grid_logits = logits[np.asarray(export[1]["controls"]["grid_position"])]
  np.savez(tmp_path / "ok.npz", outputs=_softmax(grid_logits))
  answers = blackbox.load_answers(str(tmp_path / "ok.npz"), old)
  assert answers.controls is None
  check = answers.check()
  assert check.valid and not check.stats["controls"]
  assert "no control queries" in check.stats["note"]
  assert "--stages=export_queries" in check.stats["note"]
  np.savez(tmp_path / "u.npz", outputs=np.full((g, C), 1.0 / C, np.float32))
  assert not blackbox.load_answers(str(tmp_path / "u.npz"), old).check().valid


# ------------------------------------------------- the stage's verdict file


def test_invalid_answers_get_a_verdict_file_and_index_row(
    tmp_path, export, monkeypatch):
  import types  # pylint: disable=g-import-not-at-top
  judged = []
  monkeypatch.setattr(verify_stage.protocols, "judge",
                      lambda *a, **k: judged.append(1) or [])
  monkeypatch.setattr(verify_stage, "_saved_encoder", lambda ctx: None)
  from uap_jax.runtime.artifacts import Artifacts, Fingerprints  # pylint: disable=g-import-not-at-top

  class Stub(Artifacts):

    @property
    def fingerprints(self):
      return Fingerprints(fps=np.zeros((2, V, 1)), models=[{"kind": "victim"}, {}],
                          points=np.zeros((K, V), int), mode="probs")

  workdir = Workdir(str(tmp_path / "run"), writer=True)
  with open(export[0].replace(".npz", ".json")) as f:
    workdir.write_json("queries.json", json.load(f))
  cfg = types.SimpleNamespace(test="welch", n_views=V, alpha=0.01, seed=0,
                              split_train=0.5, split_calib=0.25, strategy="auto")
  ctx = types.SimpleNamespace(cfg=cfg, workdir=workdir, artifacts=Stub(workdir))
  path = str(tmp_path / "shifted.npz")
  np.savez(path, outputs=np.roll(_softmax(_logits(export)), 1, axis=0))
  out = verify_stage.verify_external(ctx, path)
  assert not judged  # no test ran
  v = out["verdicts"][0]
  assert v["verdict"] == "invalid_answers"
  assert v["p_value"] is None and v["confidence"] is None
  assert "repeated queries answered differently" in v["reason"]
  with open(out["file"]) as f:
    assert json.load(f)["verdicts"][0]["verdict"] == "invalid_answers"
  with open(workdir.path("verdicts", "index.json")) as f:
    row = json.load(f)["verdict_files"][0]["verdicts"][0]
  assert row["verdict"] == "invalid_answers" and row["p_value"] is None
  assert "repeated queries" in row["reason"]
  table = open(workdir.path("verdicts", "index.md")).read()
  assert "| invalid_answers: " in table and table.rstrip().endswith("| – |")
  assert os.path.basename(out["file"]) == "shifted.json"
