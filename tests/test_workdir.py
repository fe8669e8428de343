"""The work directory's lock, the completeness of artefacts, and the messages
for damaged files (no training: tiny arrays, milliseconds to a second)."""

import json
import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest

from uap_jax import config as config_lib
from uap_jax.runtime import artifacts as artifacts_lib
from uap_jax.runtime import checkpoint
from uap_jax.runtime import workdir as workdir_lib
from uap_jax.runtime.workdir import Workdir, WorkdirInUse

# Holds an flock on argv[1] with a holder record, says so, then sleeps.
_HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"host": "elsewhere", "pid": os.getpid(),
                         "started": "2024-01-01T00:00:00"}).encode())
print("held", flush=True)
time.sleep(60)
"""


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_workdir_is_created_by_the_first_write_not_by_opening(tmp_path):
  root = tmp_path / "run"
  wd = Workdir(str(root), writer=True)
  assert not root.exists()
  wd.write_json("a.json", {"x": 1})
  assert wd.read_json("a.json") == {"x": 1}


def test_lock_is_held_inside_the_block_and_removed_after(tmp_path):
  wd = Workdir(str(tmp_path / "run"), writer=True)
  with wd.lock():
    with open(wd.path("lock")) as f:
      holder = json.load(f)
    assert holder["pid"] == os.getpid() and holder["host"] and holder["started"]
    with pytest.raises(WorkdirInUse, match=f"in use by pid {os.getpid()} on host"):
      with Workdir(wd.root, writer=True).lock():
        pass
    with pytest.raises(WorkdirInUse, match="wait for it"):
      wd.check_free()
  assert not os.path.exists(wd.path("lock"))
  wd.check_free()
  with wd.lock():  # free again
    pass


def test_lock_is_released_when_the_block_raises(tmp_path):
  wd = Workdir(str(tmp_path), writer=True)
  with pytest.raises(RuntimeError):
    with wd.lock():
      raise RuntimeError("boom")
  assert not os.path.exists(wd.path("lock"))
  with wd.lock():
    pass


def test_lock_held_by_another_process_is_refused_then_taken_over_once_it_dies(tmp_path):
  wd = Workdir(str(tmp_path), writer=True)
  holder = subprocess.Popen([sys.executable, "-c", _HOLDER, wd.path("lock")],
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirInUse) as error:
      with wd.lock():
        pass
    message = str(error.value)
    assert (f"{wd.root} is in use by pid {holder.pid} on host elsewhere since "
            "2024-01-01T00:00:00; wait for it") in message
    assert f"delete {wd.path('lock')}" in message
  finally:
    holder.kill()
    holder.wait()
  # kill -9 left the file, but the kernel dropped its lock: taken over.
  assert os.path.exists(wd.path("lock"))
  with mock.patch.object(workdir_lib.logging, "warning") as warning:
    with wd.lock():
      with open(wd.path("lock")) as f:
        assert json.load(f)["pid"] == os.getpid()
  assert warning.call_count == 1 and holder.pid in warning.call_args[0]


def test_stale_lock_file_of_a_dead_pid_is_taken_over_with_a_warning(tmp_path):
  wd = Workdir(str(tmp_path), writer=True)
  dead = _dead_pid()
  with open(wd.path("lock"), "w") as f:
    json.dump({"host": "here", "pid": dead, "started": "then"}, f)
  with mock.patch.object(workdir_lib.logging, "warning") as warning:
    with wd.lock():
      pass
  assert "taking over" in warning.call_args[0][0] and dead in warning.call_args[0]
  assert not os.path.exists(wd.path("lock"))


def test_only_the_writer_locks(tmp_path):
  reader = Workdir(str(tmp_path / "run"), writer=False)
  with reader.lock():
    assert not os.path.exists(reader.path("lock"))


@pytest.mark.parametrize("name, stage", [
    ("split.json", "encoder"), ("zoo.json", "zoo"), ("fingerprints.json", "fingerprint"),
    (os.path.join("stages", "uap.json"), "uap"),
])
def test_truncated_json_names_the_stage_that_rewrites_it(tmp_path, name, stage):
  wd = Workdir(str(tmp_path), writer=True)
  wd.write_text(name, '{"train": [1, 2')
  with pytest.raises(ValueError) as error:
    wd.read_json(name)
  message = str(error.value)
  assert "is not valid JSON" in message
  assert message.endswith(f"The {stage} stage writes it: delete it and rerun with "
                          f"--stages={stage} and the stages after it (or --overwrite).")


def test_damaged_checkpoint_message_ends_with_the_fix():
  cause = ValueError("Error opening \"zarr\" driver:\nline two of TensorStore\n" + "x" * 900)
  message = checkpoint._corrupt_message("/w/checkpoints/uap", cause)  # pylint: disable=protected-access
  assert "\n" not in message and "line two" not in message
  assert "(ValueError: Error opening \"zarr\" driver:)" in message
  assert message.endswith("(or rerun with --overwrite).")
  assert len(message) < 400


# --------------------------------------------------------------------------
# Artifacts.complete: cheap checks that a finished stage's files are whole.


def _save(wd, name):
  wd.save_arrays(name, {"a": np.arange(3, dtype=np.float32)}, {"models": [{"name": name}]})


@pytest.fixture
def victim_workdir(tmp_path):
  wd = Workdir(str(tmp_path), writer=True)
  _save(wd, "victim")
  wd.write_json("victim.json", {"ok": True})
  return wd, artifacts_lib.Artifacts(wd)


def test_complete_victim_and_each_way_it_breaks(victim_workdir):
  wd, art = victim_workdir
  assert art.complete("victim") is None
  with open(wd.path("victim.json"), "w") as f:
    f.write('{"ok": tr')
  assert art.complete("victim") == f"{wd.path('victim.json')} is not valid JSON"
  os.remove(wd.path("victim.json"))
  assert art.complete("victim") == f"{wd.path('victim.json')} is missing"


def test_complete_refuses_a_step_holding_only_its_commit_marker(victim_workdir):
  wd, art = victim_workdir
  step = os.path.join(wd.checkpoint_dir("victim"), "0")
  for item in os.listdir(step):
    if item != "commit_success.txt":
      path = os.path.join(step, item)
      (os.remove if os.path.isfile(path) else __import__("shutil").rmtree)(path)
  problem = art.complete("victim")
  assert problem is not None and wd.checkpoint_dir("victim") in problem


def test_complete_refuses_unreadable_metadata(victim_workdir):
  wd, art = victim_workdir
  meta = os.path.join(wd.checkpoint_dir("victim"), "0", "meta", "metadata")
  with open(meta, "w") as f:
    f.write("{not json")
  assert "unreadable metadata" in art.complete("victim")


def test_complete_zoo_checks_every_stack_zoo_json_names(tmp_path):
  wd = Workdir(str(tmp_path), writer=True)
  art = artifacts_lib.Artifacts(wd)
  _save(wd, "zoo/a__mlp")
  stacks = [{"checkpoint": "zoo/a__mlp"}, {"checkpoint": "zoo/b__mlp"}]
  wd.write_json("zoo.json", {"stacks": stacks[:1]})
  assert art.complete("zoo") is None
  wd.write_json("zoo.json", {"stacks": stacks})
  assert art.complete("zoo") == (f"{wd.checkpoint_dir('zoo/b__mlp')} holds no "
                                 "complete checkpoint")


def test_complete_export_queries_opens_the_npz(tmp_path):
  wd = Workdir(str(tmp_path), writer=True)
  art = artifacts_lib.Artifacts(wd)
  art.save_queries(np.zeros((2, 4, 4, 1), np.uint8), {"q": 2})
  assert art.complete("export_queries") is None
  with open(art.queries_path, "r+b") as f:
    f.truncate(10)
  assert art.complete("export_queries") == f"{art.queries_path} is not a readable .npz"


# --------------------------------------------------------------------------
# Flags refused by config.py.


@pytest.mark.parametrize("flag, message", [
    ("--uap_xi=inf", "--uap_xi=inf: inf is not a finite number; give a finite value (default 0.1)."),
    ("--lr=nan", "--lr=nan: nan is not a finite number"),
    ("--finetune_lrs=0.01,inf", "--finetune_lrs=0.01,inf: inf is not a finite number"),
    ("--workdir=", "--workdir is empty: name the run's directory"),
    ("--workdir= ", "--workdir is empty"),
])
def test_non_finite_and_empty_flags_are_refused(flag, message):
  with pytest.raises(ValueError) as error:
    config_lib.parse([flag]).validate()
  assert message in str(error.value)


def test_empty_stages_flag_is_refused():
  with pytest.raises(ValueError, match="--stages is empty: name the stages to run"):
    config_lib.parse(["--stages="])
