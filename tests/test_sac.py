"""SAC-m-style reference: CutMix inputs, correlation matrices, distances, scores."""

import dataclasses

import jax
import chex
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk_metrics

from uap_jax.verify import sac
from uap_jax.verify import summary
from uap_jax.runtime import stack as stack_lib
from uap_jax import train

CFG = train.TrainConfig(epochs=6, batch_size=64, lr=0.05, log_every=1000)


@pytest.fixture(scope="module")
def digits():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  x = np.round(d.images[..., None] * 255.0 / 16.0).astype(np.uint8)
  return x, d.target.astype(np.int32)


@pytest.fixture(scope="module")
def trained(digits):
  """A victim and an independent model (other seed, disjoint data), tiny MLPs."""
  x, y = digits
  parts = [np.arange(0, 600), np.arange(600, 1200)]
  stack = stack_lib.create("mlp", [1, 2], [{"name": "victim"}, {"name": "indep"}],
                           num_classes=10, image_shape=(8, 8, 1))
  stack, _ = train.train_stack(stack, x, parts, CFG, labels=[y[p] for p in parts])
  return stack


def test_cutmix_pixels_come_from_the_pair_inside_and_outside_a_box(digits):
  x, _ = digits
  a, b = x[:16], x[16:32]
  key = jax.random.key(3)
  mixed = np.asarray(sac.cutmix(a, b, key))
  boxes = np.asarray(sac.cutmix_boxes(key, 16, 8, 8))
  assert mixed.shape == (16, 8, 8, 1) and mixed.dtype == np.float32
  assert np.all((boxes[:, 0] <= boxes[:, 1]) & (boxes[:, 2] <= boxes[:, 3]))
  assert boxes.min() >= 0 and boxes[:, :2].max() <= 8 and boxes[:, 2:].max() <= 8
  for i, (t, bo, le, r) in enumerate(boxes):
    inside = np.zeros((8, 8), bool)
    inside[t:bo, le:r] = True
    expect = np.where(inside[..., None], b[i], a[i]) / 255.0
    np.testing.assert_allclose(mixed[i], expect, atol=1e-6)
  # Seeded: the same key gives the same inputs, another key others.
  pool = x[:200]
  np.testing.assert_array_equal(sac.cutmix_inputs(pool, 20, jax.random.key(0)),
                                sac.cutmix_inputs(pool, 20, jax.random.key(0)))
  assert not np.array_equal(sac.cutmix_inputs(pool, 20, jax.random.key(0)),
                            sac.cutmix_inputs(pool, 20, jax.random.key(1)))


def pasted_box(img, base, donor):
  """Whether img is base with one box of donor pasted in (the box's bounds
  are where img differs from base)."""
  rows, cols = np.nonzero((img != base).any(-1))
  inside = np.zeros(img.shape[:2], bool)
  inside[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
  return (np.array_equal(img[inside], donor[inside])
          and np.array_equal(img[~inside], base[~inside]))


def test_cutmix_inputs_pair_two_distinct_pool_images_used_once():
  rng = np.random.default_rng(4)
  pool = rng.integers(0, 256, (40, 16, 16, 1)).astype(np.uint8)
  mixed = np.round(np.asarray(sac.cutmix_inputs(pool, 20, jax.random.key(2))) * 255)
  chex.assert_shape(mixed, (20, 16, 16, 1))
  used = []
  for img in mixed:
    # Random pixels: the two pool images that match a mix most are its pair.
    first, second = np.argsort(-(pool == img[None]).reshape(40, -1).sum(1))[:2]
    if np.array_equal(img, pool[first]):  # an empty box
      used.append(first)
      continue
    # The larger part may come from either image.
    assert (pasted_box(img, pool[first], pool[second])
            or pasted_box(img, pool[second], pool[first]))
    used += [first, second]
  # 2 N <= P: no pool image is used twice, and a pair is two images.
  assert len(used) == len(set(used)) > 20


@pytest.mark.parametrize("metric", sac.METRICS)
def test_correlation_matrices_match_numpy(metric):
  rng = np.random.default_rng(0)
  outputs = rng.random((3, 7, 5)).astype(np.float32)
  mats = np.asarray(sac.correlation_matrices(outputs, metric))
  assert mats.shape == (3, 7, 7) and mats.dtype == np.float32
  for m in range(3):
    if metric == "cosine":
      expect = sk_metrics.pairwise.cosine_similarity(outputs[m])
    else:
      expect = np.corrcoef(outputs[m])
    np.testing.assert_allclose(mats[m], expect, atol=1e-5)
  np.testing.assert_allclose(mats, np.swapaxes(mats, 1, 2), atol=1e-6)


@pytest.mark.parametrize("distance", sac.DISTANCES)
def test_matrix_distance(distance):
  rng = np.random.default_rng(1)
  ref = rng.uniform(-1, 1, (6, 6))
  mats = rng.uniform(-1, 1, (4, 6, 6))
  d = np.asarray(sac.matrix_distance(mats, ref, distance))
  diff = mats - ref
  expect = (np.abs(diff).mean((1, 2)) if distance == "l1"
            else np.sqrt((diff ** 2).mean((1, 2))))
  np.testing.assert_allclose(d, expect, rtol=1e-5)
  assert float(sac.matrix_distance(ref, ref, distance)) == 0.0


def test_victim_scores_zero_and_a_noisy_copy_beats_an_independent(trained, digits):
  x, _ = digits
  victim = trained.select([0])
  rng = np.random.default_rng(0)
  noisy = dataclasses.replace(victim, params=jax.tree.map(
      lambda p: p + 1e-3 * rng.standard_normal(p.shape).astype(p.dtype), victim.params),
      meta=[{"name": "copy"}])
  inputs = sac.cutmix_inputs(x[:600], 50, jax.random.key(0))
  for metric in sac.METRICS:
    s = sac.scores([victim, noisy, trained.select([1])], victim, inputs, metric=metric)
    assert s.shape == (3,)
    assert s[0] == 0.0
    assert s[2] < s[1] <= 0.0


def test_evaluate_scores_matches_sklearn_and_the_prediction_test():
  rng = np.random.default_rng(2)
  fam = ["piracy"] * 8 + ["independent"] * 6
  kinds = ["prune"] * 4 + ["distill"] * 4 + ["independent_seed"] * 6
  s = np.r_[rng.normal(1, 1, 8), rng.normal(0, 1, 6)]
  calib = rng.normal(0, 1, 5)
  res = summary.evaluate_scores(s, fam, kinds, calib, alpha=0.05)
  labels = np.r_[np.ones(8), np.zeros(6)]
  assert res["auc"]["all"] == pytest.approx(sk_metrics.roc_auc_score(labels, s))
  assert res["auc"]["prune"] == pytest.approx(
      sk_metrics.roc_auc_score(labels[np.r_[0:4, 8:14]], s[np.r_[0:4, 8:14]]))
  t = (s[0] - calib.mean()) / (calib.std(ddof=1) * np.sqrt(1 + 1 / 5))
  assert res["suspects"][0]["p_value"] == pytest.approx(stats.t.sf(t, 4))
  p = np.array([r["p_value"] for r in res["suspects"]])
  assert res["accused_independents"] == int((p[8:] < 0.05).sum())
  assert res["detected_piracy"] == int((p[:8] < 0.05).sum())
  assert res["accused_above_calib_max"] == int((s[8:] > calib.max()).sum())
  assert res["num_piracy"] == 8 and res["num_independents"] == 6


def test_bad_inputs(trained, digits):
  x, _ = digits
  with pytest.raises(ValueError, match="same shape|one shape"):
    sac.cutmix(x[:4], x[:5], jax.random.key(0))
  with pytest.raises(ValueError, match="num_samples"):
    sac.cutmix_inputs(x[:10], 1, jax.random.key(0))
  with pytest.raises(ValueError, match=">= 2 images"):
    sac.cutmix_inputs(x[:1], 4, jax.random.key(0))
  with pytest.raises(ValueError, match=r"\(P, H, W, C\)"):
    sac.cutmix_inputs(x[:10, ..., 0], 4, jax.random.key(0))
  with pytest.raises(ValueError, match="correlation metric"):
    sac.correlation_matrices(np.ones((3, 4)), "spearman")
  with pytest.raises(ValueError, match="N >= 2"):
    sac.correlation_matrices(np.ones((1, 4)))
  with pytest.raises(ValueError, match="NaN"):
    sac.correlation_matrices(np.full((3, 4), np.nan))
  with pytest.raises(ValueError, match="distance"):
    sac.matrix_distance(np.eye(3), np.eye(3), "cosine")
  with pytest.raises(ValueError, match="disagree on N"):
    sac.matrix_distance(np.eye(3), np.eye(4))
  with pytest.raises(ValueError, match="output"):
    sac.model_outputs(trained, x[:4], output="labels")
  other = stack_lib.create("mlp", [3], num_classes=4, image_shape=(8, 8, 1))
  with pytest.raises(ValueError, match="classes"):
    sac.scores([other], trained.select([0]), x[:4].astype(np.float32) / 255)
  with pytest.raises(ValueError, match=">= 3 calibration"):
    summary.evaluate_scores([0.0], ["piracy"], ["a"], [1.0, 2.0])
  with pytest.raises(ValueError, match="one of each"):
    summary.evaluate_scores([0.1], ["piracy", "independent"], ["a"], [0, 1, 2])


def test_misclassified_indices_and_error_agreement():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 4, 50)
  logits = rng.normal(size=(50, 4))
  wrong = np.nonzero(logits.argmax(-1) != labels)[0]
  idx = sac.misclassified_indices(labels, logits, 10, jax.random.key(0))
  assert len(idx) == min(10, len(wrong)) and set(idx) <= set(wrong)
  np.testing.assert_array_equal(idx, np.sort(idx))
  everything = sac.misclassified_indices(labels, logits, 1000, jax.random.key(1))
  np.testing.assert_array_equal(everything, wrong)
  suspects = np.stack([logits, -logits, logits + 1e-3])
  agree = sac.error_agreement(suspects, logits)
  assert agree[0] == 1.0 and agree[2] == 1.0 and agree[1] < 1.0
  assert agree[1] == pytest.approx(np.mean((-logits).argmax(-1) == logits.argmax(-1)))
  # The recorded-outputs path gives the stack path's scores.
  probs = jax.nn.softmax(jnp.asarray(suspects), axis=-1)
  from_outputs = sac.scores_from_outputs(probs, probs[0])
  assert from_outputs[0] == 0.0 and from_outputs.shape == (3,)
  with pytest.raises(ValueError, match="only"):
    sac.misclassified_indices(logits.argmax(-1), logits, 5, jax.random.key(0))
  with pytest.raises(ValueError, match=r"\(M, N, C\)"):
    sac.error_agreement(logits, logits)
