"""Two processes on loopback divide the victim, zoo and reference-bank stages.

The real command line runs as two processes (gloo CPU collectives) and as
one; the zoo and bank they save, and the verdicts, must be the same. Each
test is one run (xdist may send tests of a module to different workers, and
each would repeat a shared fixture).
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.test_multihost import CLUSTER_VARS, _free_port

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.flags"
TINY = [line.strip() for line in open(REPO / "experiments" / "tiny.flags")
        if line.startswith("--")]
# A few stacks of different costs, so that both processes get work.
FLAGS = [f"--flagfile={QUICKSTART}", *TINY, "--zoo_count=0",
         "--zoo_counts=extract_soft:1,finetune_all:1,prune:1,adv_train:1,"
         "independent_seed:2,independent_data:2", "--reference_per_recipe=1"]


def _env():
  env = {k: v for k, v in os.environ.items()
         if k not in CLUSTER_VARS and k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  return env


def _start(workdirs, extra=()):
  """Starts one process per work directory (several: one run of that many)."""
  n, port = len(workdirs), _free_port()
  cluster = lambda p: ([f"--coordinator_address=127.0.0.1:{port}",
                        f"--num_processes={n}", f"--process_id={p}"] if n > 1 else [])
  return [subprocess.Popen(
      [sys.executable, "-m", "uap_jax.main", *FLAGS, f"--workdir={w}", *cluster(p),
       *extra], env=_env(), cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for p, w in enumerate(workdirs)]


def _finish(procs, timeout=240):
  try:
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail(f"the run did not finish within {timeout} s")
  if len(procs) > 1 and any("collectives" in log and p.returncode
                            for p, log in zip(procs, logs)):
    pytest.skip("CPU collectives unavailable in this jax build")
  return [p.returncode for p in procs], logs


def _stack_diff(a_dir, b_dir):
  from uap_jax.runtime import checkpoint  # pylint: disable=g-import-not-at-top
  a, b = checkpoint.load_stack(a_dir), checkpoint.load_stack(b_dir)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables)))


def _without_timings(obj):
  if isinstance(obj, dict):
    return {k: _without_timings(v) for k, v in obj.items()
            if "second" not in k and k != "created"}
  if isinstance(obj, list):
    return [_without_timings(v) for v in obj]
  return obj


def test_two_processes_build_the_same_zoo_and_a_rerun_builds_only_what_is_missing(
    tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  # Every stage: the verdicts (leave-kind-out folds divided too) must agree.
  procs = _start([one]) + _start([two, two])
  codes, logs = _finish(procs)
  assert codes == [0, 0, 0], "\n----\n".join(log[-3000:] for log in logs)

  # The victim is trained once, by process 0.
  assert "process 0 builds 1: victim" in logs[1]
  assert "process 1 builds 0: none" in logs[2]
  zoo_one, zoo_two = (json.loads((d / "zoo.json").read_text()) for d in (one, two))
  owners = [s["trained_by_process"] for s in zoo_two["stacks"]]
  assert sorted(set(owners)) == [0, 1], owners  # both processes trained stacks
  assert [m["name"] for m in zoo_one["models"]] == [m["name"] for m in zoo_two["models"]]
  for a, b in zip(zoo_one["models"], zoo_two["models"]):
    assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-6)
  for s in zoo_one["stacks"]:
    diff = _stack_diff(one / "checkpoints" / s["checkpoint"],
                       two / "checkpoints" / s["checkpoint"])
    assert diff <= 1e-5, (s["key"], diff)
  ref_one, ref_two = (json.loads((d / "reference.json").read_text()) for d in (one, two))
  assert sorted({s["trained_by_process"] for s in ref_two["stacks"]}) == [0, 1]
  for a, b in zip(ref_one["stacks"], ref_two["stacks"]):
    assert _stack_diff(a["checkpoint"], b["checkpoint"]) <= 1e-5, a["name"]
  # Only process 0 writes the run's JSON; nothing is left staged.
  assert not list(two.rglob("*.staged.npz"))
  assert _without_timings(json.loads((one / "verify.json").read_text())) == \
      _without_timings(json.loads((two / "verify.json").read_text()))

  # As if the process training it had been killed: that stack is gone.
  lost = zoo_two["stacks"][owners.index(1)]
  shutil.rmtree(two / "checkpoints" / lost["checkpoint"])
  codes, logs = _finish(_start([two, two], ["--stages=victim,zoo,reference"]))
  assert codes == [0, 0], "\n----\n".join(log[-3000:] for log in logs)
  summary = json.loads((two / "stages" / "zoo.json").read_text())["summary"]
  assert summary["stacks_trained"] == [lost["key"]]
  assert json.loads((two / "stages" / "reference.json").read_text())[
      "summary"]["stacks_trained"] == []
  assert _stack_diff(one / "checkpoints" / lost["checkpoint"],
                     two / "checkpoints" / lost["checkpoint"]) <= 1e-5


def test_processes_that_do_not_share_the_workdir_are_refused_before_any_work(tmp_path):
  codes, logs = _finish(_start([tmp_path / "a", tmp_path / "b"], ["--stages=victim"]),
                        timeout=120)
  assert codes == [1, 1], logs
  for log in logs:
    assert "is not one directory shared by all 2 processes" in log, log[-2000:]
    assert "process 1 (host" in log
    assert "Stage victim: starting" not in log
