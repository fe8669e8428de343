"""Property tests of uap_jax.attacks on fresh random inputs (tiny sizes)."""

from __future__ import annotations

import collections
import hashlib
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from sklearn.datasets import load_digits

from uap_jax import attacks
from uap_jax import config
from uap_jax.runtime import engine
from uap_jax.runtime import stack as stack_lib
from uap_jax.attacks import common
from uap_jax.models.mlp import MLP

SHAPE = (6, 6, 1)
NUM_CLASSES = 5
N = 16
# Compilation dominates the run time: tests share shapes and static options so
# that the jitted kernels compile once for the whole file.
UAP_OPTIONS = dict(max_passes=2, batch_size=4, max_iter=4)
SGD_OPTIONS = dict(max_passes=2, batch_size=4)


# Seeds of the property tests follow from the test's name, so that CI runs
# what was run here whatever the order or worker; UAP_JAX_TEST_SEED=N draws
# other ones (failures print the seed).
_BASE_SEED = os.environ.get("UAP_JAX_TEST_SEED", "0")
_CALLS = collections.Counter()


def fresh_seed() -> int:
  test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
  _CALLS[test] += 1
  digest = hashlib.sha256(f"{_BASE_SEED}/{test}/{_CALLS[test]}".encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def tiny_mlp(seed: int, image_shape=SHAPE, num_classes=NUM_CLASSES,
             hidden=(16,)):
  """An untrained MLP: (logits_fn, variables)."""
  module = MLP(num_classes=num_classes, image_shape=image_shape, hidden=hidden,
               rngs=nnx.Rngs(seed))
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  return stack_lib.eval_logits_fn(graphdef), (params, rest)


def tiny_stack(seeds, hidden=(16,)):
  """K untrained MLPs of one architecture: (logits_fn, stacked variables)."""
  per_model = [tiny_mlp(s, hidden=hidden) for s in seeds]
  logits_fn = per_model[0][0]
  return logits_fn, engine.stack_trees([v for _, v in per_model])


def random_images(seed: int, n: int, shape=SHAPE) -> jax.Array:
  return jax.random.uniform(jax.random.key(seed), (n,) + shape, jnp.float32)


def norm(v, p, batch_dims=0):
  return np.asarray(common.flat_norm(jnp.asarray(v), common.check_p(p),
                                     batch_dims))


@pytest.fixture(scope="module")
def digits_model():
  """An MLP trained on sklearn digits for 300 Adam steps (~1-2 s)."""
  digits = load_digits()
  x = jnp.asarray(digits.images[..., None] / 16.0, jnp.float32)
  y = jnp.asarray(digits.target, jnp.int32)
  logits_fn, (params, rest) = tiny_mlp(0, image_shape=(8, 8, 1),
                                       num_classes=10, hidden=(64,))
  opt = optax.adam(1e-2)
  x_train, y_train = x[:1200], y[:1200]

  @jax.jit
  def train(params):
    def step(i, carry):
      params, state = carry
      idx = jax.random.randint(jax.random.key(i), (64,), 0, 1200)
      def loss(p):
        logits = logits_fn((p, rest), x_train[idx])
        return optax.softmax_cross_entropy_with_integer_labels(
            logits, y_train[idx]).mean()
      updates, state = opt.update(jax.grad(loss)(params), state, params)
      return optax.apply_updates(params, updates), state
    return jax.lax.fori_loop(0, 300, step, (params, opt.init(params)))[0]

  variables = (train(params), rest)
  accuracy = float(jnp.mean(
      jnp.argmax(logits_fn(variables, x[1200:]), -1) == y[1200:]))
  assert accuracy > 0.8, accuracy
  return logits_fn, variables, x[:1200], x[1200:]


# --------------------------------------------------------------- norm bounds


@pytest.mark.parametrize("p", ["inf", 2])
def test_pgd_and_fgsm_stay_in_ball_and_range(p):
  seed = fresh_seed()
  logits_fn, variables = tiny_mlp(seed)
  x = random_images(seed, N)
  eps = float(np.random.default_rng(seed).uniform(0.01, 0.5))
  adv = attacks.pgd(logits_fn, variables, x, key=jax.random.key(seed), eps=eps,
                    num_steps=5, p=p)
  one = attacks.fgsm(logits_fn, variables, x, eps=eps, p=p)
  for out in (adv, one):
    assert out.dtype == jnp.float32 and out.shape == x.shape
    assert np.all(norm(out - x, p, 1) <= eps * (1 + 1e-5) + 1e-7), seed
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0, seed


@pytest.mark.parametrize("p", ["inf", 2])
def test_uap_and_sgd_uap_stay_in_ball(p):
  seed = fresh_seed()
  logits_fn, variables = tiny_mlp(seed)
  x = random_images(seed, N)
  xi = float(np.random.default_rng(seed).uniform(0.05, 1.0))
  # One method per norm keeps compilation (most of the test's time) down.
  for method in ("minibatch", "pipelined") if p == "inf" else ("sequential",):
    result = attacks.uap(logits_fn, variables, x, key=jax.random.key(seed),
                         xi=xi, p=p, method=method, **UAP_OPTIONS)
    assert result.v.shape == SHAPE and result.v.dtype == jnp.float32
    assert norm(result.v, p) <= xi * (1 + 1e-5), (seed, method)
  result = attacks.sgd_uap(logits_fn, variables, x, key=jax.random.key(seed),
                           xi=xi, p=p, **SGD_OPTIONS)
  assert norm(result.v, p) <= xi * (1 + 1e-5), seed


@pytest.mark.parametrize("p", ["inf", 2])
def test_projection_bounds_random_vectors(p):
  seed = fresh_seed()
  v = 10 * jax.random.normal(jax.random.key(seed), (7,) + SHAPE)
  xi = float(np.random.default_rng(seed).uniform(1e-3, 5.0))
  projected = attacks.project(v, attacks.check_p(p), xi, batch_dims=1)
  assert np.all(norm(projected, p, 1) <= xi * (1 + 1e-6)), seed
  inside = v / (1.0 + norm(v, p, 1).reshape(-1, 1, 1, 1) / (0.5 * xi))
  np.testing.assert_allclose(
      attacks.project(inside, attacks.check_p(p), xi, batch_dims=1), inside,
      rtol=1e-6)


# ------------------------------------------------------------ jit vs eager


def test_jit_equals_eager():
  seed = fresh_seed()
  logits_fn, variables = tiny_mlp(seed)
  x = random_images(seed, 4)
  key = jax.random.key(seed)

  # Eager mode compiles every op on its own (seconds per attack): sizes are
  # minimal, and the UAP covers DeepFool (its inner step).
  def run():
    return (
        attacks.pgd(logits_fn, variables, x, key=key, eps=0.1, num_steps=2),
        attacks.uap(logits_fn, variables, x, key=key, xi=0.3, max_passes=2,
                    batch_size=4, max_iter=2))

  jitted = run()
  with jax.disable_jit():
    eager = run()
  for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a, np.float64),
                               np.asarray(b, np.float64), atol=1e-4,
                               err_msg=f"seed {seed}")


# ---------------------------------------------------------------- DeepFool


@pytest.mark.parametrize("p", [2, "inf"])
def test_deepfool_on_linear_model_matches_analytic_distance(p):
  seed = fresh_seed()
  rng = np.random.default_rng(seed)
  dim, num_classes, n = 12, 6, 10
  weights = jnp.asarray(rng.normal(size=(dim, num_classes)), jnp.float32)
  bias = jnp.asarray(0.1 * rng.normal(size=num_classes), jnp.float32)
  x = jnp.asarray(rng.uniform(0.3, 0.7, size=(n, 2, 2, 3)), jnp.float32)

  def linear(variables, x):
    # Centred at grey so that decision boundaries pass near the inputs.
    w, b = variables
    return (x.reshape(x.shape[0], -1) - 0.5) @ w + b

  overshoot = 1e-3
  result = attacks.deepfool(linear, (weights, bias), x,
                            num_candidates=num_classes, overshoot=overshoot,
                            max_iter=20, p=p)
  logits = np.asarray(linear((weights, bias), x), np.float64)
  w = np.asarray(weights, np.float64)
  x_flat = np.asarray(x, np.float64).reshape(n, -1)
  label = logits.argmax(-1)
  dual = 2 if p == 2 else 1
  expected, minimal, in_box = [], [], []
  for i in range(n):
    dists = {k: abs(logits[i, k] - logits[i, label[i]])
                / np.linalg.norm(w[:, k] - w[:, label[i]], ord=dual)
             for k in range(num_classes) if k != label[i]}
    k = min(dists, key=dists.get)
    size = (1 + overshoot) * (dists[k] + 1e-4)
    expected.append(size)
    minimal.append(dists[k])
    direction = w[:, k] - w[:, label[i]]
    direction = (direction / np.linalg.norm(direction) if p == 2
                 else np.sign(direction))
    # The analytic minimum ignores the [0, 1] box; compare where it fits.
    end = x_flat[i] + size * direction
    in_box.append(bool(np.all((end >= 0) & (end <= 1))))
  in_box = np.asarray(in_box)
  assert in_box.sum() >= n // 2, seed
  assert np.all(np.asarray(result.converged)), seed
  assert np.all(np.asarray(result.label) == label), seed
  adversarial = x + result.perturbation
  assert float(adversarial.min()) >= -1e-6 and float(adversarial.max()) <= 1 + 1e-6
  flipped = np.asarray(linear((weights, bias), adversarial)).argmax(-1)
  assert np.all(flipped != label), seed
  # A linear model is crossed in one linearisation step.
  assert np.all(np.asarray(result.iterations)[in_box] == 1), seed
  np.testing.assert_allclose(norm(result.perturbation, p, 1)[in_box],
                             np.asarray(expected)[in_box], rtol=1e-3,
                             err_msg=f"seed {seed}")
  # No perturbation that flips a linear model is smaller than the minimum.
  assert np.all(norm(result.perturbation, p, 1)
                >= np.asarray(minimal) * (1 - 1e-5)), seed


def test_deepfool_respects_the_pixel_box_on_saturated_images(digits_model):
  logits_fn, variables, x_train, _ = digits_model
  seed = fresh_seed()
  pick = np.random.default_rng(seed).choice(len(x_train), 32, replace=False)
  x = x_train[pick]                       # digits: many pixels at 0 or 1
  result = attacks.deepfool(logits_fn, variables, x, max_iter=20)
  adversarial = x + result.perturbation
  assert float(adversarial.min()) >= -1e-6, seed
  assert float(adversarial.max()) <= 1 + 1e-6, seed
  assert float(result.converged.mean()) >= 0.9, seed
  flipped = jnp.argmax(logits_fn(variables, adversarial), -1) != result.label
  np.testing.assert_array_equal(np.asarray(flipped),
                                np.asarray(result.converged))


# --------------------------------------------------------------------- PGD


def test_pgd_raises_loss_and_targeted_pgd_lowers_it():
  seed = fresh_seed()
  logits_fn, variables = tiny_mlp(seed)
  x = random_images(seed, N)
  y = jnp.argmax(logits_fn(variables, x), -1)
  key = jax.random.key(seed)
  for p, eps in (("inf", 0.05), (2, 0.3)):
    # y=None attacks the model's own predictions (= y) and shares the
    # compilation of the norm-bound test.
    adv = attacks.pgd(logits_fn, variables, x, key=key, eps=eps, p=p,
                      num_steps=5)
    before = common.cross_entropy(logits_fn(variables, x), y)
    after = common.cross_entropy(logits_fn(variables, adv), y)
    assert float(after.mean()) > float(before.mean()), (seed, p)
    assert float(jnp.mean(after >= before)) >= 0.9, (seed, p)
    if p != "inf":
      continue
    target = (y + 1) % NUM_CLASSES
    adv = attacks.pgd(logits_fn, variables, x, target, key=key, eps=eps, p=p,
                      num_steps=5, targeted=True)
    before = common.cross_entropy(logits_fn(variables, x), target)
    after = common.cross_entropy(logits_fn(variables, adv), target)
    assert float(after.mean()) < float(before.mean()), (seed, p)


# ----------------------------------------------------------- trained model


@pytest.mark.parametrize("p,xi", [("inf", 0.3), (2, 1.5)])
def test_uap_of_trained_model_beats_random_noise(digits_model, p, xi):
  logits_fn, variables, x_train, x_test = digits_model
  seed = fresh_seed()
  x_fit = x_train[:400]
  key = jax.random.key(seed)
  # The L2 case runs the pipelined variant of the batched DeepFool-UAP.
  method = "minibatch" if p == "inf" else "pipelined"
  found = {method: attacks.uap(logits_fn, variables, x_fit, key=key, xi=xi,
                               p=p, max_passes=4, batch_size=8,
                               method=method).v}
  if p == "inf":   # (one norm suffices for SGD-UAP; it saves a compilation)
    found["sgd"] = attacks.sgd_uap(logits_fn, variables, x_fit, key=key,
                                   xi=xi, p=p, max_passes=4).v
  # Random perturbations of the same norm, averaged over draws (one draw's
  # fooling rate varies a lot).
  noise = jax.random.normal(jax.random.key(seed + 1), (16, 8, 8, 1))
  if p == "inf":   # random vertices of the L-inf ball: the strongest noise
    noise = xi * jnp.sign(noise)
  else:
    noise = xi * noise / jnp.linalg.norm(noise.reshape(16, -1), axis=1).reshape(
        16, 1, 1, 1)
  random_rate = float(np.mean([
      attacks.fooling_rate(logits_fn, variables, x_test, n) for n in noise]))
  for name, v in found.items():
    assert norm(v, p) <= xi * (1 + 1e-5)
    rate = float(attacks.fooling_rate(logits_fn, variables, x_test, v))
    assert rate >= max(2.0 * random_rate, random_rate + 0.15), (
        seed, name, rate, random_rate)


def test_pipelined_with_one_slot_equals_minibatch_of_one():
  # Both are then the original algorithm on the inputs unfooled at the start
  # of each pass; they share no code beyond the DeepFool step.
  seed = fresh_seed()
  logits_fn, variables = tiny_mlp(seed)
  x = random_images(seed, N)
  options = dict(key=jax.random.key(seed), xi=0.5, p=2,
                 **{**UAP_OPTIONS, "batch_size": 1})
  pipelined = attacks.uap(logits_fn, variables, x, method="pipelined",
                          **options)
  minibatch = attacks.uap(logits_fn, variables, x, method="minibatch",
                          **options)
  print(f"seed {seed}")   # pytest shows it if the comparison fails
  chex.assert_trees_all_close(pipelined, minibatch, atol=1e-5)


# ------------------------------------------------------------------ stacks


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_stacked_uaps_equal_per_model_uaps(strategy):
  seed = fresh_seed()
  seeds = [seed, seed + 1]
  logits_fn, variables = tiny_stack(seeds)
  x = random_images(seed, N)
  key = jax.random.key(seed)
  keys = jax.random.split(key, 2)
  options = dict(xi=0.4, p="inf", **UAP_OPTIONS)
  stacked = attacks.uap_stack(logits_fn, variables, x, key=key,
                              strategy=strategy, **options)
  sgd_options = dict(xi=0.2, p="inf", **SGD_OPTIONS)
  sgd_stacked = attacks.sgd_uap_stack(logits_fn, variables, x, key=key,
                                      strategy=strategy, **sgd_options)
  pgd_stacked = attacks.pgd_stack(logits_fn, variables, x, key=key, eps=0.1,
                                  num_steps=3, strategy=strategy)
  for i, model in enumerate(engine.unstack_tree(variables)):
    single = attacks.uap(logits_fn, model, x, key=keys[i], **options)
    sgd_single = attacks.sgd_uap(logits_fn, model, x, key=keys[i],
                                 **sgd_options)
    pgd_single = attacks.pgd(logits_fn, model, x, key=keys[i], eps=0.1,
                             num_steps=3)
    pairs = [(jax.tree.map(lambda a: a[i], stacked), single),
             (jax.tree.map(lambda a: a[i], sgd_stacked), sgd_single),
             (pgd_stacked[i], pgd_single)]
    for got, want in pairs:
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a, np.float64),
                                   np.asarray(b, np.float64), atol=1e-4,
                                   err_msg=f"seed {seed} model {i}")


def test_fooling_rate_and_transfer_matrix_match_direct_count():
  seed = fresh_seed()
  logits_fn, variables = tiny_stack([seed, seed + 1, seed + 2])
  x = random_images(seed, 37)       # not a multiple of the batch size
  uaps = 0.5 * jax.random.normal(jax.random.key(seed), (2,) + SHAPE)
  matrix = attacks.transfer_matrix(logits_fn, variables, x, uaps, batch_size=8)
  assert matrix.shape == (2, 3)
  for j, model in enumerate(engine.unstack_tree(variables)):
    clean = np.asarray(logits_fn(model, x)).argmax(-1)
    for i in range(2):
      adv = np.asarray(logits_fn(model, jnp.clip(x + uaps[i], 0, 1))).argmax(-1)
      direct = float(np.mean(adv != clean))
      assert float(matrix[i, j]) == pytest.approx(direct, abs=1e-6), seed
      rate = attacks.fooling_rate(logits_fn, model, x, uaps[i], batch_size=8)
      assert float(rate) == pytest.approx(direct, abs=1e-6), seed


def test_uap_result_fields():
  seed = fresh_seed()
  logits_fn, variables = tiny_mlp(seed)
  x = random_images(seed, N)
  result = attacks.uap(logits_fn, variables, x, key=jax.random.key(seed),
                       xi=0.5, p="inf", delta=0.5, **UAP_OPTIONS)
  passes = int(result.passes)
  assert 1 <= passes <= 2
  history = np.asarray(result.history)
  assert history.shape == (2,)
  assert np.all(np.isfinite(history[:passes]))
  assert np.all(np.isnan(history[passes:]))
  assert float(result.fooling_rate) == pytest.approx(history[:passes].max())
  if passes < 2:   # stopped early: the target was reached
    assert float(result.fooling_rate) >= 0.5
  rate = attacks.fooling_rate(logits_fn, variables, x, result.v)
  assert float(rate) == pytest.approx(float(result.fooling_rate), abs=1e-6)


# ------------------------------------------------------------- the driver


def test_victim_uap_driver_reproduces_direct_calls_for_every_method():
  seed = fresh_seed()
  logits_fn, variables = tiny_mlp(seed)
  x, x_test = random_images(seed, N), random_images(seed + 1, N)
  key = jax.random.key(seed)
  print(f"seed {seed}")   # pytest shows it if a comparison fails
  names = set()
  for algorithm in config.UAP_METHODS:
    options = SGD_OPTIONS if algorithm == "sgd" else UAP_OPTIONS
    uaps, summary = attacks.compute_victim_uap(
        logits_fn, variables, x, x_test, key=key, algorithm=algorithm,
        p="inf", xi=0.3, num_uaps=2, **options)
    chex.assert_shape(uaps, (2,) + SHAPE)
    assert uaps.dtype == np.float32
    json.dumps(summary)
    names.add(summary["algorithm"])
    assert summary["num_uaps"] == 2 and summary["train_samples"] == N
    assert summary["p"] == "inf" and len(summary["uaps"]) == 2
    for u, row in enumerate(summary["uaps"]):
      # The documented key of UAP u: the stage's keys of every run so far.
      direct_key = jax.random.fold_in(key, 1000 + u)
      if algorithm == "sgd":
        direct = attacks.sgd_uap(logits_fn, variables, x, key=direct_key,
                                 xi=0.3, p="inf", **options)
      else:
        method = {"deepfool": "minibatch"}.get(algorithm, algorithm)
        direct = attacks.uap(logits_fn, variables, x, key=direct_key, xi=0.3,
                             p="inf", method=method, **options)
      chex.assert_trees_all_equal(uaps[u], np.asarray(direct.v))
      assert row["passes"] == int(direct.passes), (seed, algorithm)
      chex.assert_trees_all_close(
          [row["fooling_rate_train"], row["fooling_rate_test"]],
          [float(direct.fooling_rate),
           float(attacks.fooling_rate(logits_fn, variables, x_test, direct.v))],
          atol=1e-6)
  assert len(names) == len(config.UAP_METHODS), names


def test_victim_uap_driver_with_no_uaps_gives_an_empty_set():
  logits_fn, variables = tiny_mlp(0)
  x = random_images(0, N)
  uaps, summary = attacks.compute_victim_uap(
      logits_fn, variables, x, x, key=jax.random.key(0), p="2", xi=0.3,
      num_uaps=0)
  chex.assert_shape(uaps, (0,) + SHAPE)
  assert uaps.dtype == np.float32
  assert summary["num_uaps"] == 0 and summary["algorithm"] == "none"
  assert summary["p"] == "2" and summary["uaps"] == [] and summary["passes"] == []
  assert summary["fooling_rate_train"] is None and summary["xi"] == 0.0


def test_victim_uap_driver_rejects_bad_arguments():
  logits_fn, variables = tiny_mlp(0)
  x = random_images(0, 4)
  with pytest.raises(ValueError, match="Unknown UAP algorithm") as error:
    attacks.compute_victim_uap(logits_fn, variables, x, x,
                               key=jax.random.key(0), xi=0.3, algorithm="minibatch")
  for choice in config.UAP_METHODS:
    assert repr(choice) in str(error.value), choice
  with pytest.raises(ValueError, match="num_uaps"):
    attacks.compute_victim_uap(logits_fn, variables, x, x,
                               key=jax.random.key(0), xi=0.3, num_uaps=-1)


# ------------------------------------------------------------------ errors


def test_bad_arguments_raise_clear_errors():
  logits_fn, variables = tiny_mlp(0)
  x = random_images(0, 4)
  key = jax.random.key(0)
  cases = [
      (dict(p=3), "p=3"),
      (dict(p="l1"), "p='l1'"),
      (dict(xi=0.0), "xi must be"),
      (dict(xi=-1.0), "xi must be"),
      (dict(delta=0.0), "delta must lie"),
      (dict(delta=1.0), "delta must lie"),
      (dict(method="fast"), "Unknown UAP method"),
      (dict(max_passes=0), "max_passes"),
  ]
  for override, message in cases:
    kwargs = dict(key=key, xi=0.1, p="inf", delta=0.2)
    kwargs.update(override)
    with pytest.raises(ValueError, match=message):
      attacks.uap(logits_fn, variables, x, **kwargs)
  with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
    attacks.uap(logits_fn, variables, x * 255.0, key=key, xi=0.1)
  with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
    attacks.pgd(logits_fn, variables, x - 0.5, key=key, eps=0.1)
  with pytest.raises(ValueError, match="empty"):
    attacks.uap(logits_fn, variables, x[:0], key=key, xi=0.1)
  with pytest.raises(ValueError, match="empty"):
    attacks.sgd_uap(logits_fn, variables, x[:0], key=key, xi=0.1)
  with pytest.raises(ValueError, match="\\(N, H, W, C\\)"):
    attacks.deepfool(logits_fn, variables, x[0])
  with pytest.raises(ValueError, match="delta must lie"):
    attacks.sgd_uap(logits_fn, variables, x, key=key, xi=0.1, delta=1.5)
  with pytest.raises(ValueError, match="eps must be"):
    attacks.pgd(logits_fn, variables, x, key=key, eps=0.0)
  with pytest.raises(ValueError, match="needs target labels"):
    attacks.pgd(logits_fn, variables, x, key=key, eps=0.1, targeted=True)
  with pytest.raises(ValueError, match="does not fit"):
    attacks.fooling_rate(logits_fn, variables, x, jnp.zeros((3, 3, 1)))
  with pytest.raises(ValueError, match="uap_stack takes xi"):
    attacks.uap_stack(logits_fn, variables, x, key=key, xi=0.1, radius=2)
  uint8 = np.full((2,) + SHAPE, 255, np.uint8)
  assert float(attacks.fgsm(logits_fn, variables, uint8, eps=0.1).max()) <= 1.0


# -- The one PGD kernel (pgd_steps) ------------------------------------------


def _old_image_pgd(loss_of_x, x, key, eps, steps):
  """The L-inf PGD that adversarial training and extract_adv used to carry
  (random start, step 2.5 eps / steps): pgd_steps' 'image' iterate keeps it."""
  alpha = 2.5 * eps / steps
  x_adv = jnp.clip(x + jax.random.uniform(key, x.shape, minval=-eps, maxval=eps), 0, 1)

  def body(_, xa):
    xa = xa + alpha * jnp.sign(jax.grad(loss_of_x)(xa))
    return jnp.clip(jnp.clip(xa, x - eps, x + eps), 0.0, 1.0)
  return jax.lax.fori_loop(0, steps, body, x_adv)


@pytest.mark.parametrize("iterate", ["offset", "image"])
def test_pgd_steps_reaches_the_corner_of_a_linear_loss(iterate):
  """Ascending sum(w * x) within the L-inf ball ends at x + eps sign(w),
  clipped to [0, 1], from any random start once the steps add up to 2 eps."""
  kx, kw, ks = jax.random.split(jax.random.key(fresh_seed()), 3)
  x = jax.random.uniform(kx, (N,) + SHAPE)
  w = jax.random.normal(kw, x.shape)
  eps = 0.1
  adv = jax.jit(lambda x, key: attacks.pgd_steps(
      lambda xa: jnp.sum(w * xa), x, key, eps, eps, 3, iterate=iterate))(x, ks)
  chex.assert_shape(adv, x.shape)
  np.testing.assert_allclose(adv, jnp.clip(x + eps * jnp.sign(w), 0, 1), atol=1e-6)


def test_pgd_steps_l2_moves_along_the_gradient_to_the_sphere():
  kx, kw, ks = jax.random.split(jax.random.key(fresh_seed()), 3)
  x = 0.3 + 0.4 * jax.random.uniform(kx, (N,) + SHAPE)  # far from the box edges
  w = jax.random.normal(kw, x.shape)
  eps = 0.05
  adv = attacks.pgd_steps(lambda xa: jnp.sum(w * xa), x, ks, eps, eps, 20, 2.0)
  unit = w / jnp.sqrt(jnp.sum(w ** 2, axis=(1, 2, 3), keepdims=True))
  np.testing.assert_allclose(adv, x + eps * unit, atol=2e-3)
  assert float(jnp.max(common.flat_norm(adv - x, 2.0, 1))) <= eps + 1e-6


def test_image_iterate_is_the_old_training_and_zoo_pgd():
  logits_fn, variables = tiny_mlp(fresh_seed())
  kx, kt, ks = jax.random.split(jax.random.key(fresh_seed()), 3)
  x = jax.random.uniform(kx, (N,) + SHAPE)
  target = jax.nn.softmax(jax.random.normal(kt, (N, NUM_CLASSES)))
  loss = lambda xa: -jnp.mean(jnp.sum(target * jax.nn.log_softmax(
      logits_fn(variables, xa)), -1))
  eps = jnp.float32(0.05)
  new = jax.jit(lambda x, k: attacks.pgd_steps(loss, x, k, eps, 2.5 * eps / 5, 5,
                                                iterate="image"))(x, ks)
  old = jax.jit(lambda x, k: _old_image_pgd(loss, x, k, eps, 5))(x, ks)
  np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
  # Inside vmap with a traced radius per row, as the training step uses it.
  radii = jnp.array([0.02, 0.08], jnp.float32)
  both = jax.vmap(lambda e: attacks.pgd_steps(loss, x, ks, e, 2.5 * e / 5, 5,
                                              iterate="image"))(radii)
  for r, out in zip([0.02, 0.08], both):
    assert float(jnp.max(jnp.abs(out - x))) <= r + 1e-6


@pytest.mark.parametrize("p", ["inf", 2])
def test_pgd_is_the_offset_kernel_on_the_summed_cross_entropy(p):
  logits_fn, variables = tiny_mlp(fresh_seed())
  kx, ks = jax.random.split(jax.random.key(fresh_seed()))
  x = jax.random.uniform(kx, (N,) + SHAPE)
  y = jnp.arange(N) % NUM_CLASSES
  adv = attacks.pgd(logits_fn, variables, x, y, key=ks, eps=0.1, num_steps=3, p=p)
  loss = lambda xa: jnp.sum(common.cross_entropy(logits_fn(variables, xa), y))
  ref = attacks.pgd_steps(loss, x, ks, jnp.float32(0.1), jnp.float32(2.5 * 0.1 / 3), 3,
                          common.check_p(p))
  np.testing.assert_allclose(adv, ref, atol=1e-6)


def test_pgd_steps_rejects_unknown_iterates_and_l2_images():
  x = jnp.full((2,) + SHAPE, 0.5)
  loss = lambda xa: jnp.sum(xa)
  with pytest.raises(ValueError, match="iterate must be one of"):
    attacks.pgd_steps(loss, x, jax.random.key(0), 0.1, 0.1, 1, iterate="pixels")
  with pytest.raises(ValueError, match="L-inf"):
    attacks.pgd_steps(loss, x, jax.random.key(0), 0.1, 0.1, 1, 2.0, iterate="image")
