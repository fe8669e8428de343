"""Several hosts: one JAX process per host (or per GPU), suspects split among them.

The multi-host model is deliberately simple. Every process runs the same
program (``python -m uap_jax.main --flagfile=...``, started by the scripts in
``launch/``), calls :func:`initialize` first, and then

1. takes its share of the suspects (:func:`share_indices` / :func:`my_share`),
2. computes on its LOCAL devices only (any model-axis strategy, including
   ``shard`` over a local mesh, see :mod:`uap_jax.runtime.sharding`),
3. sends its results to process 0 (:func:`gather_to_process0`), which alone
   writes outputs to the work directory (enforced by
   :class:`uap_jax.runtime.workdir.Workdir`, through which every write goes).

No array spans hosts, so nothing in the library needs global ``jax.Array`` s;
the only cross-host communication is the final gather.

Why the gather uses JAX collectives (``multihost_utils.process_allgather``)
and not files in a shared work directory: the workers of a Cloud TPU VM slice
have no shared file system unless one is mounted (a work directory on one
worker's disk is invisible to the others), collectives need no polling or
clean-up protocol, and they fail loudly (the distributed runtime's heartbeat)
when a peer dies instead of waiting for a file that never comes. The cost:
every process briefly holds the whole gathered result (an all-gather), which
for fingerprints (suspects x views x 2KC float32) is megabytes. Arrays pass
through JAX, so float64 becomes float32 unless ``jax_enable_x64`` is set.

On CPU the collectives use gloo over TCP, the default
``jax_cpu_collectives_implementation`` of jax 0.10.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Sequence

import jax
import numpy as np

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


def sync(name: str) -> None:
  """Barrier: every process waits here until all reach ``name``."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


# The longest message :func:`main_process_refusal` carries (bytes of UTF-8).
REFUSAL_BYTES = 4096


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
    Process 0's message (at most :data:`REFUSAL_BYTES` bytes of it), or None.
  """
  if jax.process_count() == 1:
    return message or None
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  buffer = np.zeros(REFUSAL_BYTES, np.uint8)
  raw = (message or "").encode()[:REFUSAL_BYTES]
  buffer[:len(raw)] = np.frombuffer(raw, np.uint8)
  got = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
  return bytes(got).rstrip(b"\0").decode(errors="replace") or None


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
