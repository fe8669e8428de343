"""The removal kinds: pirates who know the method (uap_jax.zoo.removal)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uap_jax import pipeline
from uap_jax import train
from uap_jax import zoo as zoo_lib
from uap_jax.config import Config, DEFAULT_KINDS, REMOVAL_KINDS
from uap_jax.runtime import stack as stack_lib
from uap_jax.runtime.context import RunContext
from uap_jax.runtime.workdir import Workdir
from uap_jax.zoo import removal

XI = 0.1
SAMPLES = 60


def _config(workdir, **overrides):
  base = dict(workdir=str(workdir), dataset="digits", victim_arch="mlp",
              zoo_archs=["mlp"], epochs=12, batch_size=64, lr=0.05, zoo_epochs=3,
              finetune_epochs=1, zoo_count=2, zoo_kinds=list(REMOVAL_KINDS),
              prune_ratios=[0.3, 0.7], finetune_lrs=[0.01], removal_rounds=2,
              removal_samples=SAMPLES, removal_xi=XI, strategy="loop",
              stages=["victim", "zoo"])
  base.update(overrides)
  return Config(**base)


@pytest.fixture(scope="module")
def removal_zoo(tmp_path_factory):
  """A victim and two models of each removal kind, every training call recorded."""
  cfg = _config(tmp_path_factory.mktemp("removal"))
  calls, real = [], train.train_stack

  def record(stack, x_pool, index, tc, **kwargs):
    calls.append({"desc": kwargs.get("desc"), "pool": x_pool, "index": index,
                  "target": tc.target, "labels": kwargs.get("labels"),
                  "masks": kwargs.get("masks")})
    return real(stack, x_pool, index, tc, **kwargs)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train, "train_stack", record)
    pipeline.run(cfg)
  return RunContext(cfg, Workdir(cfg.workdir)), calls


def _calls(calls, kind):
  return [c for c in calls if c["desc"].startswith(kind + "__")]


def test_removal_kinds_are_named_not_default():
  assert not set(REMOVAL_KINDS) & set(Config().zoo_kinds)
  assert set(Config().zoo_kinds) == set(DEFAULT_KINDS)
  plans = zoo_lib.plan_zoo(_config("/unused"))
  assert {p.kind for p in plans} == set(REMOVAL_KINDS)
  assert all(p.family == "piracy" and p.part == "attacker" for p in plans)


@pytest.mark.parametrize("overrides, message", [
    (dict(removal_rounds=0), "--removal_rounds"),
    (dict(removal_xi=-0.1), "--removal_xi"),
    (dict(removal_samples=3), "--removal_samples"),
    (dict(removal_repel=1.5), "--removal_repel"),
    (dict(prune_ratios=[], zoo_kinds=["fine_prune"]), "--prune_ratios"),
])
def test_bad_removal_settings_name_the_flag(overrides, message):
  with pytest.raises(ValueError, match=message):
    zoo_lib.plan_zoo(_config("/unused", **overrides))


def test_removal_xi_defaults_to_the_owners_radius():
  plans = zoo_lib.plan_zoo(_config("/unused", removal_xi=0.0, uap_xi=0.07))
  uat = next(p for p in plans if p.kind == "finetune_uat")
  assert uat.shared("xi") == pytest.approx(0.07)


def test_every_removal_model_is_a_trained_changed_copy(removal_zoo):
  ctx, _ = removal_zoo
  victim = ctx.artifacts.victim
  flat_victim = np.concatenate([np.ravel(a[0]) for a in jax.tree.leaves(victim.params)])
  seen = set()
  for stack in ctx.artifacts.zoo:
    for i, m in enumerate(stack.meta):
      seen.add(m["kind"])
      flat = np.concatenate([np.ravel(a[i]) for a in jax.tree.leaves(stack.params)])
      if flat.shape == flat_victim.shape:
        assert not np.allclose(flat, flat_victim), m["name"]
      assert 0.5 < m["test_accuracy"] <= 1.0, m["name"]
  assert seen == set(REMOVAL_KINDS)


def test_universal_adversarial_finetune_trains_on_its_own_bounded_perturbations(removal_zoo):
  ctx, calls = removal_zoo
  uat = _calls(calls, "finetune_uat")
  assert len(uat) == 2  # one fine-tuning per round
  n_pool = len(ctx.data.x_train)
  for call in uat:
    pool, index = call["pool"], call["index"]
    own = index[0][:len(index[0]) // 2]
    for i, ix in enumerate(index):
      adv = ix[len(own):]
      assert np.all(adv >= n_pool) and np.array_equal(ix[:len(own)], own)
      diff = pool[adv].astype(int) - pool[own].astype(int)
      assert np.abs(diff).max() <= XI * 255 + 1  # clip(x + v), v within xi
      assert np.abs(diff).max() > 0
      assert np.array_equal(call["labels"][i][len(own):], call["labels"][i][:len(own)])
    # Each copy attacks itself: the two copies' perturbations differ.
    d0 = pool[index[0][len(own):]].astype(int) - pool[own].astype(int)
    d1 = pool[index[1][len(own):]].astype(int) - pool[own].astype(int)
    assert not np.array_equal(d0, d1)


def test_fine_pruning_cuts_the_least_active_units_and_keeps_them_cut(removal_zoo):
  ctx, calls = removal_zoo
  (call,) = _calls(calls, "fine_prune")
  stack = next(s for s in ctx.artifacts.zoo if s.meta[0]["kind"] == "fine_prune")
  x = ctx.data.x_train[ctx.parts["attacker"][:removal.UAP_IMAGES]]
  victim = zoo_lib.broadcast_victim(ctx.artifacts.victim, stack.meta)
  activity = removal.head_input_activity(victim, x)
  kernel = np.asarray(removal.head_kernel(stack.params, batch_dims=1))
  for i, ratio in enumerate([0.3, 0.7]):
    cut = np.flatnonzero(np.all(kernel[i] == 0, axis=1))
    assert len(cut) == int(ratio * kernel.shape[1])
    assert activity[i][cut].max() <= np.delete(activity[i], cut).min()
  assert call["masks"] is not None


def test_head_input_activity_reproduces_the_mean_logits():
  stack = stack_lib.create("mlp", [0, 1], num_classes=4, image_shape=(6, 6, 1))
  x = np.random.default_rng(0).integers(0, 256, (32, 6, 6, 1), dtype=np.uint8)
  activity = removal.head_input_activity(stack, x)
  logits = np.asarray(jax.vmap(stack.logits_fn, in_axes=(0, None))(
      stack.variables, stack_lib.to_float(x)))
  head = jax.tree.map(lambda a: a, stack.params)["head"]
  expected = np.einsum("kf,kfc->kc", activity, np.asarray(head["kernel"])) + np.asarray(head["bias"])
  np.testing.assert_allclose(logits.mean(1), expected, rtol=1e-4, atol=1e-5)
  assert activity.min() >= 0  # ReLU features


def test_removal_distillation_learns_the_answers_and_their_complement(removal_zoo):
  ctx, calls = removal_zoo
  rd = _calls(calls, "distill_removal")
  assert len(rd) == 2 and all(c["target"] == "soft" for c in rd)
  victim = ctx.artifacts.victim
  for call in rd:
    for ix, target in zip(call["index"], call["labels"]):
      assert len(ix) == 2 * SAMPLES and target.shape == (2 * SAMPLES, ctx.data.num_classes)
      np.testing.assert_allclose(target.sum(1), 1.0, atol=1e-5)
      answers = np.asarray(jax.nn.softmax(victim.logits_fn(
          jax.tree.map(lambda a: a[0], victim.variables),
          stack_lib.to_float(call["pool"][ix]))))
      np.testing.assert_allclose(target[:SAMPLES], answers[:SAMPLES], atol=1e-5)
      np.testing.assert_allclose(target[SAMPLES:], removal.away_from(answers[SAMPLES:]),
                                 atol=1e-5)
  meta = next(s for s in ctx.artifacts.zoo
              if s.meta[0]["kind"] == "distill_removal").meta
  assert all(m["queries"] == 3 * SAMPLES for m in meta)  # clean once, perturbed per round


def test_away_from_moves_the_mass_off_the_answer():
  p = jax.nn.softmax(jax.random.normal(jax.random.key(0), (50, 10)) * 3)
  q = removal.away_from(np.asarray(p))
  np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-6)
  assert q.min() >= 0
  assert np.all(q.argmin(1) == np.asarray(p).argmax(1))


def test_mixed_queries_blend_pairs_of_the_attackers_images():
  values = np.arange(0, 200, 10, dtype=np.uint8)
  x = np.broadcast_to(values[:, None, None, None], (len(values), 8, 8, 1)).copy()
  out = removal.mixed_queries(x, 3, np.random.default_rng(0))
  assert out.shape == (3 * len(x), 8, 8, 1) and out.dtype == np.uint8
  novel = 0
  for img in out:
    distinct = np.unique(img)
    assert len(distinct) <= 2  # a mixup (one blended value) or a CutMix (two sources)
    assert distinct.min() >= values.min() and distinct.max() <= values.max()
    novel += not any(np.array_equal(img, s) for s in x)
  assert novel > len(out) // 2


def test_extract_mixup_queries_are_blends_not_shifts(removal_zoo):
  ctx, calls = removal_zoo
  (call,) = _calls(calls, "extract_mixup")
  n_pool = len(ctx.data.x_train)
  extra = np.unique(np.concatenate(call["index"]))
  extra = extra[extra >= n_pool]
  assert len(extra) >= len(ctx.parts["attacker"])  # at least one blend per image
  assert call["target"] == "teacher_soft"
  assert jnp.asarray(call["pool"][extra]).dtype == jnp.uint8


def test_a_victim_without_a_dense_head_skips_fine_pruning_only():
  stacked = {"body": {"w": jnp.ones((1, 4, 3))}}
  assert set(zoo_lib.untrainable_kinds(stacked, has_head=True)) == {"fine_prune"}
  mlp = stack_lib.create("mlp", [0], num_classes=3, image_shape=(4, 4, 1))
  assert zoo_lib.untrainable_kinds(mlp.params, has_head=True) == {}
  assert set(zoo_lib.untrainable_kinds(mlp.params, has_head=False)) == {
      "finetune_last", "fine_prune"}
