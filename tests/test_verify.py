"""Encoder, metrics, the verification test, model splits, end-to-end paths."""

import json

import jax
import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk_metrics

from uap_jax.fingerprint import blackbox
from uap_jax.verify import encoder as encoder_lib
from uap_jax import fingerprint
from uap_jax.verify import metrics
from uap_jax.runtime import stack as stack_lib
from uap_jax import verify

NUM_CLASSES = 4
IMAGE_SHAPE = (5, 5, 1)
K, V = 4, 12


# ---------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_sklearn(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(20, 200))
  labels = rng.integers(0, 2, n)
  labels[:2] = (0, 1)
  # Rounded scores give ties, which both must count the same way.
  scores = np.round(rng.normal(size=n) + 0.7 * labels, 1)
  assert metrics.roc_auc(scores, labels) == pytest.approx(
      sk_metrics.roc_auc_score(labels, scores), abs=1e-12)
  fpr, tpr, _ = sk_metrics.roc_curve(labels, scores)
  for target in (0.0, 0.01, 0.05, 0.2, 1.0):
    assert metrics.tpr_at_fpr(scores, labels, target) == pytest.approx(
        tpr[fpr <= target].max(), abs=1e-12)
  # Every distinct threshold is a point (scikit-learn drops collinear ones
  # unless told not to).
  fpr_all, tpr_all, _ = sk_metrics.roc_curve(labels, scores, drop_intermediate=False)
  got_fpr, got_tpr, _ = metrics.roc_points(scores, labels)
  np.testing.assert_allclose(got_fpr, fpr_all, atol=1e-12)
  np.testing.assert_allclose(got_tpr, tpr_all, atol=1e-12)


def test_metrics_bad_input():
  with pytest.raises(ValueError, match="both positives and negatives"):
    metrics.roc_auc([0.1, 0.2], [1, 1])
  with pytest.raises(ValueError, match="same length"):
    metrics.roc_auc([0.1, 0.2], [1])
  with pytest.raises(ValueError, match="labels must be"):
    metrics.roc_auc([0.1, 0.2], [1, 2])
  with pytest.raises(ValueError, match="NaN"):
    metrics.roc_auc([np.nan, 0.2], [1, 0])
  with pytest.raises(ValueError, match="fpr must be"):
    metrics.tpr_at_fpr([0.1, 0.2], [1, 0], 1.5)


# ---------------------------------------------------------------- encoder


def test_supcon_loss_matches_the_formula():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(6, 3))
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  y = np.array([0, 0, 1, 1, 1, 2])  # anchor 5 has no positive: left out
  t = 0.2
  expected = []
  for i in range(6):
    others = [a for a in range(6) if a != i]
    positives = [p for p in others if y[p] == y[i]]
    if not positives:
      continue
    log_den = np.log(np.sum([np.exp(z[i] @ z[a] / t) for a in others]))
    expected.append(-np.mean([z[i] @ z[p] / t - log_den for p in positives]))
  got = encoder_lib.supcon_loss(jax.numpy.asarray(z), jax.numpy.asarray(y), t)
  assert float(got) == pytest.approx(np.mean(expected), rel=1e-5)


def synthetic_fingerprints(seed=0, m=8, v=10, d=16):
  """Two groups of models whose views scatter around group centres."""
  rng = np.random.default_rng(seed)
  labels = np.arange(m) % 2
  centres = rng.normal(size=(2, d))
  fps = centres[labels][:, None] + rng.normal(0, 1.5, (m, v, d))
  return fps.astype(np.float32), labels


def test_encoder_loss_falls_and_is_deterministic():
  fps, labels = synthetic_fingerprints()
  a = encoder_lib.train(fps, labels, steps=120, batch_size=32, log_every=60,
                        seed=1)
  b = encoder_lib.train(fps, labels, steps=120, batch_size=32, log_every=60,
                        seed=1)
  c = encoder_lib.train(fps, labels, steps=120, batch_size=32, log_every=60,
                        seed=2)
  assert a.history.shape == (120,)
  # With 16 views of each label per batch, each anchor has 15 positives
  # among 31 others: the loss is bounded below by log(15), reached when the
  # labels separate perfectly. The excess over it must at least halve.
  excess = a.history - np.log(15)
  assert excess.min() > -1e-4
  assert excess[-20:].mean() < 0.5 * excess[:20].mean()
  np.testing.assert_array_equal(a.history, b.history)
  assert not np.array_equal(a.history, c.history)
  emb = encoder_lib.embed(a, fps)
  assert emb.shape == (8, 10, a.config["embed_dim"])
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-5)
  restored = encoder_lib.restore(jax.tree.map(np.asarray, a.state), a.config)
  np.testing.assert_array_equal(encoder_lib.embed(restored, fps), emb)
  np.testing.assert_array_equal(encoder_lib.embed((a.state, a.config), fps), emb)


def test_encoder_bad_input():
  fps, labels = synthetic_fingerprints()
  with pytest.raises(ValueError, match="both labels"):
    encoder_lib.train(fps, np.ones(8, int), steps=2)
  with pytest.raises(ValueError, match="\\(M, V, D\\)"):
    encoder_lib.train(fps[0], labels, steps=2)
  with pytest.raises(ValueError, match="one per model"):
    encoder_lib.train(fps, labels[:-1], steps=2)
  with pytest.raises(ValueError, match="1 \\(victim/piracy\\)"):
    encoder_lib.train(fps, labels + 1, steps=2)
  with pytest.raises(ValueError, match="Unknown encoder config"):
    encoder_lib.make_config(16, hiden=(3,))
  with pytest.raises(ValueError, match="temperature"):
    encoder_lib.make_config(16, temperature=0.0)
  with pytest.raises(ValueError, match="expects D"):
    encoder_lib.train(fps, labels, encoder_lib.make_config(15, steps=2))
  trained = encoder_lib.train(fps, labels, steps=2, batch_size=8)
  with pytest.raises(ValueError, match="length D"):
    encoder_lib.embed(trained, fps[..., :-1])
  with pytest.raises(ValueError, match="TrainedEncoder"):
    encoder_lib.embed("encoder", fps)


# ---------------------------------------------------------------- the test


def random_effects(rng, models, views, mean=0.0, between=0.1, within=0.05):
  return (mean + rng.normal(0, between, (models, 1))
          + rng.normal(0, within, (models, views)))


def test_welch_is_scipy_and_victim_itself_is_confident():
  rng = np.random.default_rng(0)
  reference = random_effects(rng, 20, 30)
  itself = 0.999 + rng.normal(0, 1e-3, 20)
  p = verify.p_value(itself, reference)
  assert p == pytest.approx(stats.ttest_ind(
      itself, reference.ravel(), equal_var=False, alternative="greater").pvalue)
  for method in ("welch", "model", "model_z"):
    result = verify.verify_suspect(itself, reference, method=method)
    assert result["confidence"] > 0.9999
    assert result["verdict"] == "pirated"
    assert result["views_used"] == 20


def test_model_test_holds_its_level_where_welch_does_not():
  accused = {"welch": 0, "model": 0}
  trials = 0
  # The rate given ONE reference varies with that reference's sampling
  # error; its average over references is the level of the test.
  for seed in range(10):
    rng = np.random.default_rng(seed)
    reference = random_effects(rng, 20, 40)
    for sims in random_effects(rng, 50, 20):  # independents: H0 holds
      trials += 1
      for method in accused:
        accused[method] += verify.p_value(sims, reference, method) < 0.05
  # Views of one model share its offset: Welch counts them as independent
  # draws and accuses far more than 5 %; the model-level test does not.
  assert accused["model"] / trials < 0.09
  assert accused["welch"] / trials > 0.25


def test_model_z_is_the_model_test_on_fisher_z_and_holds_its_level():
  rng = np.random.default_rng(3)
  # Cosines whose Fisher z follows the random-effects model: H0 holds.
  accused, trials = 0, 0
  for _ in range(10):
    reference = np.tanh(random_effects(rng, 20, 40))
    for sims in np.tanh(random_effects(rng, 50, 20)):
      trials += 1
      p = verify.p_value(sims, reference, "model_z")
      assert p == pytest.approx(verify.p_value(
          np.arctanh(sims), np.arctanh(reference), "model"))
      accused += p < 0.05
  assert accused / trials < 0.09
  # Cosines of exactly +-1 stay finite.
  assert np.all(np.isfinite(verify.fisher_z([-1.0, 1.0])))
  assert verify.p_value(np.ones(5), reference, "model_z") < 1e-4


def test_p_value_monotone_in_the_suspect_mean():
  rng = np.random.default_rng(1)
  reference = random_effects(rng, 10, 20)
  base = rng.normal(0, 0.05, 20)
  for method in verify.METHODS:
    ps = [verify.p_value(base + shift, reference, method)
          for shift in (-0.2, 0.0, 0.2, 0.5)]
    assert all(a >= b for a, b in zip(ps, ps[1:])), (method, ps)
  assert verify.p_value(base + 10, reference, "empirical") == pytest.approx(1 / 11)


def test_views_for_confidence_is_the_smallest():
  rng = np.random.default_rng(2)
  reference = random_effects(rng, 20, 20)
  sims = 0.3 + rng.normal(0, 0.05, 40)
  n = verify.views_for_confidence(sims, reference, 0.9999)
  assert n is not None and 2 <= n <= 40
  assert 1 - verify.p_value(sims[:n], reference) >= 0.9999
  if n > 2:
    assert 1 - verify.p_value(sims[:n - 1], reference) < 0.9999
  assert verify.views_for_confidence(reference[0], reference, 0.9999) is None


@pytest.mark.parametrize("seed", range(4))
def test_one_view_model_test_is_the_prediction_test(seed):
  rng = np.random.default_rng(seed)
  r = int(rng.integers(3, 30))
  reference = rng.normal(rng.normal(), rng.uniform(0.1, 2.0), r)
  for score in rng.normal(0, 2, 5):
    # The SAC prediction test this replaces.
    t = (score - reference.mean()) / (reference.std(ddof=1) * np.sqrt(1 + 1 / r))
    expect = stats.t.sf(t, df=r - 1)
    assert verify.score_p_value(score, reference) == pytest.approx(expect, rel=1e-10)
    assert verify.p_value([score], reference[:, None], "model") == pytest.approx(
        expect, rel=1e-10)
  with pytest.raises(ValueError, match="R >= 3"):
    verify.score_p_value(0.0, [1.0, 2.0])
  with pytest.raises(ValueError, match="NaN"):
    verify.score_p_value(np.nan, reference)
  # Welch still needs two views of the suspect.
  with pytest.raises(ValueError, match=">= 2 similarities"):
    verify.p_value([0.5], reference[:, None], "welch")


def test_decide():
  assert verify.decide(1e-5, 0.9, 0.1) == "pirated"
  assert verify.decide(0.2, 0.3, 0.1) == "inconclusive"
  assert verify.decide(0.7, 0.3, 0.1) == "not_pirated"
  assert verify.decide(1e-5, 0.05, 0.1) == "not_pirated"
  with pytest.raises(ValueError, match="alpha"):
    verify.decide(0.1, 0.5, 0.1, alpha=0.6)


def test_verify_bad_input():
  reference = np.zeros((5, 4))
  with pytest.raises(ValueError, match=">= 2 similarities"):
    verify.p_value([0.5], reference)
  with pytest.raises(ValueError, match="R >= 3"):
    verify.p_value([0.5, 0.6], reference[:2], "model")
  with pytest.raises(ValueError, match="Unknown test"):
    verify.p_value([0.5, 0.6], reference, "ztest")
  with pytest.raises(ValueError, match="NaN"):
    verify.p_value([0.5, np.nan], reference)
  with pytest.raises(ValueError, match="num_views"):
    verify.verify_suspect([0.5, 0.6], reference, num_views=1)
  with pytest.raises(ValueError, match="confidence"):
    verify.views_for_confidence([0.5, 0.6], reference, 1.0)


# ---------------------------------------------------------------- splits


def zoo_meta():
  meta = [{"name": "victim", "family": "victim", "kind": "victim"}]
  for kind, count in (("finetune", 4), ("extract", 4), ("prune", 2)):
    meta += [{"name": f"{kind}{i}", "family": "piracy", "kind": kind}
             for i in range(count)]
  for kind, count in (("same_data", 6), ("other_arch", 4)):
    meta += [{"name": f"{kind}{i}", "family": "independent", "kind": kind}
             for i in range(count)]
  return meta


def test_split_models():
  meta = zoo_meta()
  split = verify.split_models(meta, seed=0)
  parts = [set(split[p]) for p in ("train", "calib", "eval")]
  assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
  assert set.union(*parts) == set(range(len(meta)))
  assert 0 in parts[0]
  assert len(parts[1]) >= 3  # what the model-level tests need
  for part in parts:
    assert any(meta[i]["family"] == "independent" for i in part)
  assert all(meta[i]["family"] == "independent" for i in parts[1])
  for kind in ("finetune", "extract", "same_data", "other_arch"):
    assert any(meta[i]["kind"] == kind for i in parts[0])
    assert any(meta[i]["kind"] == kind for i in parts[2])
  assert split == verify.split_models(meta, seed=0)
  assert split["eval"] != verify.split_models(meta, seed=1)["eval"]
  assert split["train_names"] == [meta[i]["name"] for i in split["train"]]


def test_split_bad_input():
  meta = zoo_meta()
  with pytest.raises(ValueError, match=">= 3 independent"):
    verify.split_models(meta[:12], seed=0)
  with pytest.raises(ValueError, match="train_frac"):
    verify.split_models(meta, train_frac=0.8, calib_frac=0.3)
  with pytest.raises(ValueError, match="family"):
    verify.split_models(meta + [{"name": "x", "family": "stolen"}])
  verify.check_fractions(0.5, 0.25)
  for bad in ((0.0, 0.2), (0.5, 0.0), (0.6, 0.4), (1.2, 0.1)):
    with pytest.raises(ValueError, match="train_frac"):
      verify.check_fractions(*bad)


def test_leave_kind_out_never_trains_or_calibrates_on_the_evaluated_kind():
  meta = zoo_meta()
  folds = verify.leave_kind_out_splits(meta, seed=0)
  held = {(f["held_out_family"], f["held_out_kind"]) for f in folds}
  assert held == {("piracy", "finetune"), ("piracy", "extract"),
                  ("piracy", "prune"), ("independent", "same_data"),
                  ("independent", "other_arch")}
  for fold in folds:
    kind = fold["held_out_kind"]
    train, calib, ev = (set(fold[p]) for p in ("train", "calib", "eval"))
    assert not (train & calib or train & ev or calib & ev)
    assert all(meta[i]["kind"] != kind for i in train | calib)
    assert {i for i, m in enumerate(meta) if m["kind"] == kind} <= ev
    families = {meta[i]["family"] for i in ev}
    assert families == {"piracy", "independent"}
    assert calib and any(meta[i]["family"] == "independent" for i in train)


def test_evaluate():
  rng = np.random.default_rng(0)
  reference = random_effects(rng, 10, 20)
  sims = [0.8 + rng.normal(0, 0.02, 20) for _ in range(4)]
  sims += [random_effects(rng, 1, 20)[0] for _ in range(6)]
  families = ["piracy"] * 4 + ["independent"] * 6
  kinds = ["a", "a", "b", "b"] + ["indep"] * 6
  out = verify.evaluate(sims, np.array(families), np.array(kinds), reference,
                        method="model")
  json.dumps(out)  # JSON-able, numpy strings included
  assert out["auc"] == {"a": 1.0, "b": 1.0, "all": 1.0}
  assert out["tpr_at_1pct_fpr"] == 1.0 and out["tpr_at_5pct_fpr"] == 1.0
  assert out["num_piracy"] == 4 and out["num_independents"] == 6
  assert out["detected_piracy"] == 4
  assert out["accused_independents"] == sum(
      r["verdict"] == "pirated" for r in out["suspects"][4:])
  assert all(r["views_for_target"] is None or r["views_for_target"] <= 20
             for r in out["suspects"])
  with pytest.raises(ValueError, match="one of each per suspect"):
    verify.evaluate(sims, families[:-1], kinds, reference)


def test_auc_against_the_reference_counts_every_untrained_independent():
  from uap_jax.verify import summary  # pylint: disable=g-import-not-at-top
  meta = ([{"family": "piracy", "kind": "a"}, {"family": "piracy", "kind": "b"},
           {"family": "independent", "kind": "indep"}]
          + [{"family": "independent", "kind": "reference"}] * 3)
  # Pirates at 0.6 and 0.9; the evaluated independent at 0.1; the reference
  # at 0.2, 0.7 and 0.3, measured on the first 2 of 3 views.
  sims = np.array([[0.6, 0.6, -9], [0.9, 0.9, -9], [0.1, 0.1, 9],
                   [0.2, 0.2, 9], [0.7, 0.7, -9], [0.3, 0.3, 9]])
  split_auc = summary.auc_by_kind(sims[:3, :2].mean(1), [m["family"] for m in meta[:3]],
                                  [m["kind"] for m in meta[:3]])
  assert split_auc == {"a": 1.0, "b": 1.0, "all": 1.0}
  out = summary.auc_against_reference(sims, meta, [0, 1, 2], [3, 4, 5], num_views=2)
  assert out == {"a": pytest.approx(0.75), "b": 1.0, "all": pytest.approx(0.875)}
  # The reference model above a pirate is not counted twice when evaluated too.
  assert summary.auc_against_reference(sims, meta, [0, 1, 2, 4], [3, 4, 5], 2) == out


def test_views_and_one_number_scores_share_one_summary():
  rng = np.random.default_rng(5)
  families = ["piracy"] * 7 + ["independent"] * 9
  kinds = ["a"] * 3 + ["b"] * 4 + ["indep"] * 9
  # Overlapping groups, so that neither AUC nor TPR is trivially 0 or 1.
  means = np.r_[rng.normal(0.3, 0.2, 7), rng.normal(0.1, 0.2, 9)]
  sims = means[:, None] + rng.normal(0, 0.05, (16, 20))
  reference = random_effects(rng, 6, 20, mean=0.1, between=0.2)
  views = verify.evaluate(sims, families, kinds, reference, num_views=20, method="model")
  mean_sims = np.array([r["similarity_mean"] for r in views["suspects"]])
  np.testing.assert_allclose(mean_sims, sims.mean(1))
  scores = verify.evaluate_scores(mean_sims, families, kinds, reference.mean(1), alpha=0.01)
  labels = np.r_[np.ones(7), np.zeros(9)]
  assert 0.0 < views["auc"]["all"] < 1.0
  assert views["auc"]["all"] == pytest.approx(sk_metrics.roc_auc_score(labels, mean_sims))
  for key in ("auc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "num_piracy", "num_independents"):
    assert views[key] == scores[key], key
  # One-number scores: accused exactly where the one-view model test says so.
  p = np.array([verify.score_p_value(v, reference.mean(1)) for v in mean_sims])
  assert scores["detected_piracy"] == int((p[:7] < 0.01).sum())
  assert scores["accused_independents"] == int((p[7:] < 0.01).sum())
  assert [r["verdict"] for r in scores["suspects"]] == [
      "pirated" if v < 0.01 else "not_pirated" for v in p]
  assert verify.brief(views) == {k: views[k] for k in verify.DETECTION_FIELDS}
  assert verify.headline(views)["test"] == "model"


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_zoo():
  """A victim, 3 perturbed copies (piracy), 6 other seeds (independent)."""
  seeds = [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]
  meta = ([{"name": "victim", "family": "victim", "kind": "victim"}]
          + [{"name": f"copy{i}", "family": "piracy", "kind": "copy"}
             for i in range(3)]
          + [{"name": f"indep{i}", "family": "independent", "kind": "seed"}
             for i in range(6)])
  zoo = stack_lib.create("mlp", seeds, meta=meta, num_classes=NUM_CLASSES,
                         image_shape=IMAGE_SHAPE)
  noise_scale = np.array([0, 0.02, 0.02, 0.02] + [0] * 6, np.float32)
  keys = jax.random.split(jax.random.key(0), len(jax.tree.leaves(zoo.params)))
  leaves = [p + noise_scale.reshape((-1,) + (1,) * (p.ndim - 1))
            * jax.random.normal(k, p.shape) * p.std()
            for p, k in zip(jax.tree.leaves(zoo.params), keys)]
  zoo.params = jax.tree.unflatten(jax.tree.structure(zoo.params), leaves)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (80,) + IMAGE_SHAPE).astype(np.uint8)
  logits = stack_lib.predict(zoo.select([0]), images)[0]
  x_points = images[fingerprint.select_points(logits, K, V, seed=0)]
  uaps = rng.uniform(-0.3, 0.3, (1,) + IMAGE_SHAPE).astype(np.float32)
  return zoo, x_points, uaps


@pytest.mark.parametrize("mode, output", [("probs", "probs"),
                                          ("labels", "labels")])
def test_recorded_outputs_and_model_give_the_same_verdict(
    tiny_zoo, tmp_path, mode, output):
  zoo, x_points, uaps = tiny_zoo
  fps = np.asarray(fingerprint.fingerprints(zoo, x_points, uaps, mode=mode))
  train = [0, 1, 2, 4, 5]
  calib = [6, 7, 8]
  labels = verify.encoder_labels([zoo.meta[i] for i in train])
  trained = encoder_lib.train(fps[train], labels, steps=150, batch_size=32,
                              log_every=150)
  reference = verify.similarities(trained, fps[calib], fps[0])
  # The suspect (a held-out copy) answers the exported uint8 queries.
  path = str(tmp_path / "queries.npz")
  manifest = blackbox.export_queries(path, x_points, uaps,
                                     num_classes=NUM_CLASSES)
  queries = blackbox.load_queries(path)
  outputs = stack_lib.predict(zoo.select([3]), queries, output="probs")[0]
  if output == "labels":
    outputs = outputs.argmax(-1)  # a label-only API: (Q,) integers
  np.savez(tmp_path / "answers.npz", outputs=outputs)
  clean, perturbed = blackbox.load_recorded_outputs(
      str(tmp_path / "answers.npz"), manifest)
  recorded_fps = fingerprint.fingerprints_from_outputs(clean, perturbed,
                                                       mode=mode)
  by_record = verify.similarities(trained, recorded_fps, fps[0])
  by_model = verify.similarities(trained, fps[3], fps[0])
  np.testing.assert_allclose(by_record, by_model, atol=1e-5)
  for method in ("welch", "model"):
    a = verify.verify_suspect(by_record, reference, num_views=10, method=method)
    b = verify.verify_suspect(by_model, reference, num_views=10, method=method)
    assert a["verdict"] == b["verdict"]
    assert a["p_value"] == pytest.approx(b["p_value"], rel=1e-3, abs=1e-12)
  # The victim against itself: more similar than the calibration
  # independents, and confident against a synthetic independent reference.
  itself = verify.similarities(trained, fps[0], fps[0])
  assert itself.mean() > reference.mean()
  synthetic = random_effects(np.random.default_rng(0), 20, V)
  for method in ("welch", "model"):
    assert verify.verify_suspect(itself, synthetic, method=method)[
        "confidence"] > 0.9999
