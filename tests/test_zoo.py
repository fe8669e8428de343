"""The suspect zoo: every kind, pruning, hard labels, data parts, resuming."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uap_jax.runtime import checkpoint
from uap_jax import pipeline
from uap_jax.runtime import stack as stack_lib
from uap_jax import train
from uap_jax import zoo as zoo_lib
from uap_jax.config import Config, INDEPENDENT_KINDS, KINDS, PIRACY_KINDS
from uap_jax.runtime.context import RunContext
from uap_jax.stages import zoo as zoo_stage
from uap_jax.runtime.workdir import Workdir


def _config(workdir, **overrides):
  base = dict(workdir=str(workdir), dataset="digits", victim_arch="mlp",
              zoo_archs=["mlp"], epochs=12, batch_size=64, lr=0.05, zoo_epochs=5,
              finetune_epochs=1, zoo_count=1, zoo_counts=["prune:2"],
              prune_ratios=[0.3, 0.7], finetune_lrs=[0.01], extract_rounds=1,
              adv_eps=0.05, strategy="loop", stages=["victim", "zoo"])
  base.update(overrides)
  return Config(**base)


class _Recorder:
  """Wraps train.train_stack: records what every call trained on."""

  def __init__(self, real):
    self.real, self.calls = real, []

  def __call__(self, stack, x_pool, index, cfg, **kwargs):
    teacher = kwargs.get("teacher")
    self.calls.append({"desc": kwargs.get("desc"), "index": [np.asarray(i) for i in index],
                       "pool_size": len(x_pool), "target": cfg.target,
                       "teacher_fn": teacher[0] if teacher else None,
                       "teacher_vars": teacher[1] if teacher else None})
    return self.real(stack, x_pool, index, cfg, **kwargs)


@pytest.fixture(scope="module")
def built_zoo(tmp_path_factory):
  """A victim and a zoo of every kind on digits (recorded training calls)."""
  workdir = tmp_path_factory.mktemp("zoo_run")
  cfg = _config(workdir)
  recorder = _Recorder(train.train_stack)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train, "train_stack", recorder)
    pipeline.run(cfg)
  ctx = RunContext(cfg, Workdir(cfg.workdir))
  return ctx, recorder


def test_plan_seeds_archs_and_hparams_derive_from_the_config():
  cfg = _config("/unused", victim_arch="lenet5", zoo_archs=["mlp", "lenet5"],
                zoo_count=3, zoo_counts=[], prune_ratios=[0.2, 0.5],
                finetune_lrs=[0.1, 0.01])
  plans = zoo_lib.plan_zoo(cfg)
  assert plans == zoo_lib.plan_zoo(cfg)  # a rerun plans the same zoo
  by_kind = {}
  for p in plans:
    by_kind.setdefault(p.kind, []).append(p)
  assert set(by_kind) == set(KINDS)
  # Extraction spreads over the victim's architecture and the others.
  assert [p.arch for p in by_kind["extract_soft"]] == ["lenet5", "mlp"]
  assert [p.names for p in by_kind["extract_soft"]] == [
      ("extract_soft_0", "extract_soft_2"), ("extract_soft_1",)]
  assert [p.arch for p in by_kind["distill"]] == ["mlp", "lenet5"]
  assert [p.arch for p in by_kind["finetune_all"]] == ["lenet5"]
  (prune,) = by_kind["prune"]
  assert [h["ratio"] for h in prune.hparams] == [0.2, 0.5, 0.2]
  (ft,) = by_kind["finetune_last"]
  assert [h["lr"] for h in ft.hparams] == [0.1, 0.01, 0.1]
  seeds = [s for p in plans for s in p.seeds]
  assert len(set(seeds)) == len(seeds)
  other = zoo_lib.plan_zoo(dataclasses.replace(cfg, seed=1))
  assert not set(seeds) & {s for p in other for s in p.seeds}
  names = [n for p in plans for n in p.names]
  assert len(set(names)) == len(names) == 3 * len(KINDS)
  for p in plans:
    assert p.family == ("piracy" if p.kind in PIRACY_KINDS else "independent")
    assert p.parent == ("victim" if p.kind in PIRACY_KINDS else None)
  assert by_kind["independent_data"][0].part == "independent"
  assert by_kind["independent_seed"][0].part == "victim"
  assert by_kind["extract_hard"][0].part == "attacker"
  narrowed = dataclasses.replace(cfg, zoo_kinds=["distill"], zoo_counts=["prune:2"])
  assert narrowed.kind_counts() == {"distill": 3}
  assert {p.kind for p in zoo_lib.plan_zoo(narrowed)} == {"distill"}


@pytest.mark.parametrize("overrides, message", [
    (dict(zoo_kinds=["extract_soft", "bogus"]), "bogus"),
    (dict(zoo_archs=["no_such_net"]), "no_such_net"),
    (dict(zoo_count=-1), "zoo_count"),
    (dict(zoo_counts=["prune:-2"]), "prune:-2"),
    (dict(prune_ratios=[0.5, 1.0]), "prune_ratios"),
    (dict(prune_ratios=[-0.1]), "prune_ratios"),
    (dict(query_budget=-5), "query_budget"),
])
def test_bad_settings_fail_before_training(tmp_path, monkeypatch, overrides, message):
  monkeypatch.setattr(train, "train_stack", _fail_if_called)
  cfg = _config(tmp_path, **overrides)
  with pytest.raises(ValueError, match=message):
    zoo_stage.run(RunContext(cfg, Workdir(cfg.workdir)))


def test_zoo_without_victim_fails_before_training(tmp_path, monkeypatch):
  monkeypatch.setattr(train, "train_stack", _fail_if_called)
  cfg = _config(tmp_path)
  with pytest.raises(ValueError, match="victim"):
    zoo_stage.run(RunContext(cfg, Workdir(cfg.workdir)))


def _fail_if_called(*args, **kwargs):
  raise AssertionError("training started despite bad input")


def test_every_kind_differs_from_the_victim_and_piracy_agrees(built_zoo):
  ctx, _ = built_zoo
  info = ctx.workdir.read_json("zoo.json")
  entries = info["models"]
  assert sorted({e["kind"] for e in entries}) == sorted(KINDS)
  assert set(info["seconds_per_kind"]) == set(KINDS)
  victim = ctx.artifacts.victim
  victim_params = jax.tree.leaves(zoo_lib.single_variables(victim)[0])
  num_classes = ctx.data.num_classes
  stacks = ctx.artifacts.zoo
  assert [m["name"] for s in stacks for m in s.meta] == [e["name"] for e in entries]
  for s in stacks:
    # Recomputed from the restored weights, not read from the metadata.
    victim_top1 = stack_lib.predict(victim, ctx.data.x_test)[0].argmax(-1)
    agree = zoo_lib.agreement(s, victim_top1, ctx.data.x_test)
    for i, m in enumerate(s.meta):
      assert m["agreement"] == pytest.approx(agree[i], abs=1e-6)
      leaves = jax.tree.leaves(jax.tree.map(lambda a, i=i: a[i], s.params))
      if s.arch == victim.arch:
        diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(leaves, victim_params))
        assert diff > 1e-4, f"{m['name']} equals the victim"
      if m["family"] == "piracy":
        assert agree[i] > 5.0 / num_classes, f"{m['name']}: agreement {agree[i]}"
        assert m["parent"] == "victim"
      else:
        assert m["parent"] is None
        assert m["test_accuracy"] > 3.0 / num_classes


def test_pruning_leaves_the_asked_fraction_of_zeros(built_zoo):
  ctx, _ = built_zoo
  (pruned,) = [s for s in ctx.artifacts.zoo if s.meta[0]["kind"] == "prune"]
  assert [m["hparams"]["ratio"] for m in pruned.meta] == [0.3, 0.7]
  for i, m in enumerate(pruned.meta):
    params = jax.tree.map(lambda a, i=i: a[i], pruned.params)
    n = sum(int(np.prod(v.shape)) for p, v in
            jax.tree_util.tree_flatten_with_path(params)[0] if train.prunable(p))
    # Ties at the threshold aside, exactly floor(ratio * n) weights are zero.
    assert zoo_lib.zero_fraction(params) == pytest.approx(m["hparams"]["ratio"],
                                                          abs=2.0 / n + 1e-3)


def test_extraction_sees_only_what_its_api_reveals(built_zoo):
  ctx, recorder = built_zoo
  x = stack_lib.to_float(ctx.data.x_test[:64])
  kinds = {c["desc"].split("__")[0]: c for c in recorder.calls}
  hard = kinds["extract_hard"]
  assert hard["target"] == "teacher_hard"
  answers = np.asarray(hard["teacher_fn"](hard["teacher_vars"], x))
  assert set(np.unique(answers)) <= {0.0, 1.0}
  np.testing.assert_array_equal(answers.sum(-1), 1.0)
  soft = kinds["extract_soft"]
  assert soft["target"] == "teacher_soft"
  assert kinds["distill"]["target"] == "distill"


def test_hard_label_student_ignores_the_victims_confidence(built_zoo):
  """Sharpening the victim (logits x 3: same top-1, other probabilities)
  leaves a hard-label copy unchanged, bit for bit."""
  ctx, _ = built_zoo
  victim = ctx.artifacts.victim
  sharp = dataclasses.replace(victim, params=jax.tree_util.tree_map_with_path(
      lambda p, a: a * 3.0 if any(getattr(k, "key", None) == "head" for k in p) else a,
      victim.params))
  x = ctx.data.x_test[:200]
  probs = stack_lib.predict(victim, x, output="probs")
  sharp_probs = stack_lib.predict(sharp, x, output="probs")
  np.testing.assert_array_equal(probs.argmax(-1), sharp_probs.argmax(-1))
  assert np.abs(probs - sharp_probs).max() > 0.05  # a soft-label API would tell
  cfg = dataclasses.replace(ctx.cfg, query_budget=20 * ctx.cfg.batch_size,
                            zoo_kinds=["extract_hard"])
  (plan,) = zoo_lib.plan_zoo(cfg)
  outputs = []
  for teacher in (victim, sharp):
    student, _ = zoo_lib.train_plan(
        plan, teacher, ctx.data.x_train, ctx.data.y_train, ctx.parts, cfg,
        augment=False, arch_kwargs=ctx.arch_kwargs())
    outputs.append(stack_lib.predict(student, x))
  np.testing.assert_array_equal(outputs[0], outputs[1])


def test_kinds_train_on_their_own_disjoint_parts(built_zoo):
  ctx, recorder = built_zoo
  parts = ctx.parts
  n_train = len(ctx.data.y_train)
  victim_part = set(parts["victim"].tolist())
  assert not victim_part & set(parts["attacker"].tolist())
  assert not victim_part & set(parts["independent"].tolist())
  assert not set(parts["attacker"].tolist()) & set(parts["independent"].tolist())
  seen = set()
  for call in recorder.calls:
    kind = call["desc"].split("__")[0]
    if kind == "victim":
      continue
    seen.add(kind)
    expected = set(parts[zoo_lib.PART_OF_KIND[kind]].tolist())
    for index in call["index"]:
      # Past n_train: the attacker's augmented copies and adversarial
      # examples of its own images (made by augmented_queries /
      # substitute_adversarials from x_train[part], tested below).
      real = index[index < n_train]
      assert set(real.tolist()) == expected, kind
      if call["target"] == "labels":
        assert len(real) == len(index), kind
      else:
        assert np.all(index[index >= n_train] < call["pool_size"])
  assert seen == set(KINDS)


def test_partial_zoo_resumes_only_the_missing_stack(built_zoo, monkeypatch):
  ctx, _ = built_zoo
  before = ctx.workdir.read_json("zoo.json")
  gone = "distill__mlp"
  checkpoint_root = ctx.workdir.checkpoint_dir("zoo")
  kept = {d: os.path.getmtime(os.path.join(checkpoint_root, d))
          for d in os.listdir(checkpoint_root) if d != gone}
  ctx.workdir.remove(os.path.join("checkpoints", "zoo", gone))
  recorder = _Recorder(train.train_stack)
  monkeypatch.setattr(train, "train_stack", recorder)
  summary = zoo_stage.run(RunContext(ctx.cfg, Workdir(ctx.cfg.workdir)))
  assert summary["stacks_trained"] == [gone]
  assert {c["desc"] for c in recorder.calls} == {gone}
  assert {d: os.path.getmtime(os.path.join(checkpoint_root, d)) for d in kept} == kept
  after = ctx.workdir.read_json("zoo.json")
  assert [e["name"] for e in after["models"]] == [e["name"] for e in before["models"]]
  # Same seeds and data: the retrained stack reproduces the lost one.
  old = {e["name"]: e for e in before["models"]}
  for e in after["models"]:
    if e["kind"] == "distill":
      assert e["seed"] == old[e["name"]]["seed"]
      assert e["agreement"] == pytest.approx(old[e["name"]]["agreement"], abs=1e-6)
  # Nothing missing: nothing trains.
  recorder.calls.clear()
  summary = zoo_stage.run(RunContext(ctx.cfg, Workdir(ctx.cfg.workdir)))
  assert summary["stacks_trained"] == [] and not recorder.calls
  # A changed setting retrains (and overwrites) only the stacks it concerns.
  cfg = dataclasses.replace(ctx.cfg, distill_temperature=2 * ctx.cfg.distill_temperature)
  rerun = RunContext(cfg, Workdir(cfg.workdir))
  summary = zoo_stage.run(rerun)
  assert summary["stacks_trained"] == [gone]
  (distilled,) = [s for s in rerun.artifacts.zoo if s.meta[0]["kind"] == "distill"]
  assert distilled.meta[0]["hparams"]["T"] == cfg.distill_temperature


@pytest.mark.parametrize("flip", [False, True])
def test_augmented_queries_are_shifted_copies_of_their_sources(flip):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
  out = zoo_lib.augmented_queries(x, 3, np.random.default_rng(1), flip=flip)
  assert out.shape == (18, 16, 16, 3) and out.dtype == np.uint8
  shift = 16 // 8
  padded = np.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
  mirrored = 0
  for j in range(3):
    for i in range(6):
      crops = [padded[i, a:a + 16, b:b + 16] for a in range(2 * shift + 1)
               for b in range(2 * shift + 1)]
      plain = any(np.array_equal(out[j * 6 + i], c) for c in crops)
      flipped = any(np.array_equal(out[j * 6 + i], c[:, ::-1]) for c in crops)
      assert plain or flipped
      mirrored += not plain
  assert (mirrored > 0) == flip
  assert zoo_lib.augmented_queries(x, 0, rng, flip=flip).shape == (0, 16, 16, 3)


def test_query_budget_sets_steps_and_copies():
  cfg = _config("/unused", batch_size=50, zoo_epochs=2, query_budget=0)
  assert zoo_lib.extraction_steps(cfg, 1000) == 40
  assert zoo_lib.query_copies(cfg, 1000) == 1
  cfg = dataclasses.replace(cfg, query_budget=5000)
  assert zoo_lib.extraction_steps(cfg, 1000) == 100
  assert zoo_lib.query_copies(cfg, 1000) == 4
  assert zoo_lib.query_copies(dataclasses.replace(cfg, query_budget=10 ** 6), 1000) == (
      zoo_lib.MAX_QUERY_COPIES)
  assert zoo_lib.query_copies(dataclasses.replace(cfg, augment="false"), 1000) == 0


def test_saved_stack_is_reused_only_for_the_same_plan_and_victim():
  cfg = _config("/unused", zoo_kinds=["prune"], zoo_counts=["prune:2"])
  (plan,) = zoo_lib.plan_zoo(cfg)
  saved = [dict(m, victim_digest="abc", test_accuracy=0.9) for m in plan.meta()]
  assert zoo_lib.plan_matches(plan, saved, "abc")
  assert not zoo_lib.plan_matches(plan, saved, "other victim")
  assert not zoo_lib.plan_matches(plan, saved[:1], "abc")
  (other,) = zoo_lib.plan_zoo(dataclasses.replace(cfg, prune_ratios=[0.3, 0.9]))
  assert not zoo_lib.plan_matches(other, saved, "abc")
  (reseeded,) = zoo_lib.plan_zoo(dataclasses.replace(cfg, seed=5))
  assert not zoo_lib.plan_matches(reseeded, saved, "abc")
  # Every setting that changes how a kind trains is in its plan.
  for kind in ("extract_soft", "extract_adv", "distill"):
    one = dataclasses.replace(cfg, zoo_kinds=[kind], zoo_counts=[])
    (plan,) = zoo_lib.plan_zoo(one)
    saved = [dict(m, victim_digest="abc") for m in plan.meta()]
    (more,) = zoo_lib.plan_zoo(dataclasses.replace(one, query_budget=12800))
    assert not zoo_lib.plan_matches(more, saved, "abc"), kind
    (bigger,) = zoo_lib.plan_zoo(dataclasses.replace(one, batch_size=128))
    assert not zoo_lib.plan_matches(bigger, saved, "abc"), kind
