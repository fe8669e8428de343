"""Several processes: shares of suspects, gathering, and a 2-process run.

The 2-process test starts this file twice as a script (process 0 and 1) on
loopback with CPU collectives (gloo) and compares what process 0 gathers
with a single-process computation.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from uap_jax.runtime import distributed

REPO = pathlib.Path(__file__).resolve().parents[1]
SKIP_EXIT = 3  # a worker found no usable CPU collectives
NUM_SUSPECTS = 5


@pytest.mark.parametrize("mode", distributed.SHARE_MODES)
@pytest.mark.parametrize("num_items,count", [(0, 1), (1, 3), (5, 2), (7, 3),
                                             (12, 4)])
def test_shares_cover_every_item_once(mode, num_items, count):
  shares = [distributed.share_indices(num_items, p, count, mode)
            for p in range(count)]
  together = np.concatenate(shares)
  assert sorted(together.tolist()) == list(range(num_items))
  sizes = [len(s) for s in shares]
  assert max(sizes) - min(sizes) <= 1  # balanced
  for s in shares:
    assert np.all(np.diff(s) > 0)
  if mode == "contiguous":
    for s in shares:
      assert len(s) == 0 or s[-1] - s[0] == len(s) - 1


def test_my_share_takes_the_items_of_its_indices():
  items = list("abcdefg")
  assert distributed.my_share(items, 1, 3, "strided") == ["b", "e"]
  assert distributed.my_share(items, 0, 3, "contiguous") == ["a", "b", "c"]
  assert distributed.my_share(items, 2, 3, "contiguous") == ["f", "g"]


@pytest.mark.parametrize("kwargs,message", [
    (dict(process_index=2, process_count=2), "process_index=2"),
    (dict(process_index=0, process_count=0), "process_count >= 1"),
    (dict(process_index=0, process_count=1, mode="blocks"), "--share_mode must be contiguous or strided"),
])
def test_share_indices_rejects_bad_input(kwargs, message):
  with pytest.raises(ValueError, match=message):
    distributed.share_indices(4, **kwargs)


def test_gather_in_one_process_puts_rows_in_item_order():
  idx = np.array([2, 0, 1])
  local = {"a": np.array([20.0, 0.0, 10.0]), "b": np.arange(6).reshape(3, 2)}
  out = distributed.gather_to_process0(local, idx, 3)
  np.testing.assert_array_equal(out["a"], [0.0, 10.0, 20.0])
  np.testing.assert_array_equal(out["b"], [[2, 3], [4, 5], [0, 1]])
  with pytest.raises(ValueError, match="exactly once"):
    distributed.gather_to_process0(local, idx, 4)
  with pytest.raises(ValueError, match="leading axis"):
    distributed.gather_to_process0({"a": np.zeros(2)}, idx, 3)


@pytest.mark.parametrize("args,message", [
    (dict(coordinator_address="nohostport"), "HOST:PORT"),
    (dict(num_processes=0), "num_processes must be >= 1"),
    (dict(num_processes=2, process_id=2), "process_id=2"),
    (dict(mode="yes"), "--distributed must be auto, true or false"),
])
def test_initialize_rejects_bad_flags_before_starting(args, message):
  with pytest.raises(ValueError, match=message):
    distributed.initialize(**args)


def test_initialize_after_jax_use_says_to_call_it_first():
  import jax  # pylint: disable=g-import-not-at-top
  jax.devices()  # backends are up: initialize must refuse before connecting
  with pytest.raises(RuntimeError, match="first thing in main"):
    distributed.initialize("127.0.0.1:1", 2, 0, timeout_s=1)


def _write_everything(workdir, stack):
  """Every kind of write a Workdir does; returns the paths it names."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(1, 1))
  fig.add_subplot().plot([0, 1])
  workdir.mark_done("victim", {"seconds": 1.0})
  return [workdir.write_json("a/b.json", {"x": 1}),
          workdir.write_text("t.txt", "text"),
          workdir.write_npz("q.npz", q=np.zeros(3)),
          workdir.write_with("p.json", lambda path: pathlib.Path(path).write_text("{}")),
          workdir.save_stack("victim", stack),
          workdir.save_arrays("uap", {"u": np.ones(3)}, {"n": 1}),
          workdir.save_figure("report/f.png", fig),
          workdir.path("stages", "victim.json")]


def test_workdir_writes_nothing_unless_it_is_the_writer(tmp_path):
  from uap_jax.runtime import stack as stack_lib  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime.workdir import Workdir  # pylint: disable=g-import-not-at-top
  s = stack_lib.create("mlp", [0], num_classes=4, image_shape=(8, 8, 1), width=0.25)
  root = tmp_path / "run"
  reader = Workdir(str(root), writer=False)
  assert not reader.is_writer
  paths = _write_everything(reader, s)
  assert not root.exists()  # not even the directory
  writer = Workdir(str(root), writer=True)
  assert _write_everything(writer, s) == paths
  assert all(os.path.exists(p) for p in paths)
  # Removals go through the same gate.
  for name in ("a/b.json", "checkpoints/victim", "report"):
    reader.remove(name)
  reader.clear_stage("victim")
  assert all(os.path.exists(p) for p in paths)
  writer.clear_stage("victim")
  writer.remove("checkpoints/victim")
  assert not writer.stage_done("victim") and not os.path.exists(paths[4])


CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "SLURM_NTASKS",
                "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE",
                "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def test_single_process_without_cluster_environment(monkeypatch):
  for var in CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)
  assert distributed.detected_cluster() is None
  assert distributed.initialize_from("", 0, -1, "auto") is False
  assert distributed.initialize(mode="false") is False
  monkeypatch.setenv("SLURM_JOB_ID", "7")
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert distributed.detected_cluster() is None  # one task: single process
  monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
  assert distributed.detected_cluster() == "slurm"
  monkeypatch.setenv("SLURM_NTASKS", "8")
  monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # srun -n1 in a big job
  assert distributed.detected_cluster() is None


# --------------------------------------------------------------------------
# Two processes on loopback.


def _tiny_stack_and_images():
  from uap_jax.runtime import stack as stack_lib  # pylint: disable=g-import-not-at-top
  s = stack_lib.create("mlp", list(range(NUM_SUSPECTS)), num_classes=4,
                       image_shape=(8, 8, 1), width=0.25)
  x = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
  return s, x


def _worker(process_id: int, port: int, out_dir: str) -> None:
  """One of the two processes: predict its share, gather on process 0."""
  import jax  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime import stack as stack_lib  # pylint: disable=g-import-not-at-top
  if not hasattr(jax.config, "jax_cpu_collectives_implementation"):
    print("this jax build has no jax_cpu_collectives_implementation option")
    sys.exit(SKIP_EXIT)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    started = distributed.initialize(f"127.0.0.1:{port}", 2, process_id,
                                     timeout_s=60)
  except (RuntimeError, NotImplementedError) as e:  # no gloo in this jaxlib
    print(f"CPU collectives unavailable: {e}")
    sys.exit(SKIP_EXIT)
  assert started and jax.process_count() == 2
  s, x = _tiny_stack_and_images()
  results = {}
  # 'shard' runs on a mesh of this process's devices only.
  for mode, strategy in zip(distributed.SHARE_MODES, ("shard", "loop")):
    results[mode] = distributed.map_suspects(
        lambda sub, st=strategy: stack_lib.predict(sub, x, strategy=st,
                                                   output="probs"),
        s, mode=mode)
  everywhere = distributed.gather_to_process0(
      np.array([10.0 * process_id]), [process_id], 2, everywhere=True)
  share = distributed.share_indices(NUM_SUSPECTS, mode="contiguous").tolist()
  loaded = _workdir_round_trip(process_id, s, os.path.join(out_dir, "run"))
  refusals = _refusals(os.path.join(out_dir, "busy"))
  with open(os.path.join(out_dir, f"share{process_id}.json"), "w") as f:
    json.dump({"share": share, "everywhere": everywhere.tolist(),
               "got_result": results["contiguous"] is not None, **loaded,
               "refusals": refusals}, f)
  if distributed.is_main_process():
    np.savez(os.path.join(out_dir, "gathered.npz"), **results)
  distributed.wait_for_all("done")


def _workdir_round_trip(process_id: int, s, root: str) -> dict:
  """Both processes write through a default Workdir; both read what 0 saved."""
  import jax  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime import checkpoint  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime.workdir import Workdir  # pylint: disable=g-import-not-at-top
  workdir = Workdir(root)
  workdir.write_json(f"from{process_id}.json", {"process": process_id})
  # Each process saves its own version; only process 0's may land.
  mine = s.select([process_id])
  workdir.save_stack("victim", mine)
  workdir.save_arrays("uap", {"u": np.full(3, float(process_id))})
  distributed.wait_for_all("saved")
  victim = checkpoint.load_stack(workdir.checkpoint_dir("victim"))
  uap = checkpoint.load_arrays(workdir.checkpoint_dir("uap"))[0]["u"]
  first = s.select([0])
  diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
      jax.tree.leaves(victim.params), jax.tree.leaves(first.params)))
  distributed.wait_for_all("loaded")
  return {"is_writer": workdir.is_writer, "victim_seed": victim.meta[0]["seed"],
          "victim_diff": diff, "uap": uap.tolist(),
          "steps": checkpoint.latest_step(workdir.checkpoint_dir("victim"))}


def _refusals(root: str) -> dict:
  """What each process hears from the pipeline's two lock steps on ``root``,
  whose lock the test (another process) holds: only process 0 can see it."""
  from uap_jax.runtime.workdir import Workdir, WorkdirInUse  # pylint: disable=g-import-not-at-top
  workdir = Workdir(root)
  heard = {}
  try:
    workdir.check_free()
    heard["check_free"] = None
  except WorkdirInUse as e:
    heard["check_free"] = str(e)
  try:
    with workdir.lock():
      heard["lock"] = None
  except WorkdirInUse as e:
    heard["lock"] = str(e)
  return heard


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("multihost")
  env = {k: v for k, v in os.environ.items()
         if k not in CLUSTER_VARS and k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  port = _free_port()
  from uap_jax.runtime.workdir import Workdir  # pylint: disable=g-import-not-at-top
  # A run of this process holds "busy" while the two processes try it.
  with Workdir(str(out_dir / "busy"), writer=True).lock():
    procs = [subprocess.Popen(
        [sys.executable, __file__, str(pid), str(port), str(out_dir)], env=env,
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in (0, 1)]
    logs = []
    try:
      for p in procs:
        logs.append(p.communicate(timeout=120)[0])
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      pytest.fail("the 2-process run did not finish within 120 s")
  codes = [p.returncode for p in procs]
  if SKIP_EXIT in codes:
    pytest.skip("CPU collectives unavailable in this jax build: "
                + " | ".join(l.strip().splitlines()[-1] for l in logs if l.strip()))
  assert codes == [0, 0], "\n----\n".join(l[-2000:] for l in logs)
  return out_dir


def test_two_processes_split_the_suspects(two_process_run):
  shares = [json.loads((two_process_run / f"share{p}.json").read_text())
            for p in (0, 1)]
  assert shares[0]["share"] == [0, 1, 2] and shares[1]["share"] == [3, 4]
  assert shares[0]["got_result"] and not shares[1]["got_result"]
  for s in shares:  # everywhere=True: both processes hold the gathered rows
    assert s["everywhere"] == [0.0, 10.0]


def test_only_process_0_writes_and_both_read_its_checkpoints(two_process_run):
  shares = [json.loads((two_process_run / f"share{p}.json").read_text())
            for p in (0, 1)]
  assert [s["is_writer"] for s in shares] == [True, False]
  run = two_process_run / "run"
  assert (run / "from0.json").exists() and not (run / "from1.json").exists()
  for s in shares:  # both loaded process 0's models and arrays, one step
    assert s["victim_seed"] == 0 and s["victim_diff"] == 0.0
    assert s["uap"] == [0.0, 0.0, 0.0]
    assert s["steps"] == 0


def test_a_lock_refusal_stops_every_process_with_the_same_message(two_process_run):
  # Only process 0 holds (and so sees) the lock; without the broadcast of its
  # refusal, process 1 would go on alone into the run (or hang in its first
  # collective).
  heard = [json.loads((two_process_run / f"share{p}.json").read_text())["refusals"]
           for p in (0, 1)]
  expected = f"is in use by pid {os.getpid()} on host "
  for step in ("check_free", "lock"):
    assert heard[0][step] is not None and expected in heard[0][step], heard
    assert heard[1][step] == heard[0][step], step


@pytest.mark.parametrize("mode", distributed.SHARE_MODES)
def test_gathered_equals_single_process(two_process_run, mode):
  from uap_jax.runtime import stack as stack_lib  # pylint: disable=g-import-not-at-top
  s, x = _tiny_stack_and_images()
  expected = stack_lib.predict(s, x, strategy="loop", output="probs")
  got = np.load(two_process_run / "gathered.npz")[mode]
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=1e-6)


if __name__ == "__main__":
  _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
