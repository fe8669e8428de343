"""Fingerprint points, fingerprints of stacks, black-box queries and answers."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uap_jax import config
from uap_jax import fingerprint
from uap_jax.fingerprint import blackbox
from uap_jax.fingerprint import diagnostics
from uap_jax.fingerprint import layout
from uap_jax.runtime import stack as stack_lib

NUM_CLASSES = 4
IMAGE_SHAPE = (5, 5, 1)
K, V, U = 3, 4, 2


@pytest.fixture(scope="module")
def models():
  return stack_lib.create("mlp", [0, 1, 2], num_classes=NUM_CLASSES,
                          image_shape=IMAGE_SHAPE)


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).integers(
      0, 256, (60,) + IMAGE_SHAPE).astype(np.uint8)


@pytest.fixture(scope="module")
def points_and_uaps(images):
  rng = np.random.default_rng(1)
  idx = rng.permutation(len(images))[:K * V].reshape(K, V)
  uaps = rng.uniform(-0.2, 0.2, (U,) + IMAGE_SHAPE).astype(np.float32)
  return images[idx], uaps


def blobs(k, per, dim=4, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(0, 50, (k, dim))
  x = np.concatenate([c + rng.normal(0, 1, (per, dim)) for c in centers])
  return x, np.repeat(np.arange(k), per)


# ---------------------------------------------------------------- points


@pytest.mark.parametrize("rule", fingerprint.POINT_RULES)
def test_select_points_shape_unique_deterministic(rule):
  logits, _ = blobs(5, 12)
  a = fingerprint.select_points(logits, 5, 8, rule=rule, seed=3)
  b = fingerprint.select_points(logits, 5, 8, rule=rule, seed=3)
  assert a.shape == (5, 8) and a.dtype == np.int64
  assert len(np.unique(a)) == a.size
  assert a.min() >= 0 and a.max() < len(logits)
  np.testing.assert_array_equal(a, b)


def test_kmeans_points_stay_in_their_cluster():
  logits, blob = blobs(6, 10)
  idx = fingerprint.select_points(logits, 6, 10, rule="kmeans", seed=0)
  # Well-separated blobs: each cluster's seed and neighbours are one blob,
  # and the seed (view 0) is the blob point nearest the blob's mean.
  assert all(len(set(blob[row])) == 1 for row in idx)
  assert len(set(blob[idx[:, 0]])) == 6
  for row in idx:
    members = logits[blob == blob[row[0]]]
    nearest = np.argmin(np.linalg.norm(members - members.mean(0), axis=1))
    np.testing.assert_array_equal(logits[row[0]], members[nearest])
    dist = np.linalg.norm(logits[row] - logits[row[0]], axis=1)
    assert np.all(np.diff(dist) >= 0)  # views in neighbour order


@pytest.mark.parametrize("rule", fingerprint.POINT_RULES)
def test_points_use_every_point_when_k_times_v_is_n(rule):
  # Overlapping neighbourhoods: the k-means rule must widen its candidates.
  logits = np.random.default_rng(0).normal(size=(80, 3))
  idx = fingerprint.select_points(logits, 8, 10, rule=rule)
  np.testing.assert_array_equal(np.sort(idx.ravel()), np.arange(80))


def test_margin_points_are_low_margin_and_one_class_per_slot():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (400, 4))
  idx = fingerprint.select_points(logits, 4, 5, rule="margin")
  top2 = np.sort(logits, 1)[:, -2:]
  margin = top2[:, 1] - top2[:, 0]
  pred = logits.argmax(1)
  assert all(len(set(pred[row])) == 1 for row in idx)
  assert set(pred[idx[:, 0]]) == set(range(4))  # spread over classes
  assert margin[idx].max() < np.median(margin)
  assert np.all(np.diff(margin[idx], axis=1) >= 0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_points=10, num_views=10), "K \\* V"),
    (dict(num_points=0, num_views=2), ">= 1"),
    (dict(num_points=2, num_views=2, rule="nearest"), "Unknown point rule"),
])
def test_select_points_bad_input(kwargs, match):
  logits, _ = blobs(3, 10)
  with pytest.raises(ValueError, match=match):
    fingerprint.select_points(logits, **kwargs)


def test_select_points_bad_logits():
  with pytest.raises(ValueError, match="num_classes"):
    fingerprint.select_points(np.zeros(10), 2, 2)
  with pytest.raises(ValueError, match="NaN"):
    fingerprint.select_points(np.full((10, 3), np.nan), 2, 2)
  with pytest.raises(ValueError, match="distinct"):
    fingerprint.select_points(np.zeros((10, 3)), 2, 2, rule="kmeans")


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_layout_matches_predict(models, points_and_uaps):
  x_points, uaps = points_and_uaps
  fps = np.asarray(fingerprint.fingerprints(models, x_points, uaps))
  assert fps.shape == (3, V, K * (1 + U) * NUM_CLASSES)
  grid = fps.reshape(3, V, K, 1 + U, NUM_CLASSES)
  queries = np.asarray(fingerprint.query_images(x_points, uaps))
  probs = stack_lib.predict(models, queries.reshape((-1,) + IMAGE_SHAPE),
                            output="probs").reshape(3, 1 + U, V, K, NUM_CLASSES)
  np.testing.assert_allclose(grid, probs.transpose(0, 2, 3, 1, 4), atol=1e-6)
  # Clean queries are the points themselves; perturbed ones are clipped.
  np.testing.assert_allclose(queries[0], np.swapaxes(x_points, 0, 1) / 255.0)
  assert queries.min() >= 0.0 and queries.max() <= 1.0
  assert not np.allclose(grid[..., 0, :], grid[..., 1, :])


def test_fingerprint_strategies_agree(models, points_and_uaps):
  x_points, uaps = points_and_uaps
  loop = fingerprint.fingerprints(models, x_points, uaps, strategy="loop",
                                  mode="logits")
  vmap = fingerprint.fingerprints(
      (models.logits_fn, models.variables), x_points, uaps, strategy="vmap",
      mode="logits", images_per_batch=None)
  np.testing.assert_allclose(loop, vmap, rtol=1e-5, atol=1e-5)
  # 3 views per pass over 4 views: a remainder batch.
  mapped = fingerprint.fingerprints(models, x_points, uaps, strategy="map",
                                    mode="logits", images_per_batch=27)
  np.testing.assert_allclose(loop, mapped, rtol=1e-5, atol=1e-5)


def test_fingerprint_modes(models, points_and_uaps):
  x_points, uaps = points_and_uaps
  probs = np.asarray(fingerprint.fingerprints(models, x_points, uaps[0]))
  assert probs.shape[-1] == K * 2 * NUM_CLASSES  # one UAP (H, W, C) works
  np.testing.assert_allclose(probs.reshape(-1, NUM_CLASSES).sum(-1), 1.0,
                             atol=1e-5)
  labels = np.asarray(fingerprint.fingerprints(models, x_points, uaps[0],
                                               mode="labels"))
  rows = labels.reshape(-1, NUM_CLASSES)
  np.testing.assert_array_equal(rows.sum(-1), 1.0)
  np.testing.assert_array_equal(rows.argmax(-1),
                                probs.reshape(-1, NUM_CLASSES).argmax(-1))


def test_quantisation_is_a_uint8_grid(points_and_uaps):
  x_points, uaps = points_and_uaps
  q = np.asarray(fingerprint.query_images(x_points, uaps))
  np.testing.assert_allclose(q * 255.0, np.round(q * 255.0), atol=1e-4)
  raw = np.asarray(fingerprint.query_images(x_points, uaps, quantize=False))
  assert np.abs(q - raw).max() <= 0.5 / 255.0 + 1e-6


@pytest.mark.parametrize("x_shape, uap_shape, match", [
    ((K, V) + IMAGE_SHAPE[:2], (U,) + IMAGE_SHAPE, "x_points must be"),
    ((K, V) + IMAGE_SHAPE, (U, 6, 5, 1), "uaps must be"),
    ((K, V) + IMAGE_SHAPE, (0, 6, 5, 1), "uaps must be"),
])
def test_fingerprint_bad_shapes(models, x_shape, uap_shape, match):
  with pytest.raises(ValueError, match=match):
    fingerprint.fingerprints(models, np.zeros(x_shape, np.float32),
                             np.zeros(uap_shape, np.float32))


def test_fingerprint_bad_values_mode_and_model(models, points_and_uaps):
  x_points, uaps = points_and_uaps
  with pytest.raises(ValueError, match="\\[0, 1\\]"):
    fingerprint.fingerprints(models, x_points.astype(np.float32), uaps)
  with pytest.raises(ValueError, match="NaN"):
    fingerprint.fingerprints(models, x_points, uaps * np.nan)
  with pytest.raises(ValueError, match="mode"):
    fingerprint.fingerprints(models, x_points, uaps, mode="softmax")
  with pytest.raises(ValueError, match="Stack or a pair"):
    fingerprint.fingerprints(models.params, x_points, uaps)
  with pytest.raises(ValueError, match="images_per_batch"):
    fingerprint.fingerprints(models, x_points, uaps, images_per_batch=0)


@pytest.mark.parametrize("mode", fingerprint.MODES)
def test_no_uaps_gives_the_clean_half(models, points_and_uaps, mode):
  x_points, uaps = points_and_uaps
  none = np.zeros((0,) + IMAGE_SHAPE, np.float32)
  clean = np.asarray(fingerprint.fingerprints(models, x_points, none, mode=mode))
  chex.assert_shape(clean, (3, V, K * NUM_CLASSES))
  one = np.asarray(fingerprint.fingerprints(models, x_points, uaps[:1], mode=mode))
  chex.assert_trees_all_close(clean, layout.clean_only(one, 1, NUM_CLASSES),
                              atol=1e-6)
  # The clean half does not depend on the UAPs, however many.
  two = np.asarray(fingerprint.fingerprints(models, x_points, uaps, mode=mode))
  chex.assert_trees_all_close(clean, layout.clean_only(two, U, NUM_CLASSES),
                              atol=1e-6)
  assert not np.allclose(layout.split(two, U, NUM_CLASSES)[..., 0, :],
                         layout.split(two, U, NUM_CLASSES)[..., 1, :])


def test_modes_and_point_rules_are_the_config_choices():
  assert fingerprint.MODES == config.FP_MODES
  assert fingerprint.POINT_RULES == config.POINT_RULES
  assert not hasattr(fingerprint, "OUTPUT_KINDS")


def test_layout_split_inverts_join():
  outputs = np.random.default_rng(0).normal(size=(2, V, K, 1 + U, NUM_CLASSES))
  fps = layout.join(outputs)
  chex.assert_shape(fps, (2, V, K * (1 + U) * NUM_CLASSES))
  np.testing.assert_array_equal(layout.split(fps, U, NUM_CLASSES), outputs)
  # Point i, view j of the fingerprint is where split puts it.
  np.testing.assert_array_equal(
      fps[1, 2, (1 * (1 + U) + 2) * NUM_CLASSES:][:NUM_CLASSES], outputs[1, 2, 1, 2])
  np.testing.assert_array_equal(layout.top1(fps, U, NUM_CLASSES),
                                outputs.argmax(-1))
  np.testing.assert_array_equal(layout.clean_only(fps, U, NUM_CLASSES),
                                layout.join(outputs[..., :1, :]))
  clean = layout.clean_only(fps, U, NUM_CLASSES)
  np.testing.assert_array_equal(layout.split(clean, 0, NUM_CLASSES),
                                outputs[..., :1, :])


@pytest.mark.parametrize("num_uaps, num_classes, match", [
    (U, NUM_CLASSES + 1, "not K \\* \\(1 \\+ U\\) \\* C"),
    (U + 2, NUM_CLASSES, "not K \\* \\(1 \\+ U\\) \\* C"),
    (-1, NUM_CLASSES, "num_uaps >= 0"),
])
def test_layout_split_rejects_other_settings(num_uaps, num_classes, match):
  fps = np.zeros((V, K * (1 + U) * NUM_CLASSES))
  with pytest.raises(ValueError, match=match):
    layout.split(fps, num_uaps, num_classes)


def test_jit_equals_eager():
  x = jax.random.normal(jax.random.key(0), (V, K, 1 + U, NUM_CLASSES))
  join = jax.jit(layout.join)
  split = jax.jit(layout.split, static_argnums=(1, 2))
  chex.assert_trees_all_close(join(x), layout.join(x))
  chex.assert_trees_all_close(split(join(x), U, NUM_CLASSES), x)
  for mode in fingerprint.MODES:
    features = jax.jit(fingerprint.outputs_to_features, static_argnums=1)
    chex.assert_trees_all_close(features(x, mode),
                                fingerprint.outputs_to_features(x, mode),
                                atol=1e-6)


def test_unknown_mode_in_features():
  with pytest.raises(ValueError, match="Unknown fingerprint mode"):
    fingerprint.outputs_to_features(jnp.zeros((2, 3)), "softmax")


def test_diagnostics_count_what_the_uaps_do():
  # Victim, a copy, and a model that the UAPs fool on every point; top-1
  # classes set by hand on K = 2 points, V = 1 view, U = 1 UAP.
  top1 = np.array([[[[0, 1], [2, 2]]],      # victim: fooled on point 0
                   [[[0, 1], [2, 2]]],      # copy
                   [[[0, 3], [1, 0]]]])     # other: fooled everywhere
  fps = layout.join(np.eye(NUM_CLASSES, dtype=np.float32)[top1])
  meta = [{"name": n, "kind": "k", "family": "f"} for n in ("v", "c", "o")]
  rows = diagnostics.per_model(fps, meta, 1, NUM_CLASSES)
  assert [r["name"] for r in rows] == ["v", "c", "o"]
  assert [r["uap_fooling_rate"] for r in rows] == [0.5, 0.5, 1.0]
  assert [r["clean_agreement"] for r in rows] == [1.0, 1.0, 0.5]
  assert [r["perturbed_agreement"] for r in rows] == [1.0, 1.0, 0.0]
  np.testing.assert_allclose([r["raw_cosine"] for r in rows], [1.0, 1.0, 0.25])
  clean = layout.clean_only(fps, 1, NUM_CLASSES)
  rows = diagnostics.per_model(clean, meta, 0, NUM_CLASSES)
  assert rows[2]["uap_fooling_rate"] is None
  assert rows[2]["perturbed_agreement"] is None
  assert rows[2]["clean_agreement"] == 0.5


# ---------------------------------------------------------------- black box


def answer(models, model_index, path_queries, output):
  """What a suspect's owner does: run the exported uint8 queries."""
  queries = blackbox.load_queries(path_queries)
  one = models.select([model_index])
  if output == "labels":
    return stack_lib.predict(one, queries)[0].argmax(-1)
  return stack_lib.predict(one, queries, output=output)[0]


@pytest.fixture(scope="module")
def export(tmp_path_factory, points_and_uaps):
  x_points, uaps = points_and_uaps
  path = str(tmp_path_factory.mktemp("bb") / "queries.npz")
  manifest = blackbox.export_queries(path, x_points, uaps,
                                     num_classes=NUM_CLASSES)
  return path, manifest


def test_export_manifest(export):
  path, manifest = export
  with open(blackbox.manifest_path_for(path)) as f:
    assert json.load(f) == manifest
  queries = blackbox.load_queries(path)
  assert queries.dtype == np.uint8
  controls = manifest["controls"]
  num_repeats = len(controls["repeat_positions"])
  assert num_repeats == (1 + U) * V * K  # a small grid is repeated whole
  assert controls["holdout_positions"] == []  # none given
  assert queries.shape == (2 * (1 + U) * V * K,) + IMAGE_SHAPE
  assert manifest["num_grid_queries"] == (1 + U) * V * K
  assert (manifest["K"], manifest["V"], manifest["U"]) == (K, V, U)
  assert manifest["C"] == IMAGE_SHAPE[-1]
  assert manifest["num_classes"] == NUM_CLASSES
  assert manifest["num_queries"] == len(queries)


@pytest.mark.parametrize("output, mode", [
    ("probs", "probs"), ("logits", "probs"), ("logits", "logits"),
    ("labels", "labels"), ("probs", "labels")])
def test_recorded_outputs_equal_model_fingerprints(
    models, points_and_uaps, export, tmp_path, output, mode):
  x_points, uaps = points_and_uaps
  path, manifest = export
  recorded = str(tmp_path / "answers.npz")
  np.savez(recorded, outputs=answer(models, 1, path, output))
  clean, perturbed = blackbox.load_recorded_outputs(recorded, manifest)
  assert clean.shape == (V, K, NUM_CLASSES)
  assert perturbed.shape == (U, V, K, NUM_CLASSES)
  from_outputs = fingerprint.fingerprints_from_outputs(clean, perturbed,
                                                       mode=mode)
  from_model = fingerprint.fingerprints(models, x_points, uaps, mode=mode)[1]
  np.testing.assert_allclose(from_outputs, from_model, atol=1e-5)


def test_black_box_without_uaps(models, points_and_uaps, tmp_path):
  x_points, _ = points_and_uaps
  none = np.zeros((0,) + IMAGE_SHAPE, np.float32)
  path = str(tmp_path / "queries.npz")
  manifest = blackbox.export_queries(path, x_points, none, num_classes=NUM_CLASSES)
  assert (manifest["U"], manifest["num_grid_queries"]) == (0, V * K)
  np.savez(tmp_path / "answers.npz", outputs=answer(models, 2, path, "logits"))
  clean, perturbed = blackbox.load_recorded_outputs(
      str(tmp_path / "answers.npz"), manifest)
  chex.assert_shape(perturbed, (0, V, K, NUM_CLASSES))
  chex.assert_trees_all_close(
      fingerprint.fingerprints_from_outputs(clean, perturbed),
      fingerprint.fingerprints(models, x_points, none)[2], atol=1e-5)


def test_query_id_reorders_answers(models, export, tmp_path):
  path, manifest = export
  outputs = answer(models, 0, path, "logits")
  perm = np.random.default_rng(0).permutation(len(outputs))
  np.savez(tmp_path / "a.npz", outputs=outputs[perm], query_id=perm,
           queries_sha256=manifest["queries_sha256"])
  np.savez(tmp_path / "b.npz", outputs=outputs)
  a = blackbox.load_recorded_outputs(str(tmp_path / "a.npz"), manifest)
  b = blackbox.load_recorded_outputs(str(tmp_path / "b.npz"), manifest)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])


def test_recorded_outputs_bad_input(models, export, tmp_path):
  path, manifest = export
  good = answer(models, 0, path, "probs")
  q = len(good)
  cases = [
      (dict(outputs=good[:-1]), "Q = \\(1 \\+ U\\) \\* V \\* K"),
      (dict(outputs=good[:, :3]), "classes but the victim has"),
      (dict(outputs=np.full(q, NUM_CLASSES)), "Labels must lie in"),
      (dict(outputs=good.argmax(-1).astype(np.float32)), "integer class labels"),
      (dict(outputs=good, query_id=np.zeros(q, np.int64)), "permutation"),
      (dict(outputs=good, queries_sha256="0" * 64), "different set of queries"),
      (dict(answers=good), "no 'outputs'"),
      (dict(outputs=good * np.nan), "NaN"),
  ]
  for i, (arrays, match) in enumerate(cases):
    file = str(tmp_path / f"bad{i}.npz")
    np.savez(file, **arrays)
    with pytest.raises(ValueError, match=match):
      blackbox.load_recorded_outputs(file, manifest)
  with pytest.raises(ValueError, match="manifest"):
    blackbox.load_recorded_outputs(str(tmp_path / "bad0.npz"), {"K": 1})
  with pytest.raises(ValueError, match="num_classes"):
    blackbox.export_queries(str(tmp_path / "q.npz"), np.zeros((1, 1, 2, 2, 1)),
                            np.zeros((1, 2, 2, 1)), num_classes=1)


def test_outputs_kind_mismatch_is_an_error():
  probs = np.full((2, 3, 4), 0.25, np.float32)
  labels = np.eye(4, dtype=np.float32)[np.zeros((2, 3), int)]
  with pytest.raises(ValueError, match="needs recorded logits"):
    fingerprint.fingerprints_from_outputs(probs, probs[None], mode="logits")
  with pytest.raises(ValueError, match="labels only"):
    fingerprint.fingerprints_from_outputs(labels, labels[None], mode="probs")
  with pytest.raises(ValueError, match="same V, K, C"):
    fingerprint.fingerprints_from_outputs(probs, probs[None, :1])
  assert fingerprint.detect_output_kind(probs) == "probs"
  assert fingerprint.detect_output_kind(labels) == "labels"
  assert fingerprint.detect_output_kind(np.log(probs)) == "logits"


@pytest.mark.parametrize("output, mode", [("logits", "logits"),
                                          ("probs", "probs"),
                                          ("labels", "labels")])
def test_declared_kind_gives_the_model_fingerprints(
    models, points_and_uaps, export, tmp_path, output, mode):
  x_points, uaps = points_and_uaps
  path, manifest = export
  recorded = str(tmp_path / "answers.npz")
  np.savez(recorded, outputs=answer(models, 1, path, output), kind=output)
  answers = blackbox.load_answers(recorded, manifest)
  assert (answers.kind, answers.declared) == (output, True)
  from_outputs = fingerprint.fingerprints_from_outputs(
      answers.clean, answers.perturbed, mode=mode, outputs=answers.kind)
  from_model = fingerprint.fingerprints(models, x_points, uaps, mode=mode)[1]
  np.testing.assert_allclose(from_outputs, from_model, atol=1e-5)


def test_model_probabilities_pass_the_sum_check(models, export, tmp_path):
  # float32 softmax rows of a real model are within PROBS_ATOL of 1, and
  # halved they are refused rather than read as logits.
  path, manifest = export
  probs = answer(models, 0, path, "probs")
  np.savez(tmp_path / "ok.npz", outputs=probs)
  assert blackbox.load_answers(str(tmp_path / "ok.npz"), manifest).kind == "probs"
  np.savez(tmp_path / "half.npz", outputs=probs / 2)
  with pytest.raises(ValueError, match="not 1"):
    blackbox.load_answers(str(tmp_path / "half.npz"), manifest)
  assert fingerprint.compute.PROBS_ATOL == 1e-3
