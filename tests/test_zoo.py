"""The suspect zoo: every kind, pruning, hard labels, data parts, resuming."""

import dataclasses
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uap_jax import attacks
from uap_jax import pipeline
from uap_jax.runtime import stack as stack_lib
from uap_jax import train
from uap_jax import zoo as zoo_lib
from uap_jax.config import Config, DEFAULT_KINDS, PIRACY_KINDS
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
  assert set(by_kind) == set(DEFAULT_KINDS)
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
  assert len(set(names)) == len(names) == 3 * len(DEFAULT_KINDS)
  for p in plans:
    assert p.family == ("piracy" if p.kind in PIRACY_KINDS else "independent")
    assert p.parent == ("victim" if p.kind in PIRACY_KINDS else None)
  assert by_kind["independent_data"][0].part == "independent"
  assert by_kind["independent_seed"][0].part == "victim"
  # The innocent twin trains as long as the victim; the other independents
  # as long as the zoo's students.
  assert by_kind["independent_seed"][0].shared("epochs") == cfg.epochs != cfg.zoo_epochs
  assert by_kind["independent_data"][0].shared("epochs") == cfg.zoo_epochs
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
  assert sorted({e["kind"] for e in entries}) == sorted(DEFAULT_KINDS)
  assert set(info["seconds_per_kind"]) == set(DEFAULT_KINDS)
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


def test_extraction_learns_only_what_its_api_reveals(built_zoo):
  """What each student learns from, rebuilt from the recorded training call:
  the victim's top-1 (hard labels), its probabilities (soft), or its
  probabilities at the planned temperature (distillation)."""
  ctx, recorder = built_zoo
  victim = ctx.artifacts.victim
  x = stack_lib.to_float(ctx.data.x_test[:64])
  logits = np.asarray(stack_lib.predict(victim, ctx.data.x_test[:64])[0])
  probs = np.asarray(jax.nn.softmax(logits))
  calls = {c["desc"].split("__")[0]: c for c in recorder.calls}

  def learned(kind, temperature=1.0):
    call = calls[kind]
    answers = call["teacher_fn"](call["teacher_vars"], x)
    return np.asarray(train.teacher_targets(call["target"], answers, temperature))

  hard = learned("extract_hard")
  np.testing.assert_array_equal(hard, np.eye(logits.shape[-1])[logits.argmax(-1)])
  for kind in ("extract_soft", "extract_adv"):
    np.testing.assert_allclose(learned(kind), probs, atol=1e-5)
  (distill,) = [p for p in zoo_lib.plan_zoo(ctx.cfg) if p.kind == "distill"]
  temperature = distill.shared("T")
  assert temperature != 1.0
  np.testing.assert_allclose(learned("distill", temperature),
                             jax.nn.softmax(logits / temperature), atol=1e-5)
  assert calls["distill"]["target"] == "distill"  # the T^2-scaled loss


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
        plan, teacher, ctx.data.x_train, ctx.data.y_train, ctx.parts,
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
      # substitute_adversarials from x_train[part], tested on their own).
      real = index[index < n_train]
      assert set(real.tolist()) == expected, kind
      if call["target"] == "labels":
        assert len(real) == len(index), kind
      else:
        assert np.all(index[index >= n_train] < call["pool_size"])
  assert seen == set(DEFAULT_KINDS)


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
  def hparams(**overrides):
    settings = dict(batch_size=50, zoo_epochs=2, query_budget=0, zoo_kinds=["extract_soft"])
    cfg = _config("/unused", **{**settings, **overrides})
    return zoo_lib.plan_zoo(cfg)[0].hparams[0]

  assert zoo_lib.extraction_steps(hparams(), 1000) == 40
  assert zoo_lib.query_copies(hparams(), 1000) == 1
  assert zoo_lib.extraction_steps(hparams(query_budget=5000), 1000) == 100
  assert zoo_lib.query_copies(hparams(query_budget=5000), 1000) == 4
  assert zoo_lib.query_copies(hparams(query_budget=10 ** 6), 1000) == (
      zoo_lib.MAX_QUERY_COPIES)
  assert zoo_lib.query_copies(hparams(query_budget=5000, augment="false"), 1000) == 0


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


@pytest.fixture(scope="module")
def substitutes():
  """Two small MLPs trained briefly on digits, and 24 attacker images."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  x = np.round(d.images[..., None] * 255.0 / 16.0).astype(np.uint8)
  y = d.target.astype(np.int32)
  stack = stack_lib.create("mlp", [11, 12], num_classes=10, image_shape=(8, 8, 1))
  cfg = train.TrainConfig(epochs=3, batch_size=64, lr=0.05, log_every=10 ** 9)
  part = np.arange(1200)
  stack, _ = train.train_stack(stack, x, [part, part], cfg, labels=[y[part]] * 2,
                               strategy="loop")
  return stack, x[1500:1524]


def test_substitute_adversarials_lie_within_eps_and_fool_the_substitute(substitutes):
  stack, x = substitutes
  eps = 0.2  # digits have 16 grey levels: smaller balls barely move them
  adv = zoo_lib.substitute_adversarials(stack, x, eps, jax.random.key(0), batch_size=10,
                                        strategy="loop")
  chex.assert_shape(adv, (2,) + x.shape)
  assert adv.dtype == np.uint8
  # Within eps of the attacker's images once rounded to pixels.
  gap = np.abs(adv.astype(np.float64) - x[None].astype(np.float64)) / 255.0
  assert gap.max() <= eps + 0.5 / 255.0
  clean = stack_lib.predict(stack, x).argmax(-1)
  noise = np.sign(np.random.default_rng(0).standard_normal(x.shape)) * eps * 255.0
  noisy = np.clip(np.round(x + noise), 0, 255).astype(np.uint8)
  for i in range(stack.size):
    own = stack_lib.predict(stack.select([i]), adv[i])[0].argmax(-1)
    fooled = np.mean(own != clean[i])
    by_noise = np.mean(stack_lib.predict(stack.select([i]), noisy)[0].argmax(-1) != clean[i])
    # Each substitute's own examples change its top-1 on most images, far
    # more often than random noise of the same size does.
    assert fooled > 0.5 and fooled > by_noise + 0.3, (i, fooled, by_noise)


def test_substitute_adversarials_are_the_attacks_pgd(substitutes):
  """The zoo's PGD is attacks.pgd_steps: model i, batch b attacks with
  fold_in(split(key, K)[i], b), EXTRACT_ADV_PGD_STEPS steps of 2.5 eps / steps,
  against the cross-entropy of its own top-1."""
  stack, x = substitutes
  eps, key, batch = 0.05, jax.random.key(3), 12
  adv = zoo_lib.substitute_adversarials(stack, x, eps, key, batch_size=batch,
                                        strategy="vmap")
  steps = zoo_lib.EXTRACT_ADV_PGD_STEPS
  for i, model_key in enumerate(jax.random.split(key, stack.size)):
    variables = zoo_lib.single_variables(stack, i)
    for b in range(len(x) // batch):
      xb = stack_lib.to_float(x[b * batch:(b + 1) * batch])
      top1 = stack.logits_fn(variables, xb).argmax(-1)
      loss = lambda xa, v=variables, t=top1: jnp.sum(
          optax.softmax_cross_entropy_with_integer_labels(stack.logits_fn(v, xa), t))
      ref = attacks.pgd_steps(loss, xb, jax.random.fold_in(model_key, b), eps,
                              2.5 * eps / steps, steps, iterate="image")
      want = np.round(np.asarray(ref) * 255.0).astype(np.uint8)
      got = adv[i, b * batch:(b + 1) * batch]
      # Float round-off of another loss expression may move a pixel by one level.
      assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
      assert np.mean(got == want) > 0.99
  other = zoo_lib.substitute_adversarials(stack, x, eps, jax.random.key(4),
                                          batch_size=batch, strategy="vmap")
  assert not np.array_equal(other, adv)  # the key matters


def _entry(name, kind, agreement, part=None, arch="mlp"):
  family = "independent" if kind.startswith("independent") else "piracy"
  part = part or zoo_lib.PART_OF_KIND[kind]
  return {"name": name, "kind": kind, "family": family, "arch": arch, "part": part,
          "agreement": agreement}


def test_extraction_faithfulness_compares_with_same_data_independents():
  entries = [
      _entry("is0", "independent_seed", 0.80), _entry("is1", "independent_arch", 0.86),
      # Trained on other data: not a reference for faithfulness.
      _entry("id0", "independent_data", 0.99),
      _entry("es0", "extract_soft", 0.90), _entry("es1", "extract_soft", 0.88),
      _entry("eh0", "extract_hard", 0.70),
      _entry("el0", "extract_hard", 0.95, arch="lenet5"),
      _entry("ft0", "finetune_all", 0.99),
  ]
  out = zoo_lib.extraction_faithfulness(entries)
  assert out["same_data_independents"] == {"mean": pytest.approx(0.83),
                                           "max": pytest.approx(0.86), "count": 2}
  assert set(out) == {"same_data_independents", "extract_soft__mlp",
                      "extract_hard__mlp", "extract_hard__lenet5"}
  assert out["extract_soft__mlp"] == {"mean": pytest.approx(0.89), "faithful": True}
  assert out["extract_hard__mlp"] == {"mean": pytest.approx(0.70), "faithful": False}
  assert out["extract_hard__lenet5"]["faithful"] is True
  # Above the independents' mean but not their max: not faithful.
  (mid,) = [e for e in entries if e["name"] == "eh0"]
  mid["agreement"] = 0.85
  assert zoo_lib.extraction_faithfulness(entries)["extract_hard__mlp"]["faithful"] is False
  # Nothing to compare: no same-data independents, or no extraction.
  assert zoo_lib.extraction_faithfulness(
      [e for e in entries if e["part"] != "victim"]) is None
  assert zoo_lib.extraction_faithfulness(
      [e for e in entries if not e["kind"].startswith("extract")]) is None


def test_every_kind_trains_with_its_plans_hyper_parameters(monkeypatch, digits_arrays):
  """The plan is the only source of settings: edited hparams reach training."""
  x, y = digits_arrays
  calls = []

  def fake_train_stack(stack, x_pool, index, cfg, **kwargs):
    calls.append((cfg, kwargs.get("lrs")))
    return stack, {"steps": train.total_steps(cfg, max(map(len, index)))}

  monkeypatch.setattr(train, "train_stack", fake_train_stack)
  cfg = _config("/unused", zoo_count=1, zoo_counts=[], extract_rounds=1)
  parts = {"victim": np.arange(0, 500), "attacker": np.arange(500, 900),
           "independent": np.arange(900, 1300)}
  victim = stack_lib.create("mlp", [0], meta=[{"name": "victim", "seed": 0}],
                            num_classes=10, image_shape=(8, 8, 1))
  for plan in zoo_lib.plan_zoo(cfg):
    edited = tuple(dict(h, lr=0.0123, batch_size=17, weight_decay=0.25,
                        optimizer="adam", epochs=0.5) for h in plan.hparams)
    plan = dataclasses.replace(plan, hparams=edited)
    calls.clear()
    zoo_lib.train_plan(plan, victim, x, y, parts, augment=False,
                       arch_kwargs=dict(num_classes=10, image_shape=(8, 8, 1)),
                       strategy="loop")
    assert calls, plan.kind
    for tc, lrs in calls:
      assert (tc.batch_size, tc.weight_decay, tc.optimizer) == (17, 0.25, "adam"), plan.kind
      assert lrs == [0.0123] * len(plan.names), plan.kind
      if tc.steps == 0:
        assert tc.epochs == 0.5, plan.kind
      if plan.kind == "adv_train":
        assert (tc.adv_eps, tc.adv_steps) == (plan.hparams[0]["eps"],
                                              plan.hparams[0]["pgd_steps"])
