"""Several hosts: one JAX process per host (or per GPU), work split among them.

Every process runs the same program (``python -m uap_jax.main
--flagfile=...``, started by the scripts in ``launch/``), calls
:func:`initialize` first, and shares a work directory that every host mounts
at the same path. Then

1. the stages that build many independent artefacts (the zoo's stacks, the
   reference bank's) divide them: each process trains its share and saves
   it into the work directory itself, all wait at a barrier
   (:func:`wait_for_all`), and each reads the others' checkpoints
   (:mod:`uap_jax.runtime.divide`); the victim is built by process 0 and
   read by all;
2. the stages that compute on suspects take a share each
   (:func:`share_indices` / :func:`my_share`) on their LOCAL devices (any
   model-axis strategy, including ``shard`` over a local mesh, see
   :mod:`uap_jax.runtime.sharding`) and send the results to process 0
   (:func:`gather_to_process0`);
3. decisions are process 0's and reach the others by broadcast
   (:func:`broadcast_from_main`): what a stage must build, whether a stage
   is done, a refusal to go on. Only process 0 writes the run's JSON,
   reports and shared arrays (:class:`uap_jax.runtime.workdir.Workdir`).

No array spans hosts, so nothing in the library needs global ``jax.Array`` s.

Why results and decisions travel by JAX collectives
(``multihost_utils.process_allgather``) and not by files: collectives need no
polling or clean-up protocol, and they fail loudly (the distributed runtime's
heartbeat) when a peer dies instead of waiting for a file that never comes.
Checkpoints are the exception, since they are what a rerun resumes from. The
cost of an all-gather: every process briefly holds the whole gathered result,
which for fingerprints (suspects x views x 2KC float32) is megabytes. Arrays
pass through JAX, so float64 becomes float32 unless ``jax_enable_x64`` is set.

On CPU the collectives use gloo over TCP, the default
``jax_cpu_collectives_implementation`` of jax 0.10.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Callable, NoReturn, Sequence

import jax
import numpy as np
from absl import logging

from uap_jax import config
from uap_jax.config import SHARE_MODES

PyTree = Any


# --------------------------------------------------------------------------
# Start-up.


def detected_cluster() -> str | None:
  """Names the multi-process launcher found in the environment, if any.

  Looks at environment variables only (no network queries): an explicit
  ``JAX_COORDINATOR_ADDRESS``; SLURM with more than one task in the step
  (``SLURM_STEP_NUM_TASKS`` / ``SLURM_NTASKS``); Open MPI with more than one
  rank (``OMPI_COMM_WORLD_SIZE``); a multi-worker Cloud TPU (``TPU_WORKER_HOSTNAMES``
  listing several hosts, or ``MEGASCALE_COORDINATOR_ADDRESS``).

  Returns:
    ``"env"``, ``"slurm"``, ``"openmpi"``, ``"tpu"`` or ``None``.
  """
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "env"
  count = lambda name: int(env[name]) if env.get(name, "").isdigit() else 1
  # The step's task count (srun) wins over the allocation's.
  slurm_tasks = count("SLURM_STEP_NUM_TASKS" if env.get("SLURM_STEP_NUM_TASKS")
                      else "SLURM_NTASKS")
  if env.get("SLURM_JOB_ID") and slurm_tasks > 1:
    return "slurm"
  if count("OMPI_COMM_WORLD_SIZE") > 1:
    return "openmpi"
  if "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get(
      "MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu"
  return None


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None, *, mode: str = "auto",
               local_device_ids: Sequence[int] | None = None,
               timeout_s: int = 300) -> bool:
  """Starts ``jax.distributed`` from explicit values, else the environment.

  Must run before any other JAX call of the process (JAX fixes its devices
  on first use).

  Args:
    coordinator_address: ``host:port`` of process 0 (the same on every
      process). ``None``: from ``JAX_COORDINATOR_ADDRESS`` or JAX's
      auto-detection (Cloud TPU metadata, SLURM, Open MPI).
    num_processes: number of processes; ``None``: detected.
    process_id: this process, ``0 .. num_processes - 1``; ``None``: detected.
    mode: ``auto``: start only when a value above is given or
      :func:`detected_cluster` finds a multi-process launcher, else stay a
      single process; ``true``: always start (JAX's auto-detection fills in
      what is missing, and fails if it cannot); ``false``: never start.
    local_device_ids: restricts the devices this process uses (e.g. one GPU
      per process); ``None``: JAX's default (SLURM/Open MPI GPU jobs get one
      GPU per process).
    timeout_s: seconds to wait for the other processes.

  Returns:
    True if this process is part of a multi-process run.

  Raises:
    ValueError: on a malformed address, a non-positive process count, a
      process id out of range, or an unknown mode, before anything starts.
  """
  check_mode(mode)
  if coordinator_address is not None and not re.fullmatch(
      r"\[?[\w.:-]+\]?:\d{1,5}", coordinator_address):
    raise ValueError(
        f"--coordinator_address={coordinator_address!r} must be HOST:PORT of "
        "process 0, e.g. 10.0.0.2:8476.")
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"--num_processes must be >= 1, got {num_processes}.")
  if process_id is not None:
    if process_id < 0 or (num_processes is not None and process_id >= num_processes):
      raise ValueError(
          f"--process_id={process_id} must be in [0, --num_processes"
          f"={num_processes}).")
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  explicit = any(v is not None for v in (coordinator_address, num_processes,
                                         process_id))
  if mode == "false" or (mode == "auto" and not explicit
                         and detected_cluster() is None):
    return False
  if num_processes == 1 and coordinator_address is None:
    return False
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id, local_device_ids=local_device_ids,
        initialization_timeout=timeout_s)
  except RuntimeError as e:
    if "before any JAX" in str(e):
      raise RuntimeError(
          "uap_jax.runtime.distributed.initialize ran after JAX was already used (e.g. "
          "jax.devices() or engine.resolve('auto')); call it first thing in "
          "main, before config validation and before building any model.") from e
    raise
  return jax.process_count() > 1


def check_mode(mode: str) -> None:
  """Raises ValueError unless ``mode`` is a ``--distributed`` choice.

  Args:
    mode: one of :data:`uap_jax.config.DISTRIBUTED_MODES`.
  """
  if mode not in config.DISTRIBUTED_MODES:
    raise config.choice_error("distributed", mode, config.DISTRIBUTED_MODES)


def check_share_mode(mode: str) -> None:
  """Raises ValueError unless ``mode`` is a ``--share_mode`` choice.

  Args:
    mode: one of :data:`uap_jax.config.SHARE_MODES`.
  """
  if mode not in SHARE_MODES:
    raise config.choice_error("share_mode", mode, SHARE_MODES)


def initialize_from(coordinator: str, num_processes: int, process_id: int,
                    mode: str = "auto") -> bool:
  """:func:`initialize` from flag values (the ``--coordinator_address``,
  ``--num_processes``, ``--process_id`` and ``--distributed`` flags).

  Args:
    coordinator: ``host:port``, or ``""`` to detect.
    num_processes: process count, or ``0`` to detect.
    process_id: this process, or ``-1`` to detect.
    mode: ``auto`` | ``true`` | ``false`` (see :func:`initialize`).

  Returns:
    True if this process is part of a multi-process run.
  """
  return initialize(coordinator or None,
                    num_processes if num_processes > 0 else None,
                    process_id if process_id >= 0 else None, mode=mode)


def is_main_process() -> bool:
  """True on process 0, the one that writes outputs."""
  return jax.process_index() == 0


def process_count() -> int:
  """How many processes run this program (1 without a cluster)."""
  return jax.process_count()


def in_multi_process_run() -> bool:
  """True once this process has joined a multi-process run (no JAX use)."""
  return jax.distributed.is_initialized()


def exit_now(code: int) -> NoReturn:
  """Ends this process at once, without JAX's shutdown barrier.

  For a process that fails alone: at a normal exit JAX would wait at its
  shutdown barrier for the others, which wait at theirs (a stage's
  barrier) for it, until both time out. Leaving at once lets the
  distributed runtime see the process gone and stop the others.

  Args:
    code: the exit status.
  """
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


# How long a process waits at :func:`wait_for_all` for the others: long
# enough for the slowest process's share of a stage (a peer that dies is
# reported sooner, by the distributed runtime's heartbeat).
WAIT_TIMEOUT_S = 7 * 24 * 3600

_barrier_count = 0


def wait_for_all(name: str, timeout_s: int = WAIT_TIMEOUT_S) -> None:
  """Barrier: every process waits here until all reach it.

  Every process must call it the same number of times in the same order
  (a running count makes each barrier's name unique, as the distributed
  runtime requires). In a single process it returns at once.

  Args:
    name: what the processes wait for (in logs and errors).
    timeout_s: seconds to wait before failing.

  Raises:
    RuntimeError: a peer did not arrive within ``timeout_s`` (or died).
  """
  global _barrier_count
  if jax.process_count() == 1:
    return
  from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top
  _barrier_count += 1
  # With the explicit process set orbax uses the distributed runtime's
  # barrier, which takes a timeout (the device collective it uses
  # otherwise waits for ever).
  try:
    multihost.sync_global_processes(
        f"uap_jax_{_barrier_count}_{name}", timeout=int(timeout_s),
        processes=set(range(jax.process_count())))
  except jax.errors.JaxRuntimeError as e:
    raise RuntimeError(
        f"Process {jax.process_index()} waited for the others ({name}) in vain: "
        f"{str(e).splitlines()[0]} A process stopped (its log says why). What "
        "the processes saved is kept: rerun every process with the same flags, "
        "and each stage builds only what is missing.") from e


def _encoded(text: str, size: int) -> np.ndarray:
  # Zero-padded to a common size (collectives need equal shapes, and not
  # empty ones); the padding is stripped again by _decoded.
  raw = np.frombuffer(text.encode(), np.uint8)
  return np.concatenate([raw, np.zeros(size - len(raw), np.uint8)])


def _decoded(buffer: np.ndarray) -> str:
  return bytes(np.asarray(buffer, np.uint8)).rstrip(b"\0").decode()


def broadcast_from_main(text: str) -> str:
  """Process 0's ``text``, the same on every process.

  For a decision only process 0 takes (what a stage must build, who holds
  the lock): every process calls this at the same point (a collective) and
  all get process 0's value.

  Args:
    text: process 0's value (ignored elsewhere), any length.

  Returns:
    Process 0's ``text``; in a single process ``text`` itself.
  """
  if jax.process_count() == 1:
    return text
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  size = len(text.encode()) if is_main_process() else 0
  size = int(np.asarray(multihost_utils.broadcast_one_to_all(np.int32(size))))
  mine = text if is_main_process() else ""
  return _decoded(multihost_utils.broadcast_one_to_all(_encoded(mine, max(size, 1))))


def gather_texts(text: str) -> list[str]:
  """Every process's ``text``, in process order, on every process.

  Args:
    text: this process's value, any length.

  Returns:
    One string per process (a collective: every process must call it).
  """
  if jax.process_count() == 1:
    return [text]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  sizes = np.asarray(multihost_utils.process_allgather(
      np.array([len(text.encode())], np.int32))).reshape(-1)
  got = np.asarray(multihost_utils.process_allgather(_encoded(text, max(int(sizes.max()), 1))))
  return [_decoded(row) for row in got.reshape(len(sizes), -1)]


def main_process_refusal(message: str | None) -> str | None:
  """Process 0's refusal to go on, or None, the same on every process.

  For a decision only process 0 can take (the work directory's lock, which
  only it holds): it passes its refusal's message, the others pass None, and
  every process gets process 0's message back, so all stop with it instead
  of the others going on alone or waiting for a peer that has left. Every
  process must call this at the same point (it is a collective); in a
  single process it returns ``message``.

  Args:
    message: process 0's reason to stop (ignored on the other processes);
      None or empty to go on.

  Returns:
    Process 0's message, or None.
  """
  return broadcast_from_main(message or "") or None


# --------------------------------------------------------------------------
# Shares of suspects.


def share_indices(num_items: int, process_index: int | None = None,
                  process_count: int | None = None,
                  mode: str = "contiguous") -> np.ndarray:
  """Indices of the items that one process handles.

  Args:
    num_items: items to divide (e.g. suspects of a stack).
    process_index: this process; default ``jax.process_index()``.
    process_count: all processes; default ``jax.process_count()``.
    mode: ``contiguous``: process p takes one block, the first
      ``num_items % process_count`` blocks one item longer (like
      ``np.array_split``), so a share of a stack is a slice of it;
      ``strided``: process p takes items ``p, p + P, p + 2P, ...``, which
      spreads costs evenly when items are sorted by cost (e.g. a zoo listed
      architecture by architecture).

  Returns:
    Sorted int64 indices; every item belongs to exactly one process. Empty
    when there are more processes than items.
  """
  check_share_mode(mode)
  p = jax.process_index() if process_index is None else int(process_index)
  n = jax.process_count() if process_count is None else int(process_count)
  if n < 1 or not 0 <= p < n:
    raise ValueError(
        f"process_index={p} must be in [0, process_count={n}) with "
        "process_count >= 1.")
  if num_items < 0:
    raise ValueError(f"num_items must be >= 0, got {num_items}.")
  if mode == "strided":
    return np.arange(p, num_items, n, dtype=np.int64)
  base, extra = divmod(num_items, n)
  start = p * base + min(p, extra)
  return np.arange(start, start + base + (p < extra), dtype=np.int64)


def my_share(items: Sequence[Any], process_index: int | None = None,
             process_count: int | None = None,
             mode: str = "contiguous") -> list[Any]:
  """The items this process handles (see :func:`share_indices`).

  Args:
    items: everything to divide, in the same order on every process.
    process_index: default ``jax.process_index()``.
    process_count: default ``jax.process_count()``.
    mode: ``contiguous`` or ``strided``.

  Returns:
    The list of this process's items.
  """
  return [items[i] for i in share_indices(len(items), process_index,
                                          process_count, mode)]


# --------------------------------------------------------------------------
# Gathering.


def gather_to_process0(local: PyTree, indices: Sequence[int] | np.ndarray,
                       num_items: int, *, everywhere: bool = False
                       ) -> PyTree | None:
  """Puts every process's results together, in item order, on process 0.

  Args:
    local: pytree of arrays whose leading axis is this process's items, in
      the order of ``indices`` (may have length 0; the trailing shape and
      dtype must be the same on every process).
    indices: the global index of each local row (from
      :func:`share_indices`).
    num_items: total number of items over all processes.
    everywhere: return the result on every process, not only on process 0.

  Returns:
    On process 0 (or everywhere): the pytree with leading axis
    ``num_items``, row i being item i. Elsewhere: ``None``. Every process
    must call this (it is a collective).

  Raises:
    ValueError: if the processes' indices do not cover each item exactly
      once, or a leaf's leading axis does not match ``indices``.
  """
  indices = np.asarray(indices, np.int64).reshape(-1)
  leaves, treedef = jax.tree.flatten(local)
  leaves = [np.asarray(x) for x in leaves]
  for x in leaves:
    if x.ndim == 0 or x.shape[0] != len(indices):
      raise ValueError(
          f"gather_to_process0: a result of shape {x.shape} does not have a "
          f"leading axis of this process's {len(indices)} items.")
  if jax.process_count() == 1:
    all_indices, all_leaves = indices, leaves
  else:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    # process_allgather needs equal shapes: pad every share to the largest
    # and mark padding rows with index -1.
    counts = np.asarray(multihost_utils.process_allgather(
        np.array([len(indices)], np.int32))).reshape(-1)
    rows = int(counts.max())
    pad = rows - len(indices)
    padded_index = np.concatenate([indices, np.full(pad, -1)]).astype(np.int32)
    padded = [np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
              for x in leaves]
    gathered = multihost_utils.process_allgather((padded_index, padded))
    if not (everywhere or is_main_process()):
      return None
    got_index = np.asarray(gathered[0]).reshape(-1)
    keep = got_index >= 0
    all_indices = got_index[keep].astype(np.int64)
    all_leaves = [np.asarray(x).reshape((-1,) + x.shape[2:])[keep]
                  for x in gathered[1]]
  if not (everywhere or is_main_process()):
    return None
  if sorted(all_indices.tolist()) != list(range(num_items)):
    raise ValueError(
        f"gather_to_process0: the processes' indices cover {len(all_indices)} "
        f"rows but must cover items 0..{num_items - 1} exactly once; give "
        "each process its share_indices(...) with the same num_items and mode.")
  order = np.argsort(all_indices)
  return jax.tree.unflatten(treedef, [x[order] for x in all_leaves])


def map_suspects(fn: Callable[[Any], PyTree], suspects: Any, *,
                 mode: str = "contiguous", everywhere: bool = False
                 ) -> PyTree | None:
  """Runs ``fn`` on this process's share of a stack and gathers on process 0.

  Args:
    fn: ``fn(sub_stack) -> pytree`` of arrays with a leading model axis (e.g.
      ``lambda s: fingerprint.fingerprints(s, points, uaps)``).
    suspects: a :class:`uap_jax.runtime.stack.Stack` (anything with ``size`` and
      ``select(indices)``).
    mode: share mode of :func:`share_indices`.
    everywhere: return the result on every process.

  Returns:
    ``fn`` of the whole stack, assembled from the shares, on process 0
    (``None`` elsewhere unless ``everywhere``).
  """
  indices = share_indices(suspects.size, mode=mode)
  if len(indices):
    local = fn(suspects.select(indices))
  else:
    # More processes than suspects: run one model for the output shapes, send
    # zero rows, but still take part in the collective.
    local = jax.tree.map(lambda x: np.asarray(x)[:0], fn(suspects.select([0])))
  return gather_to_process0(local, indices, suspects.size, everywhere=everywhere)
