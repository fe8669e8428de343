"""Meshes and the ``shard`` strategy: same results on 1 and on 8 devices.

The 8-device checks run in a child process (this file run as a script) with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, because the device
count of a process is fixed when JAX starts.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TOL = 2e-5


# --------------------------------------------------------------------------
# Mesh specs (no devices needed beyond the count).


@pytest.mark.parametrize("spec,n,expected", [
    ("", 8, {"models": 8}),
    ("auto", 1, {"models": 1}),
    ("models:8", 8, {"models": 8}),
    ("models:4,data:2", 8, {"models": 4, "data": 2}),
    ("data:2,models:4", 8, {"models": 4, "data": 2}),
    ("data:8", 8, {"models": 1, "data": 8}),
    ("models,data:2", 8, {"models": 4, "data": 2}),
    (" models : * , data:1 ", 4, {"models": 4, "data": 1}),
])
def test_parse_mesh_spec(spec, n, expected):
  from uap_jax.runtime import sharding  # pylint: disable=g-import-not-at-top
  sizes = sharding.parse_mesh_spec(spec, n)
  assert sizes == expected
  assert list(sizes)[0] == "models"
  assert int(np.prod(list(sizes.values()))) == n


@pytest.mark.parametrize("spec,n,message", [
    ("model:8", 8, "unknown axis 'model'"),
    ("models:4,models:2", 8, "given twice"),
    ("models:0", 8, "positive integer"),
    ("models:x", 8, "positive integer"),
    ("models:4", 8, "covers 4 devices but this process has 8"),
    ("models,data", 8, "only one axis may leave its size out"),
    ("models,data:3", 8, "do not divide"),
])
def test_parse_mesh_spec_errors_name_problem_and_fix(spec, n, message):
  from uap_jax.runtime import sharding  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=message):
    sharding.parse_mesh_spec(spec, n)


def test_pad_models_repeats_last_model_and_pads_keys():
  import jax  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime import engine  # pylint: disable=g-import-not-at-top
  tree = {"w": np.arange(5.0)[:, None] * np.ones((5, 2)),
          "key": jax.random.split(jax.random.key(0), 5)}
  padded, k = engine.pad_models(tree, 4)
  assert k == 5 and engine.num_models(padded) == 8
  np.testing.assert_array_equal(np.asarray(padded["w"])[5:], np.full((3, 2), 4.0))
  np.testing.assert_array_equal(jax.random.key_data(padded["key"][7]),
                                jax.random.key_data(tree["key"][4]))
  same, k = engine.pad_models(tree, 5)
  assert k == 5 and same is tree


def test_auto_resolves_to_a_concrete_strategy():
  import jax  # pylint: disable=g-import-not-at-top
  from uap_jax import config  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime import engine  # pylint: disable=g-import-not-at-top
  assert engine.default_strategy("cpu") == "loop"
  assert engine.default_strategy("cpu", forward_only=True) == "map"
  assert engine.resolve("auto") == engine.default_strategy(jax.default_backend())
  assert engine.resolve("auto", forward_only=True) == engine.default_strategy(
      jax.default_backend(), forward_only=True)
  assert engine.resolve("auto") in config.STRATEGIES[1:]
  assert engine.resolve("map") == "map"
  assert engine.resolve("loop", forward_only=True) == "loop"  # a choice is kept
  with pytest.raises(ValueError, match="Unknown model-axis strategy"):
    engine.check_strategy("pmap")


def test_shard_needs_its_mesh_axis():
  from uap_jax.runtime import engine  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime import sharding
  import jax  # pylint: disable=g-import-not-at-top
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:1]), ("batch",))
  f = engine.over_models(lambda w, x: w * x, "shard", mesh=mesh)
  with pytest.raises(ValueError, match="needs a mesh axis 'models'"):
    f(np.ones((2, 3)), np.ones(3))
  del sharding


# --------------------------------------------------------------------------
# 8 devices, in a child process.


def _child_checks() -> dict:
  """Runs in the 8-device child; returns max |shard - loop| per check."""
  import jax  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime import engine  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime import sharding
  from uap_jax import train
  from uap_jax.runtime import stack as stack_lib  # pylint: disable=g-import-not-at-top

  def distinct_stack(arch, k):
    # Building k models eagerly is slow on 8 host devices; scale the weights
    # of one model per position instead, which keeps the models distinct (a
    # mix-up of models would show).
    one = stack_lib.create(arch, [0], num_classes=4, image_shape=(8, 8, 1),
                           width=0.25)
    scale = 1.0 + 0.1 * np.arange(k, dtype=np.float32)
    params = jax.tree.map(
        lambda a: a * scale.reshape((k,) + (1,) * (a.ndim - 1)),
        engine.take_models(one.params, np.zeros(k, np.int32)))
    return stack_lib.Stack(
        arch=arch, arch_kwargs=one.arch_kwargs, graphdef=one.graphdef,
        params=params, rest=engine.take_models(one.rest, np.zeros(k, np.int32)),
        meta=[{"name": f"{arch}_{i}", "seed": i} for i in range(k)])

  out = {"devices": jax.device_count()}
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (13, 8, 8, 1), dtype=np.uint8)

  # Forward pass: K = 5 (padded to 8) and K = 8 on models:8.
  for arch, k in (("mlp", 5), ("mlp", 8)):
    s = distinct_stack(arch, k)
    ref = stack_lib.predict(s, x, strategy="loop")
    got = stack_lib.predict(s, x, strategy="shard")
    out[f"predict_{arch}_k{k}"] = float(np.abs(got - ref).max())
    out[f"predict_{arch}_k{k}_shape_ok"] = got.shape == ref.shape

  # Fingerprints (views mapped inside each model), 5 suspects on 8 devices.
  from uap_jax import fingerprint  # pylint: disable=g-import-not-at-top
  s = distinct_stack("mlp", 5)
  points = rng.integers(0, 256, (3, 4, 8, 8, 1), dtype=np.uint8)
  uap = rng.uniform(-0.1, 0.1, (8, 8, 1)).astype(np.float32)
  ref = np.asarray(fingerprint.fingerprints(s, points, uap, strategy="loop"))
  got = np.asarray(fingerprint.fingerprints(s, points, uap, strategy="shard"))
  out["fingerprints"] = float(np.abs(got - ref).max())
  out["fingerprints_shape_ok"] = got.shape == ref.shape

  # 2-D meshes, the batch (13 rows, padded) split over 'data'.
  s = distinct_stack("mlp", 3)
  ref = stack_lib.predict(s, x, strategy="loop")
  xf = stack_lib.to_float(x)
  for spec in ("models:4,data:2", "data:8"):
    mesh = sharding.make_mesh(spec)
    f = engine.over_models(s.logits_fn, "shard", mesh=mesh, data_split=(None, 0))
    got = np.asarray(f(s.variables, xf))
    out[f"data_split_{spec}"] = float(np.abs(got - ref).max())
    out[f"data_split_{spec}_shape_ok"] = got.shape == ref.shape
  # The installed default mesh (a third layout) is used when none is passed.
  sharding.set_default_mesh("models:2,data:4")
  f = engine.over_models(s.logits_fn, "shard", data_split=(None, 0))
  out["default_mesh"] = float(np.abs(np.asarray(f(s.variables, xf)) - ref).max())
  sharding.set_default_mesh(None)

  # Without data_split, a 2-D mesh spreads the models over all 8 devices.
  s5 = distinct_stack("mlp", 5)
  ref5 = stack_lib.predict(s5, x, strategy="loop")
  f = engine.over_models(s5.logits_fn, "shard",
                         mesh=sharding.make_mesh("models:2,data:4"))
  got = f(s5.variables, xf)
  out["models_over_both_axes"] = float(np.abs(np.asarray(got) - ref5).max())
  out["models_over_both_axes_shape_ok"] = got.shape == ref5.shape

  # One training step of 3 models (padded to 8), shard vs loop.
  cfg = train.TrainConfig(epochs=1, batch_size=8, lr=0.1, log_every=1000)
  x_pool = rng.integers(0, 256, (24, 8, 8, 1), dtype=np.uint8)
  y_pool = rng.integers(0, 4, 24).astype(np.int32)
  parts = [np.arange(0, 8), np.arange(8, 16), np.arange(16, 24)]
  params = {}
  for strategy in ("loop", "shard"):
    s = stack_lib.create("mlp", [0, 1, 2], num_classes=4, image_shape=(8, 8, 1),
                         width=0.25)
    trained, hist = train.train_stack(s, x_pool, parts, cfg,
                                      labels=[y_pool[p] for p in parts],
                                      strategy=strategy)
    assert hist["steps"] == 1
    params[strategy] = trained.params
    out[f"train_{strategy}_changed"] = float(max(
        np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(
            jax.tree.leaves(trained.params), jax.tree.leaves(s.params))))
  out["train_step"] = float(max(
      np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(
          jax.tree.leaves(params["loop"]), jax.tree.leaves(params["shard"]))))
  out["train_k"] = engine.num_models(params["shard"])

  # What the zoo stage trains (extraction, fine-tuning, independents), 3
  # models a stack spread over the 8 devices, against the loop.
  from uap_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from uap_jax import zoo  # pylint: disable=g-import-not-at-top
  kinds = ("extract_soft", "finetune_all", "independent_seed")
  zoo_cfg = config_lib.Config(
      dataset="digits", victim_arch="mlp", zoo_archs=["mlp"], zoo_kinds=list(kinds),
      zoo_count=3, zoo_epochs=1.0, finetune_epochs=1.0, batch_size=8,
      query_budget=32, augment="false")
  arch_kwargs = dict(num_classes=4, image_shape=(8, 8, 1), width=0.25)
  victim = stack_lib.create("mlp", [7], **arch_kwargs)
  x_pool = rng.integers(0, 256, (48, 8, 8, 1), dtype=np.uint8)
  y_pool = rng.integers(0, 4, 48).astype(np.int32)
  zoo_parts = {"victim": np.arange(0, 16), "attacker": np.arange(16, 32),
               "independent": np.arange(32, 48)}
  for plan in zoo.plan_zoo(zoo_cfg, victim_arch="mlp"):
    trained = {strategy: zoo.train_plan(
        plan, victim, x_pool, y_pool, zoo_parts, augment=False,
        arch_kwargs=arch_kwargs, strategy=strategy)[0] for strategy in ("loop", "shard")}
    out[f"zoo_{plan.kind}"] = float(max(
        np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(
            jax.tree.leaves(trained["loop"].params),
            jax.tree.leaves(trained["shard"].params))))
    out[f"zoo_{plan.kind}_k"] = trained["shard"].size
  return out


@pytest.fixture(scope="module")
def eight_device_results():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, __file__], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_child_sees_eight_devices(eight_device_results):
  assert eight_device_results["devices"] == 8


@pytest.mark.parametrize("check", ["predict_mlp_k5", "predict_mlp_k8"])
def test_shard_forward_equals_loop_on_8_devices(eight_device_results, check):
  assert eight_device_results[f"{check}_shape_ok"]
  assert eight_device_results[check] < TOL


def test_shard_fingerprints_equal_loop_on_8_devices(eight_device_results):
  assert eight_device_results["fingerprints_shape_ok"]
  assert eight_device_results["fingerprints"] < TOL


@pytest.mark.parametrize("spec", ["models:4,data:2", "data:8"])
def test_data_axis_split_equals_loop(eight_device_results, spec):
  assert eight_device_results[f"data_split_{spec}_shape_ok"]
  assert eight_device_results[f"data_split_{spec}"] < TOL


def test_models_spread_over_both_axes_without_data_split(eight_device_results):
  assert eight_device_results["models_over_both_axes_shape_ok"]
  assert eight_device_results["models_over_both_axes"] < TOL


def test_default_mesh_is_used(eight_device_results):
  assert eight_device_results["default_mesh"] < TOL


@pytest.mark.parametrize("kind", ["extract_soft", "finetune_all", "independent_seed"])
def test_zoo_stacks_trained_over_8_devices_equal_the_loop(eight_device_results, kind):
  assert eight_device_results[f"zoo_{kind}_k"] == 3
  assert eight_device_results[f"zoo_{kind}"] < 1e-4


def test_shard_training_step_equals_loop(eight_device_results):
  r = eight_device_results
  assert r["train_k"] == 3
  # The step did something, and the same thing under both strategies.
  assert r["train_loop_changed"] > 1e-3
  assert r["train_step"] < 1e-4


if __name__ == "__main__":
  print(json.dumps(_child_checks()))
