"""Dividing a stage's artefacts among processes: the schedule, the single-
process path of build_missing, and stacks staged by a process other than 0.

The multi-process paths run in tests/test_multihost.py (two real processes).
"""

import itertools
import os

import jax
import numpy as np
import pytest

from uap_jax.runtime import checkpoint
from uap_jax.runtime import divide
from uap_jax.runtime import stack as stack_lib


@pytest.mark.parametrize("costs,n", [
    ([], 1), ([5.0], 3), ([3, 3, 2, 2, 2], 2), ([1] * 7, 3),
    ([9, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2), ([0.5, 8, 2, 2, 7, 1, 3], 4),
])
def test_assign_gives_every_item_one_process_within_the_lpt_bound(costs, n):
  owner = divide.assign(costs, n)
  assert len(owner) == len(costs) and all(0 <= p < n for p in owner)
  loads = [sum(c for c, p in zip(costs, owner) if p == q) for q in range(n)]
  if costs:
    # The best makespan, by brute force over every assignment (small cases).
    best = min(max(sum(c for c, p in zip(costs, a) if p == q) for q in range(n))
               for a in itertools.product(range(n), repeat=len(costs)))
    assert max(loads) <= 4 / 3 * best + 1e-9
  assert divide.assign(costs, n) == owner  # the same on every process


def test_assign_puts_the_largest_items_on_different_processes():
  assert divide.assign([1, 10, 1, 10], 2) == [0, 0, 1, 1]


@pytest.mark.parametrize("costs,n,message", [
    ([1.0], 0, "num_processes must be >= 1"),
    ([1.0, -1.0], 2, "finite and >= 0"),
    ([float("nan")], 2, "finite and >= 0"),
])
def test_assign_rejects_bad_input(costs, n, message):
  with pytest.raises(ValueError, match=message):
    divide.assign(costs, n)


def test_build_missing_in_one_process_loads_what_is_saved_and_builds_the_rest():
  saved = {"a": "A-saved", "c": "C-saved"}
  calls = []

  def build(item):
    calls.append(item)
    saved[item] = f"{item.upper()}-built"
    return saved[item]

  built = divide.build_missing(list("abcd"), load=saved.get, build=build, what="things")
  assert built.results == ["A-saved", "B-built", "C-saved", "D-built"]
  assert built.owner == [-1, 0, -1, 0] and built.built == [1, 3]
  assert calls == ["b", "d"]

  again = divide.build_missing(list("abcd"), load=saved.get, build=build, what="things")
  assert again.built == [] and calls == ["b", "d"]  # nothing is missing now

  redone = divide.build_missing(list("ab"), load=saved.get, build=build,
                                what="things", rebuild=True)
  assert redone.built == [0, 1] and calls == ["b", "d", "a", "b"]


def test_build_missing_in_one_process_raises_the_builders_error():
  def build(item):
    raise RuntimeError(f"cannot build {item}")
  with pytest.raises(RuntimeError, match="cannot build x"):
    divide.build_missing(["x"], load=lambda _: None, build=build, what="things")


def _tiny_stack(seeds=(0, 1)):
  return stack_lib.create("mlp", list(seeds), num_classes=3, image_shape=(4, 4, 1),
                          width=0.25)


def _same(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in
             zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables)))


def test_a_stack_saved_on_another_process_is_staged_then_committed_by_process_0(
    tmp_path, monkeypatch):
  s = _tiny_stack()
  directory = str(tmp_path / "checkpoints" / "zoo" / "x")
  checkpoint.save_stack(directory, _tiny_stack(seeds=(5, 6)))  # an older stack
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  checkpoint.save_stack(directory, s)
  staged = checkpoint.staged_path(directory)
  assert os.path.exists(staged)
  # Process 1 sees no change until process 0 commits.
  assert checkpoint.latest_step(directory) == 0
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  loaded = checkpoint.load_stack(directory)
  assert not os.path.exists(staged)  # committed, replacing the older stack
  assert _same(loaded, s) and [m["seed"] for m in loaded.meta] == [0, 1]
  assert checkpoint.latest_step(directory) == 0


def test_a_damaged_staged_stack_names_itself_and_the_fix(tmp_path, monkeypatch):
  directory = str(tmp_path / "x")
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  checkpoint.save_stack(directory, _tiny_stack())
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  staged = checkpoint.staged_path(directory)
  with open(staged, "r+b") as f:
    f.truncate(100)
  with pytest.raises(ValueError, match="another process trained.*Delete it and rerun"):
    checkpoint.exists(directory)


def test_removing_a_checkpoint_discards_its_staged_copy(tmp_path, monkeypatch):
  from uap_jax.runtime.workdir import Workdir  # pylint: disable=g-import-not-at-top
  workdir = Workdir(str(tmp_path), writer=True)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  workdir.save_stack("zoo/x", _tiny_stack())
  assert os.path.exists(checkpoint.staged_path(workdir.checkpoint_dir("zoo/x")))
  workdir.remove("checkpoints/zoo/x")
  assert not os.path.exists(checkpoint.staged_path(workdir.checkpoint_dir("zoo/x")))
