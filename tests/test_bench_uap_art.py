"""experiments/bench_uap_art.py: its PyTorch copy of the LeNet-5 is the same model.

The ART comparison is only fair if ART attacks the model uap-jax attacks; this
checks the weight-for-weight copy on random weights (no training, no ART).
"""

import importlib.util
import os
import sys

import jax
import numpy as np
import pytest

from uap_jax.runtime import stack as stack_lib

torch = pytest.importorskip("torch")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, "experiments")


def _bench():
  sys.path.insert(0, EXPERIMENTS)   # its sibling modules bench_uap, bench_common
  try:
    spec = importlib.util.spec_from_file_location(
        "bench_uap_art", os.path.join(EXPERIMENTS, "bench_uap_art.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(EXPERIMENTS)
  return module


def test_torch_copy_gives_the_jax_lenets_logits():
  bench = _bench()
  stack = stack_lib.create("lenet5", [3], num_classes=10,
                           image_shape=(28, 28, 1))
  variables = jax.tree.map(lambda a: a[0], (stack.params, stack.rest))
  x = np.random.default_rng(0).uniform(size=(8, 28, 28, 1)).astype(np.float32)
  with torch.no_grad():
    copied = bench.torch_lenet(variables)(
        torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  np.testing.assert_allclose(copied, stack.logits_fn(variables, x),
                             atol=1e-4, rtol=1e-4)


def test_method_specs_parse():
  bench = _bench()
  assert bench.parse_method("sequential") == ("sequential", 1, 10)
  assert bench.parse_method("pipelined:32:3") == ("pipelined", 32, 3)
