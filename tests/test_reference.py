"""The reference bank's plan, the reference population's rules, the open-world
tally and the encoder-free scores."""

from __future__ import annotations

import types

import numpy as np
import pytest

from uap_jax import config as config_lib
from uap_jax.fingerprint import layout
from uap_jax.verify import metrics
from uap_jax.verify import population
from uap_jax.verify import protocols
from uap_jax.verify import similarity
from uap_jax.verify import splits
from uap_jax.adapters import base as adapters_base
from uap_jax.runtime import stack as stack_lib
from uap_jax.zoo import reference


def _cfg(**kw):
  base = dict(victim_arch="lenet5", zoo_archs=["mlp"], reference_archs=["small_cnn"],
              reference_recipes=["base", "adam", "narrow"], reference_per_recipe=3)
  return config_lib.Config(**{**base, **kw})


def test_recipes_match_the_config_choices():
  assert tuple(reference.RECIPES) == config_lib.REFERENCE_RECIPES


def test_bank_plan_covers_every_architecture_recipe_and_part():
  plans = reference.plan_bank(_cfg())
  assert [(p.arch, p.shared("recipe")) for p in plans] == [
      (a, r) for a in ("lenet5", "mlp", "small_cnn") for r in ("base", "adam", "narrow")]
  for p in plans:
    assert [h["part"] for h in p.hparams] == list(reference.REFERENCE_PARTS)
    assert len(set(p.seeds)) == len(p.seeds)
  narrow = [p for p in plans if p.shared("recipe") == "narrow"][0]
  adam = [p for p in plans if p.shared("recipe") == "adam"][0]
  assert narrow.shared("width") == 0.5 and adam.shared("optimizer") == "adam"
  names = [n for p in plans for n in p.names]
  assert len(set(names)) == len(names)
  assert reference.plan_bank(_cfg(reference_per_recipe=0)) == []


def test_bank_plan_match_and_key():
  plan = reference.plan_bank(_cfg())[0]
  meta = reference.plan_meta(plan)
  assert reference.plan_matches(plan, meta)
  changed = [dict(m) for m in meta]
  changed[1]["hparams"] = dict(changed[1]["hparams"], lr=9.0)
  assert not reference.plan_matches(plan, changed)
  parts = {"victim": np.arange(3), "independent": np.arange(3, 6), "attacker": np.arange(6, 9)}
  key = reference.bank_key("digits", (8, 8, 1), 10, parts)
  assert key == reference.bank_key("digits", (8, 8, 1), 10, dict(parts))
  assert key != reference.bank_key("digits", (8, 8, 1), 10, {**parts, "victim": np.arange(1, 4)})
  assert key != reference.bank_key("mnist5k", (8, 8, 1), 10, parts)


def test_twins_train_as_long_as_the_victim_and_the_rest_as_the_zoo():
  epochs = lambda **kw: {p.shared("recipe"): p.shared("epochs") for p in reference.plan_bank(
      _cfg(reference_recipes=["base", "twin", "short", "long"], epochs=15, zoo_epochs=8,
           **kw)) if p.arch == "lenet5"}
  assert epochs() == {"base": 8.0, "twin": 15.0, "short": 4.0, "long": 16.0}
  # A given victim's --epochs say nothing of how it was trained.
  assert epochs(victim="py:some.module:build")["twin"] == 8.0
  # Victims trained for other lengths share a bank without sharing twins.
  names = lambda victim_epochs: [reference.checkpoint_name(p) for p in reference.plan_bank(
      _cfg(reference_recipes=["base", "twin"], epochs=victim_epochs, zoo_epochs=8))
                                 if p.arch == "mlp"]
  assert names(15) == ["mlp__base", "mlp__twin-e15"]
  assert names(10) == ["mlp__base", "mlp__twin-e10"]


@pytest.mark.parametrize("kw,match", [
    (dict(reference_per_recipe=-1), "--reference_per_recipe"),
    (dict(reference_recipes=["base", "bogus"]), "unknown recipe"),
    (dict(reference_archs=["resnet99"]), "resnet99"),
    (dict(reference_recipes=[]), "--reference_recipes is empty"),
])
def test_bad_bank_settings_are_refused(kw, match):
  with pytest.raises(ValueError, match=match):
    reference.check_config(_cfg(**kw))


def test_smoothed_targets_are_distributions():
  t = reference._targets(np.array([0, 2, 1]), 3, 0.1)
  np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
  assert np.all(t.argmax(-1) == [0, 2, 1]) and t.min() > 0
  np.testing.assert_array_equal(reference._targets(np.array([1]), 3, 0.0), [1])


def _fps_with_accuracy(accuracies, v=4, k=5, c=3, u=1, seed=0):
  """Fingerprints whose clean top-1 is right on the given share of points."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, c, (v, k))
  outs = np.full((len(accuracies), v, k, 1 + u, c), 0.1, np.float32)
  for m, a in enumerate(accuracies):
    right = rng.random((v, k)) < a
    top = np.where(right, labels, (labels + 1) % c)
    np.put_along_axis(outs[m, :, :, 0], top[..., None], 0.8, axis=-1)
    outs[m, :, :, 1:, 0] = 0.8
  return layout.join(outs), labels


def test_point_accuracy_reads_the_clean_outputs():
  fps, labels = _fps_with_accuracy([1.0, 0.0])
  np.testing.assert_allclose(population.point_accuracy(fps, labels, 1, 3), [1.0, 0.0])
  with pytest.raises(ValueError, match="do not match"):
    population.point_accuracy(fps, labels[:, :2], 1, 3)


def test_unfit_references_are_left_out_and_coverage_is_one_sided():
  meta = [{"name": f"m{i}", "kind": "reference", "arch": "mlp"} for i in range(6)]
  acc = np.array([0.95, 0.9, 0.92, 0.88, 0.2, 0.91])  # model 0: the victim
  ref = population.reference([1, 2, 3, 4, 5], meta, acc, 0, 10)
  assert ref.index == [1, 2, 3, 5] and ref.left_out == ["m4"]
  assert ref.description["models"] == 4 and ref.description["archs"] == {"mlp": 4}
  assert ref.covers(0.99) and ref.covers(0.86) and not ref.covers(0.80)
  row = {"verdict": "pirated", "p_value": 1e-6, "method": "model_z"}
  outside = population.apply_coverage(row, 0.5, ref)
  assert outside["verdict"] == "inconclusive" and outside["outside_reference"]
  assert "below every one" in outside["statement"]
  inside = population.apply_coverage(row, 0.9, ref)
  assert inside["verdict"] == "pirated" and "4 fit reference models" in inside["statement"]
  with pytest.raises(ValueError, match="reach point accuracy"):
    population.reference([4], meta, acc, 0, 10)


def test_point_confidence_is_the_mean_top1_probability_of_the_clean_outputs():
  fps, _ = _fps_with_accuracy([1.0, 0.5])  # clean rows: 0.8 on one class, 0.1 on two
  np.testing.assert_allclose(population.point_confidence(fps, 1, 3), [0.8, 0.8], atol=1e-6)
  logits = np.log(np.clip(fps, 1e-9, 1)) + 3.0  # the same outputs as logits
  np.testing.assert_allclose(population.point_confidence(logits, 1, 3), [0.8, 0.8],
                             atol=1e-5)
  np.testing.assert_allclose(
      population.point_confidence(layout.as_labels(fps, 1, 3), 1, 3), [1.0, 1.0])


def test_answers_more_or_less_confident_than_every_reference_are_outside_it():
  meta = [{"name": f"m{i}", "kind": "reference", "arch": "mlp"} for i in range(5)]
  acc = np.full(5, 0.9)
  confidence = np.array([0.97, 0.80, 0.85, 0.90, 0.88])  # model 0: the victim
  ref = population.reference([1, 2, 3, 4], meta, acc, 0, 10, confidence=confidence)
  assert ref.confidence_range == (0.80, 0.97)  # the victim's own is in the range
  assert ref.description["point_confidence"] == [0.80, 0.97]
  assert ref.covers(0.9, 0.975) and ref.covers(0.9, 0.795)
  assert ref.outside(0.9, 0.99) == ref.outside(0.9, 0.70) == "confidence"
  assert ref.outside(0.5, 0.99) == "accuracy" and ref.covers(0.9, None)
  row = {"verdict": "pirated", "p_value": 1e-6, "method": "model_z"}
  sharp = population.apply_coverage(row, 0.9, ref, 0.995)
  assert sharp["verdict"] == "inconclusive" and sharp["outside_reference"] == "confidence"
  assert "more or less confident (mean top-1 probability 0.995)" in sharp["statement"]
  assert population.apply_coverage(row, 0.9, ref, 0.9)["verdict"] == "pirated"
  # Without confidences the rule is off, as before.
  assert population.reference([1, 2, 3, 4], meta, acc, 0, 10).covers(0.9, 0.999)


@pytest.mark.parametrize("k,n", [(0, 10), (0, 100), (3, 50), (50, 50)])
def test_clopper_pearson_upper_bound(k, n):
  from scipy import stats  # pylint: disable=g-import-not-at-top
  upper = metrics.clopper_pearson_upper(k, n)
  if k == n:
    assert upper == 1.0
  else:
    # At the bound, seeing <= k events has probability 5 %.
    assert stats.binom.cdf(k, n, upper) == pytest.approx(0.05, abs=1e-6)
  if k == 0:
    assert upper == pytest.approx(1 - 0.05 ** (1 / n))
  assert metrics.clopper_pearson_upper(0, 0) is None


def test_uap_cosine_ignores_the_clean_outputs():
  rng = np.random.default_rng(1)
  outs = rng.random((3, 4, 5, 2, 3)).astype(np.float32)
  victim = layout.join(outs[0])
  base = similarity.scores("uap_cosine", None, layout.join(outs), victim, num_uaps=1,
                           num_classes=3)
  changed = outs.copy()
  changed[1:, :, :, 0] = rng.random(changed[1:, :, :, 0].shape)
  np.testing.assert_allclose(
      similarity.scores("uap_cosine", None, layout.join(changed), victim, num_uaps=1,
                        num_classes=3), base, rtol=1e-6)
  raw = similarity.scores("raw_cosine", None, layout.join(changed), victim, num_uaps=1,
                          num_classes=3)
  assert not np.allclose(raw[1:], base[1:])
  # Without a UAP the score is the whole-view cosine.
  clean = layout.join(outs[..., :1, :])
  np.testing.assert_allclose(
      similarity.scores("uap_cosine", None, clean, clean[0], num_uaps=0, num_classes=3),
      similarity.raw_cosine(clean, clean[0]))
  with pytest.raises(ValueError, match="Unknown score"):
    similarity.scores("bogus", None, clean, clean[0], num_uaps=0, num_classes=3)


def _follow_outputs(rng, m=4, v=6, k=8, c=5):
  """(M, V, K, 2, C) one-hot outputs: model 0 the victim, whose UAP moves
  half its points to the next class."""
  clean = rng.integers(0, c, (m, v, k))
  clean[:] = clean[0]
  moved = np.zeros((v, k), bool)
  moved[:, : k // 2] = True
  perturbed = clean.copy()
  perturbed[0][moved] = (clean[0][moved] + 1) % c
  labels = np.stack([clean, perturbed], -1)
  return np.eye(c, dtype=np.float32)[labels], moved


def test_uap_follow_counts_only_the_moves_the_suspect_follows():
  rng = np.random.default_rng(0)
  outs, moved = _follow_outputs(rng)
  c = outs.shape[-1]
  # Model 1 follows every move, 2 none (it ignores the UAP), 3 half of them.
  outs[1, :, :, 1] = outs[0, :, :, 1]
  half = moved.copy()
  half[:, 1::2] = False
  outs[3][half, 1] = outs[0][half, 1]
  fps = layout.join(outs)
  follow = similarity.scores("uap_follow", None, fps, fps[0], num_uaps=1, num_classes=c)
  assert follow.shape == (4, 6) and follow.dtype == np.float32
  np.testing.assert_allclose(follow[0], moved.mean(1))
  np.testing.assert_allclose(follow[1], follow[0])
  np.testing.assert_allclose(follow[2], 0.0)
  np.testing.assert_allclose(follow[3], half.mean(1))
  assert ((follow >= 0) & (follow <= 1)).all()
  # Top-1 only: probabilities that keep the top-1 score as their labels do.
  soft = outs * 0.6 + 0.4 / c
  np.testing.assert_allclose(
      similarity.scores("uap_follow", None, layout.join(soft), fps[0], num_uaps=1,
                        num_classes=c), follow)


def test_uap_follow_refuses_what_it_cannot_count():
  rng = np.random.default_rng(0)
  outs, _ = _follow_outputs(rng)
  c = outs.shape[-1]
  fps = layout.join(outs)
  with pytest.raises(ValueError, match="num_uaps"):
    similarity.uap_follow(fps, fps[0], num_uaps=0, num_classes=c)
  with pytest.raises(ValueError, match="do not match"):
    similarity.uap_follow(fps[:, :3], fps[0], num_uaps=1, num_classes=c)
  still = outs.copy()
  still[0, :, :, 1] = still[0, :, :, 0]
  still = layout.join(still)
  with pytest.raises(ValueError, match="none of the fingerprint points"):
    similarity.uap_follow(still, still[0], num_uaps=1, num_classes=c)


def test_a_given_victims_architecture_joins_the_bank_under_its_own_name():
  cfg = config_lib.Config(reference_archs=[], zoo_archs=["mlp"],
                          reference_recipes=["base", "narrow", "adam"],
                          reference_per_recipe=2)
  plans = reference.plan_bank(cfg, victim_arch=adapters_base.ADAPTER_ARCH)
  got = [(p.arch, p.shared("recipe")) for p in plans]
  # Its width cannot be scaled: no narrow stack of it.
  assert got == [("adapter", "base"), ("adapter", "adam"), ("mlp", "base"),
                 ("mlp", "narrow"), ("mlp", "adam")]
  with pytest.raises(ValueError, match="architecture digest"):
    reference.checkpoint_name(plans[0])
  assert reference.checkpoint_name(plans[0], "abc") == "adapter-abc__base"
  assert reference.checkpoint_name(plans[2], "abc") == "mlp__base"
  # The digest follows the architecture, not the weights.
  mlp = lambda seed, width=1.0: stack_lib.create("mlp", [seed], num_classes=10,
                                                 image_shape=(8, 8, 1), width=width)
  assert reference.architecture_digest(mlp(0)) == reference.architecture_digest(mlp(1))
  assert reference.architecture_digest(mlp(0)) != reference.architecture_digest(mlp(0, 0.5))


def test_split_keeps_the_bank_out_of_training_and_evaluation():
  meta = [{"name": "victim", "family": "victim", "kind": "victim"}]
  meta += [{"name": f"p{i}", "family": "piracy", "kind": "extract_soft"} for i in range(4)]
  meta += [{"name": f"i{i}", "family": "independent", "kind": "independent_seed"}
           for i in range(6)]
  bank = list(range(len(meta), len(meta) + 5))
  meta += [{"name": f"r{i}", "family": "independent", "kind": "reference"} for i in range(5)]
  split = splits.split_models(meta, seed=0, train_frac=0.4, calib_frac=0.3)
  assert set(bank) <= set(split["calib"])
  assert not set(bank) & (set(split["train"]) | set(split["eval"]))
  for fold in splits.leave_kind_out_splits(meta, seed=0, train_frac=0.4, calib_frac=0.3):
    assert fold["held_out_kind"] != "reference"
    assert set(bank) <= set(fold["calib"])


def test_reference_held_out_accuses_no_independent_of_a_shared_population():
  rng = np.random.default_rng(0)
  archs = ["a", "b", "c"]
  meta = [{"name": "victim", "family": "victim", "kind": "victim", "arch": "a"}]
  meta += [{"name": f"r{i}", "family": "independent", "kind": "reference",
            "arch": archs[i % 3], "recipe": ["x", "y"][i % 2]} for i in range(24)]
  sims = np.concatenate([np.full((1, 6), 0.99), 0.5 + 0.05 * rng.standard_normal((24, 6))])
  acc = np.full(len(meta), 0.9)
  out = protocols.reference_held_out(sims, meta, 0, list(range(1, 25)), acc, 10,
                                     protocols.Settings(alpha=1e-4, num_views=6))
  assert out["arch"]["held_out"] == 24 and out["recipe"]["held_out"] == 24
  assert out["arch"]["accused"] == 0
  # A group far above the others is accused when it is held out.
  sims[[i for i, m in enumerate(meta) if m.get("arch") == "c"]] = 0.98
  out = protocols.reference_held_out(sims, meta, 0, list(range(1, 25)), acc, 10,
                                     protocols.Settings(alpha=1e-4, num_views=6))
  assert out["arch"]["groups"]["c"]["accused"] == 8
  tally = protocols.false_accusations(
      {"num_independents": 2, "accused_independents": 0}, {}, out)
  assert tally["held_out"] == 2 + 48 and tally["accused"] == out["arch"]["accused"] + \
      out["recipe"]["accused"]
  assert 0 < tally["upper_95"] < 1


def test_label_answers_are_judged_by_a_probability_run():
  rng = np.random.default_rng(3)
  m, v, k, c = 12, 6, 8, 5
  # Point i of every view comes from cluster i (as the point rule makes them):
  # one class per cluster; under the UAP the victim sends cluster i to one
  # class, every reference model elsewhere at random.
  labels = np.broadcast_to(np.arange(k) % c, (v, k)).copy()
  outs = rng.random((m, v, k, 2, c)).astype(np.float32)
  outs[0, :, :, 1] = 0.05
  outs[0, :, np.arange(k), 1, (np.arange(k) + 1) % c] = 0.9
  outs[:, :, :, 0] = 0.05
  np.put_along_axis(outs[:, :, :, 0], np.broadcast_to(labels[None, ..., None], (m, v, k, 1)),
                    0.9, axis=-1)
  outs /= outs.sum(-1, keepdims=True)
  fps = layout.join(outs)
  meta = [{"name": "victim", "kind": "victim", "family": "victim"}] + [
      {"name": f"r{i}", "kind": "reference", "family": "independent", "arch": "mlp"}
      for i in range(m - 1)]
  copy = layout.as_labels(fps[:1], 1, c)            # the victim's own labels
  other = layout.as_labels(fps[5:6], 1, c)          # a reference model's labels
  settings = protocols.Settings(alpha=1e-4, num_views=v, score="uap_cosine")
  judge = lambda s, **kw: protocols.judge(
      None, s, fps, meta, 0, list(range(1, m)), settings, num_uaps=1, num_classes=c,
      point_labels=labels, **kw)
  pirated, = judge(copy, labels_only=True)
  independent, = judge(other, labels_only=True)
  assert pirated["verdict"] == "pirated" and pirated["point_accuracy"] == 1.0
  assert independent["verdict"] != "pirated"
  with pytest.raises(ValueError, match="need the label judge.*--stages=encoder,verify"):
    protocols.judge(None, copy, fps, meta, 0, list(range(1, m)),
                    protocols.Settings(score="encoder"), num_uaps=1, num_classes=c,
                    point_labels=labels, labels_only=True)
  np.testing.assert_array_equal(layout.as_labels(fps, 1, c).sum(-1), 2 * k)


def test_the_confidence_rule_is_off_for_scores_that_do_not_read_confidence():
  from uap_jax.verify import protocols  # pylint: disable=g-import-not-at-top
  fps, _ = _fps_with_accuracy([1.0, 0.5])
  confidence = protocols._confidence  # pylint: disable=protected-access
  raw = types.SimpleNamespace(config={"input_confidence": None})
  retempers = types.SimpleNamespace(
      config={"input_confidence": {"value": 0.8, "num_classes": 3, "kind": "probs"}})
  assert confidence(protocols.Settings(score="uap_follow"), raw, fps, 1, 3) is None
  assert confidence(protocols.Settings(score="encoder"), retempers, fps, 1, 3) is None
  np.testing.assert_allclose(confidence(protocols.Settings(score="encoder"), raw, fps, 1, 3),
                             [0.8, 0.8], atol=1e-6)


def test_calibration_independents_are_judged_each_without_itself():
  rng = np.random.default_rng(5)
  meta = ([{"name": "victim", "kind": "victim", "family": "victim"}]
          + [{"name": f"ind_{i}", "kind": "independent_seed", "family": "independent",
              "arch": "a"} for i in range(6)]
          + [{"name": f"ref_{i}", "kind": "reference", "family": "independent", "arch": "b",
              "recipe": "base"} for i in range(8)])
  sims = np.concatenate([np.full((1, 6), 0.99), 0.2 + 0.05 * rng.standard_normal((14, 6))])
  acc = np.full(len(meta), 0.9)
  calib = list(range(1, 15))
  settings = protocols.Settings(alpha=1e-4, num_views=6)
  out = protocols.calibration_left_out(sims, meta, 0, calib, acc, 10, settings)
  assert out["held_out"] == 6 and out["accused"] == 0  # the zoo's six, not the bank
  sims[3] = 0.97  # an innocent twin far above the others
  out = protocols.calibration_left_out(sims, meta, 0, calib, acc, 10, settings)
  assert out["accused_names"] == ["ind_2"]
  tally = protocols.false_accusations({"num_independents": 0, "accused_independents": 0},
                                      {}, {}, out)
  assert tally["sources"]["calibration_leave_one_out"] == {"held_out": 6, "accused": 1}
