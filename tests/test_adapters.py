"""The owner's own models: specs, adapters for NNX / PyTorch / Keras, and a
given victim through the command line.

The models are in tests/adapter_models/models.py. The torch tests skip where
torch or torch2jax is not installed (extra ``[torch]``), the Keras test where
keras is not (extra ``[keras]``).
"""

import dataclasses
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uap_jax import adapters
from uap_jax import config as config_lib
from uap_jax import data as data_lib
from uap_jax import pipeline
from uap_jax.adapters import suspects
from uap_jax.runtime import checkpoint
from uap_jax.runtime import stack as stack_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(REPO, "tests", "adapter_models", "models.py")
QUICKSTART = os.path.join(REPO, "experiments", "quickstart.flags")
TINY = [line.strip() for line in open(os.path.join(REPO, "experiments", "tiny.flags"))
        if line.startswith("--")]

HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "torch2jax"))
HAVE_KERAS = importlib.util.find_spec("keras") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch/torch2jax not installed "
                                 "(pip install -e '.[torch]')")
needs_keras = pytest.mark.skipif(not HAVE_KERAS, reason="keras not installed "
                                 "(pip install -e '.[keras]')")


def spec(function):
  return f"py:{MODELS}:{function}"


@pytest.fixture(scope="module")
def digits():
  return data_lib.load_dataset("digits")


def _images(data, count=16):
  return np.asarray(data.x_test[:count], np.float32) / 255.0


# --------------------------------------------------------------------------
# Specs refused before anything runs.

@pytest.mark.parametrize("bad, message", [
    ("py:no_such_module_xyz:make", "not importable"),
    ("py:/no/such/file.py:make", "no file"),
    ("py:make", "py:MODULE:FUNCTION"),
    ("victim.onnx", "none of"),
    ("/no/such/model.pt", "no such file"),
])
def test_bad_spec_is_refused_by_name(bad, message):
  with pytest.raises(ValueError, match=message):
    adapters.check_spec(bad)


def test_reference_models_must_be_models(tmp_path):
  answers = tmp_path / "a.npz"
  np.savez(answers, outputs=np.zeros((3, 10)))
  with pytest.raises(ValueError, match="recorded answers cannot join the reference"):
    suspects.check_reference_models(f"{spec('torch_victim')},{answers}")
  with pytest.raises(ValueError, match="--reference_models=py:no_such_module_xyz:f"):
    suspects.check_reference_models("py:no_such_module_xyz:f")
  with pytest.raises(ValueError, match="--reference_models=.*names no model"):
    suspects.check_reference_models(" , ")


def test_directory_without_a_checkpoint_is_refused(tmp_path):
  with pytest.raises(ValueError, match="no uap-jax stack checkpoint"):
    adapters.check_spec(str(tmp_path))


@pytest.mark.parametrize("function, message", [
    ("probabilities", "probabilities .* not logits"),
    ("three_classes", "3 logits per image but the data set has 10 classes"),
    ("flat_output", r"must return logits of shape \(N, num_classes\)"),
    ("not_a_model", "returned a str"),
    ("raises", "raised RuntimeError: weights file victim.pt not found"),
    ("no_such_function", "has no function 'no_such_function'"),
])
def test_bad_model_is_refused_against_the_data(digits, function, message):
  with pytest.raises(ValueError, match=message) as error:
    adapters.check_against_data(spec(function), digits, flag="--victim")
  assert str(error.value).startswith(f"--victim={spec(function)}: ")


@pytest.mark.parametrize("function, message", [
    ("three_classes", "10 classes"), ("probabilities", "not logits"),
    ("no_such_function", "has no function")])
def test_bad_victim_stops_the_run_before_any_file(tmp_path, function, message):
  cfg = config_lib.parse([f"--flagfile={QUICKSTART}", f"--workdir={tmp_path / 'wd'}",
                          *TINY, f"--victim={spec(function)}"])
  with pytest.raises(ValueError, match=message):
    pipeline.run(cfg)
  assert not (tmp_path / "wd").exists()


def test_nan_outputs_and_wrong_input_shape_are_refused(digits):
  base = adapters.load_model(spec("three_classes"))
  nan = adapters.ModelAdapter(name="nan", logits_fn=lambda v, x: jnp.full(
      (x.shape[0], 10), jnp.nan), variables=())
  with pytest.raises(ValueError, match="non-finite"):
    adapters.check_outputs(nan, _images(digits), 10, (8, 8, 1))
  wide = dataclasses.replace(base, input_shape=(32, 32, 3))
  with pytest.raises(ValueError, match=r"takes \(32, 32, 3\) images"):
    adapters.check_outputs(wide, _images(digits), 3, (8, 8, 1))


# --------------------------------------------------------------------------
# Adapters reproduce their framework's model, as a stack too.

def _stack_logits(adapter, data):
  stack = adapters.to_stack(adapter, {"name": adapter.name}, num_classes=10,
                            image_shape=data.image_shape)
  return np.asarray(stack_lib.predict(stack, data.x_test[:16], output="logits")[0]), stack


def test_nnx_module_from_a_py_spec_runs_as_itself_and_as_a_stack(digits):
  from tests.adapter_models import models  # pylint: disable=g-import-not-at-top
  module = models.nnx_victim()
  x = _images(digits)
  adapter = adapters.load_model(spec("nnx_victim"))
  want = np.asarray(module(jnp.asarray(x)))
  np.testing.assert_allclose(adapters.check_outputs(adapter, x, 10, (8, 8, 1)), want,
                             rtol=1e-5, atol=1e-5)
  got, stack = _stack_logits(adapter, digits)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Every parameter is trainable; the final layer is the `head` attribute.
  assert adapter.is_trainable and adapter.has_head
  head = jax.tree.leaves(stack.params["head"])
  assert sorted(leaf.shape for leaf in head) == [(1, 10), (1, 32, 10)]


def test_adapter_module_trains_only_trainable_leaves_and_keeps_frozen_ones():
  w = jnp.arange(6.0).reshape(2, 3)
  b = jnp.ones(3)
  scale = jnp.asarray(2.0)
  adapter = adapters.ModelAdapter(
      name="lin", logits_fn=lambda v, x: (x.reshape(x.shape[0], -1) @ v["w"] + v["b"])
      * v["scale"], variables={"w": w, "b": b, "scale": scale},
      trainable={"w": True, "b": True, "scale": False},
      head={"w": True, "b": False, "scale": False})
  from flax import nnx  # pylint: disable=g-import-not-at-top
  module = adapters.module_of(adapter)
  _, params, rest = nnx.split(module, nnx.Param, ...)
  assert sorted(np.size(p) for p in jax.tree.leaves(params)) == [3, 6]
  assert [np.size(p) for p in jax.tree.leaves(rest) if np.ndim(p) == 0] == [1]
  x = jnp.ones((4, 1, 2, 1))
  np.testing.assert_allclose(module(x), adapter.logits_fn(adapter.variables, x))
  # The weight matrix is a kernel (pruned), the bias a bias; w is the head.
  assert "kernel" in str(jax.tree_util.tree_structure(module.head))
  with pytest.raises(ValueError, match="one bool per leaf"):
    adapters.module_of(adapters.ModelAdapter(
        name="bad", logits_fn=adapter.logits_fn, variables=adapter.variables,
        trainable=[True]))


@needs_torch
def test_torch_module_logits_and_input_gradients_match_torch(digits):
  import torch  # pylint: disable=g-import-not-at-top
  from tests.adapter_models import models  # pylint: disable=g-import-not-at-top
  module = models.torch_untrained()
  adapter = adapters.load_model(spec("torch_untrained"))
  x = _images(digits)
  xt = torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy()).requires_grad_(True)
  want = module(xt)  # eval mode: BatchNorm's running statistics
  want[:, 3].sum().backward()
  want_grad = np.transpose(xt.grad.numpy(), (0, 2, 3, 1))
  logits_fn = jax.jit(adapter.logits_fn)
  np.testing.assert_allclose(logits_fn(adapter.variables, jnp.asarray(x)),
                             want.detach().numpy(), rtol=1e-4, atol=1e-5)
  grad = jax.jit(jax.grad(lambda xx: adapter.logits_fn(adapter.variables, xx)[:, 3].sum()))
  np.testing.assert_allclose(grad(jnp.asarray(x)), want_grad, rtol=1e-4, atol=1e-5)
  # Parameters train, BatchNorm buffers do not; the last Linear is the head.
  assert set(adapter.variables["buffers"]) >= {"1.running_mean", "1.running_var"}
  head = [k for k, h in adapter.head["params"].items() if h]
  assert head == ["7.weight", "7.bias"]
  got, _ = _stack_logits(adapter, digits)
  np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_init_fn_is_checked_against_the_variables():
  adapter = adapters.load_model(spec("three_classes"))
  assert adapters.check_init_fn(adapter) == "its adapter has no init_fn"
  rng = lambda seed: np.random.default_rng(seed).normal(size=(64, 3)).astype(np.float32)
  assert adapters.check_init_fn(dataclasses.replace(adapter, init_fn=rng)) is None
  wrong = dataclasses.replace(adapter, init_fn=lambda seed: rng(seed)[:, :2])
  assert "(64, 2)" in adapters.check_init_fn(wrong)
  failing = dataclasses.replace(adapter, init_fn=lambda seed: 1 / 0)
  assert "ZeroDivisionError" in adapters.check_init_fn(failing)


@needs_torch
def test_torch_init_fn_gives_fresh_seeded_weights_or_none():
  import torch  # pylint: disable=g-import-not-at-top
  from tests.adapter_models import models  # pylint: disable=g-import-not-at-top
  adapter = adapters.load_model(spec("torch_untrained"))
  assert adapters.check_init_fn(adapter) is None
  a, b, again = adapter.init_fn(1), adapter.init_fn(2), adapter.init_fn(1)
  kernel = "0.weight"
  assert not np.array_equal(a["params"][kernel], adapter.variables["params"][kernel])
  assert not np.array_equal(a["params"][kernel], b["params"][kernel])
  np.testing.assert_array_equal(a["params"][kernel], again["params"][kernel])
  # BatchNorm's statistics are reset too, not the victim's.
  np.testing.assert_array_equal(a["buffers"]["1.running_mean"], np.zeros(8))

  class Scaled(torch.nn.Module):  # a bare Parameter no reset_parameters reaches

    def __init__(self):
      super().__init__()
      self.net = models.torch_untrained()
      self.scale = torch.nn.Parameter(torch.ones(10))

    def forward(self, x):
      return self.net(x) * self.scale

  from uap_jax.adapters import torch_adapter  # pylint: disable=g-import-not-at-top
  assert torch_adapter.reinitializer(Scaled()) is None


@needs_torch
def test_torchscript_file_is_refused_with_the_way_out(digits, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  from tests.adapter_models import models  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "victim.pt")
  torch.jit.save(torch.jit.script(models.torch_untrained()), path)
  with pytest.raises(ValueError, match="TorchScript.*py:FILE.py:FUNCTION"):
    adapters.check_against_data(path, digits, flag="--victim")


@needs_keras
def test_keras_model_logits_match_keras(digits, tmp_path):
  from tests.adapter_models import models  # pylint: disable=g-import-not-at-top
  model = models.keras_victim()
  x = _images(digits)
  want = np.asarray(model(x, training=False))
  adapter = adapters.load_model(spec("keras_victim"))
  np.testing.assert_allclose(adapters.check_outputs(adapter, x, 10, (8, 8, 1)), want,
                             rtol=1e-5, atol=1e-5)
  assert adapter.input_shape == (8, 8, 1) and adapter.has_head
  # BatchNormalization's moving statistics are not trainable.
  assert len(adapter.variables[1]) == 2
  path = str(tmp_path / "victim.keras")
  model.save(path)
  from_file = adapters.load_model(path)
  np.testing.assert_allclose(from_file.logits_fn(from_file.variables, jnp.asarray(x)),
                             want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# A given victim through the command line.

def test_nnx_victim_is_recorded_not_trained(tmp_path):
  workdir = tmp_path / "wd"
  pipeline.run(config_lib.parse([
      f"--flagfile={QUICKSTART}", f"--workdir={workdir}", *TINY,
      f"--victim={spec('nnx_victim')}", "--stages=victim"]))
  summary = json.loads((workdir / "victim.json").read_text())
  assert summary["given"] and summary["train_examples"] == 0
  assert summary["parameters"] == 64 * 32 + 32 + 32 * 10 + 10
  assert summary["arch"] == adapters.ADAPTER_ARCH and summary["trainable"]
  stack = checkpoint.load_stack(str(workdir / "checkpoints" / "victim"))
  from tests.adapter_models import models  # pylint: disable=g-import-not-at-top
  data = data_lib.load_dataset("digits")
  want = np.asarray(models.nnx_victim()(jnp.asarray(_images(data))))
  got = stack_lib.predict(stack, data.x_test[:16], output="logits")[0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _leaves(stack, group):
  return [np.asarray(leaf) for leaf in jax.tree.leaves(stack.params[group])]


@needs_torch
def test_torch_victim_end_to_end_through_the_command_line(tmp_path):
  """The tiny quickstart around a torch victim: the white-box kinds train its
  torch weights as JAX arrays (the last layer alone, all, pruned), and torch
  suspects are judged: the victim's own module as pirated-or-close, an
  independently trained torch CNN never as pirated."""
  workdir = tmp_path / "wd"
  run = [f"--flagfile={QUICKSTART}", f"--workdir={workdir}", *TINY,
         f"--victim={spec('torch_victim')}",
         f"--reference_models={spec('torch_reference')}",
         "--zoo_kinds=extract_soft,finetune_last,finetune_all,prune,"
         "independent_seed,independent_arch,independent_data"]
  pipeline.run(config_lib.parse(run))
  victim_summary = json.loads((workdir / "victim.json").read_text())
  assert victim_summary["given"] and victim_summary["test_accuracy"] > 0.8
  assert victim_summary["trainable_parameters"] == 4554  # BatchNorm buffers are not
  zoo = {m["kind"]: m for m in json.loads((workdir / "zoo.json").read_text())["models"]}
  for kind in ("finetune_last", "finetune_all", "prune"):
    assert zoo[kind]["arch"] == adapters.ADAPTER_ARCH and zoo[kind]["agreement"] > 0.8, kind
  ckpt = lambda name: checkpoint.load_stack(str(workdir / "checkpoints" / name))
  victim = ckpt("victim")
  last, every, pruned = (ckpt(f"zoo/{k}__adapter")
                         for k in ("finetune_last", "finetune_all", "prune"))
  # finetune_last moved the final Linear only; finetune_all moved the body too.
  for a, b in zip(_leaves(last, "body"), _leaves(victim, "body")):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(last, "head"),
                                                      _leaves(victim, "head")))
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(every, "body"),
                                                      _leaves(victim, "body")))
  zeros = lambda s: sum(int((leaf == 0).sum()) for g in ("body", "head")
                        for leaf in _leaves(s, g) if leaf.ndim >= 2)
  assert zeros(pruned) > zeros(victim) + 50
  results = json.loads((workdir / "report" / "results.json").read_text())
  # Over a reference that holds 4 fresh models of the victim's own
  # architecture, a 40-step encoder separates even the victim only modestly.
  assert results["victim_self"]["p_value"] < 0.05
  # The bank holds independents of the victim's own architecture, one stack
  # per recipe (tiny.flags: base and adam, 2 models each).
  bank = json.loads((workdir / "reference.json").read_text())
  own_arch = [m for m in bank["models"]
              if m["arch"] == adapters.ADAPTER_ARCH and m["recipe"] != "given"]
  assert len(own_arch) == 4 and all("test_accuracy" in m for m in own_arch)
  assert all(s["name"].startswith(("adapter-", "reference_given_")) for s in bank["stacks"]
             if s["arch"] == adapters.ADAPTER_ARCH)
  # The owner's own independent joins the reference the test is over.
  given, = [m for m in bank["models"] if m["recipe"] == "given"]
  assert given["source"].endswith(":torch_reference") and given["test_accuracy"] > 0.5
  assert results["reference"]["recipes"]["given"] == 1
  # Torch suspects, white box, judged as one batch.
  pipeline.run(config_lib.parse(run + [
      "--stages=verify", f"--suspect={spec('torch_victim')},{spec('torch_independent')}"]))
  verdicts = {}
  for name in ("torch_victim", "torch_independent"):
    verdicts[name], = json.loads((workdir / "verdicts" / f"models_{name}.json").read_text())[
        "verdicts"]
  own, other = verdicts["torch_victim"], verdicts["torch_independent"]
  assert own["p_value"] < 0.05 and own["verdict"] != "not_pirated"
  assert other["verdict"] != "pirated" and other["p_value"] > own["p_value"]
  assert own["similarity_mean"] > other["similarity_mean"]
