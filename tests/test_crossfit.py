"""Cross-fitted encoders: no bank model is scored by an encoder that trained on it."""

import numpy as np
import pytest

from uap_jax.runtime.workdir import Workdir
from uap_jax.runtime import checkpoint
from uap_jax.verify import crossfit
from uap_jax.verify import encoder as encoder_lib
from uap_jax.verify import protocols
from uap_jax.verify import similarity
from uap_jax.verify import splits


def _meta():
  """A victim, 2 pirates, 2 zoo independents, a bank of 2 archs x 2 recipes x 2."""
  meta = [{"name": "victim", "family": "victim", "kind": "victim", "arch": "a"}]
  meta += [{"name": f"p{i}", "family": "piracy", "kind": "extract_soft", "arch": "a"}
           for i in range(2)]
  meta += [{"name": f"i{i}", "family": "independent", "kind": "independent_seed",
            "arch": "a"} for i in range(2)]
  meta += [{"name": f"r_{arch}_{recipe}_{i}", "family": "independent", "kind": "reference",
            "arch": arch, "recipe": recipe}
           for arch in ("a", "b") for recipe in ("base", "adam") for i in range(2)]
  return meta


def _fingerprints(meta, views=6, dim=12, seed=0):
  rng = np.random.default_rng(seed)
  centre = {"victim": 1.0, "piracy": 1.0, "independent": -1.0}
  return np.stack([centre[m["family"]] + rng.normal(size=(views, dim))
                   for m in meta]).astype(np.float32)


CONFIG = encoder_lib.make_config(12, hidden=(8,), embed_dim=4, steps=20, batch_size=16)


def test_arch_groups_train_on_every_other_architecture():
  meta = _meta()
  bank = splits.bank_models(meta)
  groups, training, by = crossfit.bank_groups(meta, bank, "arch")
  assert by == "arch" and len(groups) == 2
  for group, others in zip(groups, training):
    assert {meta[i]["arch"] for i in group} == {meta[group[0]]["arch"]}
    assert sorted(group + others) == bank and not set(group) & set(others)


def test_cell_groups_train_on_models_sharing_neither_arch_nor_recipe():
  meta = _meta()
  groups, training, by = crossfit.bank_groups(meta, splits.bank_models(meta), "cell")
  assert by == "arch+recipe" and len(groups) == 4
  for group, others in zip(groups, training):
    g = meta[group[0]]
    assert others and all(meta[i]["arch"] != g["arch"] and meta[i]["recipe"] != g["recipe"]
                          for i in others)


def test_a_single_architecture_falls_back_to_recipe_then_halves():
  meta = _meta()
  only_a = [i for i in splits.bank_models(meta) if meta[i]["arch"] == "a"]
  groups, _, by = crossfit.bank_groups(meta, only_a, "arch")
  assert by == "recipe" and len(groups) == 2
  one_cell = [i for i in only_a if meta[i]["recipe"] == "base"]
  groups, training, by = crossfit.bank_groups(meta, one_cell, "arch")
  assert by == "halves" and groups == [training[1], training[0]]
  assert crossfit.bank_groups(meta, one_cell, "none") == ([], [], "none")
  with pytest.raises(ValueError, match="--enc_crossfit"):
    crossfit.bank_groups(meta, one_cell, "bogus")


def test_auto_cross_fits_by_architecture_from_three_architectures_on():
  meta = _meta()
  bank = splits.bank_models(meta)
  assert crossfit.resolve("auto", meta, bank) == "none"  # two architectures
  meta += [{"name": f"r_c_base_{i}", "family": "independent", "kind": "reference",
            "arch": "c", "recipe": "base"} for i in range(2)]
  bank = splits.bank_models(meta)
  assert crossfit.resolve("auto", meta, bank) == "arch"
  for mode in ("arch", "recipe", "cell", "none"):
    assert crossfit.resolve(mode, meta, bank) == mode
  with pytest.raises(ValueError, match="--enc_crossfit"):
    crossfit.resolve("bogus", meta, bank)
  # The encoders keep the mode auto came to, which the protocols' folds repeat.
  model = crossfit.train(_fingerprints(meta), meta, [0, 1, 3], bank, CONFIG, "auto",
                         verbose=False)
  assert model.mode == model.by == "arch" and len(model.encoders) == 3
  one = crossfit.train(_fingerprints(meta), meta, [0, 1, 3], bank[:4], CONFIG, "auto",
                       verbose=False)
  assert one.mode == "none" and len(one.encoders) == 1


def test_no_encoder_trains_on_the_bank_group_it_scores(monkeypatch):
  meta = _meta()
  seen = []
  real = splits.train_encoder
  monkeypatch.setattr(splits, "train_encoder",
                      lambda f, m, idx, c, **kw: seen.append(list(idx)) or real(f, m, idx, c, **kw))
  fps = _fingerprints(meta)
  train = [0, 1, 3]
  model = crossfit.train(fps, meta, train, splits.bank_models(meta), CONFIG, "arch")
  assert len(seen) == len(model.encoders) == len(model.groups) == 2
  for idx, group in zip(seen, model.groups):
    assert set(train) <= set(idx) and not set(idx) & set(group)


def test_bank_models_get_their_group_encoder_and_others_the_mean():
  meta = _meta()
  fps = _fingerprints(meta)
  model = crossfit.train(fps, meta, [0, 1, 3], splits.bank_models(meta), CONFIG, "arch")
  per = [similarity.similarities(e, fps, fps[0]) for e in model.encoders]
  sims = model.similarities(fps, fps[0], rows=range(len(meta)))
  for f, group in enumerate(model.groups):
    np.testing.assert_allclose(sims[group], per[f][group], atol=1e-6)
  rest = [i for i in range(len(meta)) if i not in sum(model.groups, [])]
  np.testing.assert_allclose(sims[rest], np.mean(per, 0)[rest], atol=1e-6)
  # Outside suspects (no rows): the mean, whatever model they copy.
  np.testing.assert_allclose(model.similarities(fps[5:7], fps[0]), np.mean(per, 0)[5:7],
                             atol=1e-6)
  # Rows in another order follow their models.
  order = [9, 2, 5]
  np.testing.assert_allclose(model.similarities(fps[order], fps[0], rows=order), sims[order],
                             atol=1e-6)
  with pytest.raises(ValueError, match="row indices"):
    model.similarities(fps[:3], fps[0], rows=[0, 1])


def test_without_a_bank_it_is_one_encoder_on_the_zoo_alone():
  meta = _meta()[:5]
  fps = _fingerprints(meta)
  model = crossfit.train(fps, meta, [0, 1, 3], [], CONFIG, "arch")
  assert (model.by, model.groups, len(model.encoders)) == ("none", [], 1)
  single = splits.train_encoder(fps, meta, [0, 1, 3], CONFIG)
  np.testing.assert_allclose(model.similarities(fps, fps[0], rows=range(5)),
                             similarity.similarities(single, fps, fps[0]), atol=1e-6)


def test_saved_and_restored_encoders_score_the_same(tmp_path):
  meta = _meta()
  fps = _fingerprints(meta)
  model = crossfit.train(fps, meta, [0, 1, 3], splits.bank_models(meta), CONFIG, "cell")
  workdir = Workdir(str(tmp_path))
  workdir.save_arrays("encoder", *crossfit.to_arrays(model))
  restored = crossfit.from_arrays(*checkpoint.load_arrays(workdir.checkpoint_dir("encoder")))
  assert (restored.groups, restored.by, restored.mode) == (model.groups, model.by, "cell")
  rows = range(len(meta))
  np.testing.assert_allclose(restored.similarities(fps, fps[0], rows),
                             model.similarities(fps, fps[0], rows), atol=1e-6)


def test_the_label_judge_is_saved_beside_the_encoders_and_never_outlives_them(tmp_path):
  from uap_jax.runtime.artifacts import Artifacts  # pylint: disable=g-import-not-at-top
  meta = _meta()
  fps = _fingerprints(meta)
  model = crossfit.train(fps, meta, [0, 1, 3], [], CONFIG, "none", verbose=False)
  judge = crossfit.train(-fps, meta, [0, 1, 3], [], CONFIG, "none", verbose=False)
  artifacts = Artifacts(Workdir(str(tmp_path), writer=True))
  assert artifacts.label_judge() is None  # a run made before there was one
  artifacts.save_encoder(model, {}, judge)
  np.testing.assert_allclose(artifacts.label_judge().similarities(fps, fps[0]),
                             judge.similarities(fps, fps[0]), atol=1e-6)
  # A rerun of labels (--fp_mode=labels) has no label judge: the old one goes.
  artifacts.save_encoder(model, {})
  assert artifacts.label_judge() is None
  assert artifacts.encoder().similarities(fps, fps[0]).shape == (len(meta), fps.shape[1])


def test_held_out_bank_groups_are_scored_by_encoders_that_never_saw_them(monkeypatch):
  meta = _meta()
  fps = _fingerprints(meta)
  calls = []
  real = crossfit.train
  monkeypatch.setattr(crossfit, "train",
                      lambda f, m, t, bank, c, mode, **kw: calls.append(list(bank))
                      or real(f, m, t, bank, c, mode, **kw))
  bank = splits.bank_models(meta)
  accuracy = np.ones(len(meta))
  settings = protocols.Settings(num_views=6, alpha=1e-4)
  out = protocols.reference_held_out(np.zeros(fps.shape[:2]), meta, 0, [3, 4] + bank,
                                     accuracy, 10, settings, fps=fps, train=[0, 1, 3],
                                     encoder_config=CONFIG, crossfit_by="arch")
  groups = [(by, g) for by in ("arch", "recipe") for g in sorted({meta[i][by] for i in bank})]
  assert len(calls) == len(groups)
  for (by, g), trained_on in zip(groups, calls):
    assert all(meta[i][by] != g for i in trained_on)
    assert out[by]["groups"][g]["held_out"] == 4
