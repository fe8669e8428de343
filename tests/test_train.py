"""Stacks, stacked training and checkpoints."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uap_jax.runtime import checkpoint
from uap_jax.runtime import engine
from uap_jax.runtime import stack as stack_lib
from uap_jax import attacks
from uap_jax import train
from uap_jax.train import step as train_step

CFG = train.TrainConfig(epochs=1, batch_size=32, lr=0.05, log_every=1000)


def _digits_stack(seeds, arch="mlp"):
  return stack_lib.create(arch, seeds, num_classes=10, image_shape=(8, 8, 1))


@pytest.mark.parametrize("strategy", ["loop", "vmap", "map"])
def test_stack_equals_models_trained_one_by_one(digits_arrays, strategy):
  x, y = digits_arrays
  # Equal-sized parts: a stack runs every model for the steps of its largest part.
  parts = [np.arange(0, 300), np.arange(300, 600), np.arange(900, 1200)]
  stacked, _ = train.train_stack(_digits_stack([3, 5, 7]), x, parts, CFG,
                                 labels=[y[p] for p in parts], strategy=strategy)
  for i, seed in enumerate([3, 5, 7]):
    alone, _ = train.train_stack(_digits_stack([seed]), x, [parts[i]], CFG,
                                 labels=[y[parts[i]]], strategy="loop")
    a = stack_lib.predict(stacked.select([i]), x[:50])
    b = stack_lib.predict(alone, x[:50])
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_donated_state_trains_the_same_and_leaves_the_callers_stack_whole(
    digits_arrays, strategy):
  x, y = digits_arrays
  parts = [np.arange(0, 200), np.arange(200, 400)]
  start = _digits_stack([1, 2])
  before = [np.asarray(a).copy() for a in jax.tree.leaves(start.params)]
  trained = {donate: train.train_stack(
      start, x, parts, dataclasses.replace(CFG, donate=donate),
      labels=[y[p] for p in parts], strategy=strategy)[0] for donate in (False, True)}
  for a, b in zip(jax.tree.leaves(trained[False].params),
                  jax.tree.leaves(trained[True].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The stack given to train_stack is neither deleted nor changed.
  for a, b in zip(jax.tree.leaves(start.params), before):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_per_model_rates_train_as_each_model_alone_and_share_one_compile(digits_arrays):
  x, y = digits_arrays
  part = np.arange(0, 320)
  rates = [0.1, 0.01]
  stacked, _ = train.train_stack(_digits_stack([3, 5]), x, [part, part], CFG, lrs=rates,
                                 labels=[y[part]] * 2, strategy="loop")
  programs = train_step.lifted_step.cache_info().currsize
  for i, (seed, lr) in enumerate(zip([3, 5], rates)):
    # Another rate and another schedule length: still the same program.
    cfg = dataclasses.replace(CFG, lr=lr)
    alone, _ = train.train_stack(_digits_stack([seed]), x, [part], cfg,
                                 labels=[y[part]], strategy="loop")
    np.testing.assert_allclose(stack_lib.predict(stacked.select([i]), x[:50]),
                               stack_lib.predict(alone, x[:50]), atol=2e-4, rtol=2e-4)
  assert train_step.lifted_step.cache_info().currsize == programs
  with pytest.raises(ValueError, match="lrs must hold 2 rates"):
    train.train_stack(_digits_stack([3, 5]), x, [part, part], CFG, lrs=[0.1],
                      labels=[y[part]] * 2)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_step_is_optax_sgd_or_adamw(optimizer):
  # The step scales optax's update direction itself (so that rate and decay
  # are arguments); one step must still be optax.sgd / optax.adamw's.
  stack = _digits_stack([0])
  params = jax.tree.map(lambda v: v[0], stack.params)
  rest = jax.tree.map(lambda v: v[0], stack.rest)
  x = jax.random.uniform(jax.random.key(1), (16, 8, 8, 1))
  y = np.arange(16) % 10
  lr, wd = 0.1, 0.01
  kind = train.StepKind(optimizer, "labels", False, False, 1)
  step = train.make_step(stack.graphdef, kind)
  direction = train.update_direction(optimizer)
  ones = jax.tree.map(np.ones_like, params)
  hyper = {"lr": lr, "weight_decay": wd, "temperature": 1.0, "adv_eps": 0.0}
  state = (params, rest, direction.init(params), ones)
  for _ in range(2):
    state, _ = step(state, x, y, jax.random.key(2), hyper, ones, ())
  ref = (optax.adamw(lr, weight_decay=wd) if optimizer == "adam" else optax.chain(
      optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.9, nesterov=True)))
  ref_params, opt_state = params, ref.init(params)
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      stack_lib.train_logits_fn(stack.graphdef)(p, rest, x)[0], y).mean()
  for _ in range(2):
    updates, opt_state = ref.update(jax.grad(loss)(ref_params), opt_state, ref_params)
    ref_params = optax.apply_updates(ref_params, updates)
  for a, b in zip(jax.tree.leaves(state[0]), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_training_learns(digits_arrays):
  x, y = digits_arrays
  s = _digits_stack([0])
  before = stack_lib.accuracy(s, x[1500:], y[1500:])[0]
  cfg = dataclasses.replace(CFG, epochs=4)
  s, hist = train.train_stack(s, x, [np.arange(1500)], cfg, labels=[y[:1500]],
                              eval_data=(x[1500:], y[1500:]))
  assert hist["test_accuracy"][0] > max(0.8, before + 0.3)
  assert s.meta[0]["test_accuracy"] == hist["test_accuracy"][0]


def test_teacher_hard_targets_are_one_hot():
  logits = jax.random.normal(jax.random.key(0), (16, 10))
  t = np.asarray(train.teacher_targets("teacher_hard", logits))
  assert set(np.unique(t)) <= {0.0, 1.0}
  np.testing.assert_array_equal(t.sum(-1), 1)
  np.testing.assert_array_equal(t.argmax(-1), np.asarray(logits).argmax(-1))
  soft = np.asarray(train.teacher_targets("teacher_soft", logits))
  assert (soft > 0).all() and not set(np.unique(soft)) <= {0.0, 1.0}


def test_train_last_only_freezes_body(digits_arrays):
  x, y = digits_arrays
  s = _digits_stack([0])
  cfg = dataclasses.replace(CFG, train_last_only=True)
  t, _ = train.train_stack(s, x, [np.arange(300)], cfg, labels=[y[:300]])
  changed = jax.tree_util.tree_map_with_path(
      lambda p, a, b: (jax.tree_util.keystr(p), bool(np.any(a != b))), s.params, t.params)
  for name, diff in jax.tree.leaves(changed, is_leaf=lambda v: isinstance(v, tuple)):
    assert diff == ("head" in name), name


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
def test_magnitude_mask_prunes_the_asked_fraction(ratio):
  s = _digits_stack([0], arch="lenet5")
  params = jax.tree.map(lambda v: v[0], s.params)
  mask = train.magnitude_mask(params, ratio)
  flat = jax.tree_util.tree_flatten_with_path(mask)[0]
  kept = [np.asarray(m) for p, m in flat if train.prunable(p)]
  zeros = sum((k == 0).sum() for k in kept) / sum(k.size for k in kept)
  assert abs(zeros - ratio) < 0.01
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    train.magnitude_mask(params, 1.0)


def test_checkpoint_round_trip(tmp_path, digits_arrays):
  x, _ = digits_arrays
  s = _digits_stack([1, 2], arch="lenet5")
  s.meta[0]["kind"] = "victim"
  checkpoint.save_stack(str(tmp_path / "s"), s)
  r = checkpoint.load_stack(str(tmp_path / "s"))
  assert r.meta == s.meta and r.arch == "lenet5"
  np.testing.assert_array_equal(stack_lib.predict(s, x[:20]), stack_lib.predict(r, x[:20]))
  # A rerun saves again in the same directory; the newest save is restored.
  s.meta[0]["note"] = "second"
  checkpoint.save_stack(str(tmp_path / "s"), s)
  assert checkpoint.load_stack(str(tmp_path / "s")).meta[0]["note"] == "second"
  checkpoint.save_arrays(str(tmp_path / "a"), {"v": np.zeros(3)}, {"n": 1})
  checkpoint.save_arrays(str(tmp_path / "a"), {"v": np.ones(3)}, {"n": 2})
  tree, meta = checkpoint.load_arrays(str(tmp_path / "a"))
  assert meta["n"] == 2 and tree["v"].tolist() == [1, 1, 1]


def test_select_keeps_each_models_outputs(digits_arrays):
  x, _ = digits_arrays
  s = _digits_stack([1, 2, 3])
  picked = s.select([2, 0])
  assert [m["seed"] for m in picked.meta] == [3, 1]
  np.testing.assert_allclose(stack_lib.predict(picked, x[:20]),
                             stack_lib.predict(s, x[:20])[[2, 0]], atol=1e-6)


def test_checkpoint_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    checkpoint.load_stack(str(tmp_path / "missing"))
  s = _digits_stack([0])
  checkpoint.save_stack(str(tmp_path / "s"), s)
  for f in (tmp_path / "s").rglob("manifest.ocdbt"):
    f.write_bytes(b"corrupt")
  with pytest.raises(ValueError, match="damaged"):
    checkpoint.load_stack(str(tmp_path / "s"))


def test_interrupted_save_keeps_last_good_step(tmp_path, digits_arrays):
  x, _ = digits_arrays
  s = _digits_stack([0])
  checkpoint.save_stack(str(tmp_path / "s"), s, step=0)
  # An interrupted orbax save leaves only a temporary folder for the new step.
  (tmp_path / "s" / "1.orbax-checkpoint-tmp-123").mkdir()
  r = checkpoint.load_stack(str(tmp_path / "s"))
  np.testing.assert_array_equal(stack_lib.predict(s, x[:5]), stack_lib.predict(r, x[:5]))


def test_train_errors(digits_arrays):
  x, y = digits_arrays
  s = _digits_stack([0, 1])
  with pytest.raises(ValueError, match="index arrays"):
    train.train_stack(s, x, [np.arange(10)], CFG, labels=[y[:10]])
  with pytest.raises(ValueError, match="empty data part"):
    train.train_stack(s, x, [np.arange(10), np.arange(0)], CFG, labels=[y[:10], y[:0]])
  with pytest.raises(ValueError, match="needs a teacher"):
    train.train_stack(s, x, [np.arange(10)] * 2,
                      dataclasses.replace(CFG, target="teacher_soft"))
  with pytest.raises(ValueError, match="epochs"):
    train.train_stack(s, x, [np.arange(10)] * 2, dataclasses.replace(CFG, epochs=0),
                      labels=[y[:10]] * 2)
  with pytest.raises(ValueError, match="strategy"):
    engine.resolve("pmap")


@pytest.mark.parametrize("target", ["labels", "teacher_hard"])
def test_batchnorm_stack_trains_with_every_option(digits_arrays, target):
  x, y = digits_arrays
  s = _digits_stack([0, 1], arch="small_cnn")
  teacher = _digits_stack([9])
  cfg = dataclasses.replace(CFG, epochs=0.1, target=target, adv_eps=0.03, adv_steps=1,
                            augment=True)
  t, hist = train.train_stack(
      s, x, [np.arange(64)] * 2, cfg, labels=[y[:64]] * 2,
      teacher=(teacher.logits_fn, jax.tree.map(lambda a: a[0], teacher.variables)))
  assert np.isfinite(hist["loss"][-1]).all()
  # BatchNorm statistics moved with training.
  assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in
             zip(jax.tree.leaves(s.rest), jax.tree.leaves(t.rest)))


def test_exact_steps_train_as_the_epochs_they_stand_for(digits_arrays):
  """``steps`` gives the same run as epochs with that many steps: same
  schedule, batches and updates."""
  x, y = digits_arrays
  part = np.arange(0, 200)  # 7 batches of 32 per epoch
  by_epochs, h1 = train.train_stack(_digits_stack([4]), x, [part],
                                    dataclasses.replace(CFG, epochs=10 / 7),
                                    labels=[y[part]], strategy="loop")
  by_steps, h2 = train.train_stack(_digits_stack([4]), x, [part],
                                   dataclasses.replace(CFG, epochs=99.0, steps=10),
                                   labels=[y[part]], strategy="loop")
  assert h1["steps"] == h2["steps"] == 10
  chex.assert_trees_all_close(by_epochs.params, by_steps.params, atol=0, rtol=0)
  shorter, _ = train.train_stack(_digits_stack([4]), x, [part],
                                 dataclasses.replace(CFG, steps=9),
                                 labels=[y[part]], strategy="loop")
  assert not np.allclose(stack_lib.predict(shorter, x[:50]),
                         stack_lib.predict(by_steps, x[:50]))
  with pytest.raises(ValueError, match="steps"):
    dataclasses.replace(CFG, steps=-1).validate()


def test_adversarial_batch_is_the_attacks_pgd_within_eps():
  stack = _digits_stack([0])
  variables = jax.tree.map(lambda v: v[0], stack.variables)
  eval_fn = stack_lib.eval_logits_fn(stack.graphdef)
  x = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1))
  y = jnp.arange(16) % 10
  loss = lambda xa: train_step.soft_ce(eval_fn(variables, xa), y)
  key, eps = jax.random.key(1), jnp.float32(0.05)
  adv = jax.jit(lambda x: train.adversarial_batch(loss, x, key, eps, 4))(x)
  chex.assert_shape(adv, x.shape)
  ref = attacks.pgd_steps(loss, x, key, eps, 2.5 * eps / 4, 4, iterate="image")
  np.testing.assert_array_equal(np.asarray(adv), np.asarray(ref))
  assert float(jnp.max(jnp.abs(adv - x))) <= 0.05 + 1e-6
  assert float(loss(adv)) > float(loss(x)) + 0.01
  # No gradient reaches the parameters through the attack.
  grad_x = jax.grad(lambda x: jnp.sum(train.adversarial_batch(loss, x, key, eps, 2)))(x)
  np.testing.assert_array_equal(np.asarray(grad_x), 0.0)
