"""Building a stage's missing artefacts once, divided among the processes.

The stages that build many independent artefacts (the zoo's stacks, the
reference bank's, the victim) call :func:`build_missing`:

1. process 0 looks at what is saved and decides what is missing (one look,
   so every process acts on the same answer) and who builds it: the
   missing items, largest estimated cost first, each to the least-loaded
   process (:func:`assign`, deterministic);
2. every process builds and saves its own items, itself, into the shared
   work directory (each artefact has exactly one builder, so nobody else
   writes there);
3. all wait at a barrier, learn whether any process failed, and read the
   others' artefacts from the work directory.

So a multi-process run needs a work directory that every process sees at the
same path (a network file system); :meth:`Workdir.lock
<uap_jax.runtime.workdir.Workdir.lock>` checks that before any work, and
step 3 says so again if an artefact is missing. A rerun after a killed
process finds what the others saved and builds only the rest. In a single
process this is a plain loop: load, else build.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from typing import Callable, Generic, Sequence, TypeVar

import jax
from absl import logging

from uap_jax.runtime import distributed

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclasses.dataclass(frozen=True)
class Built(Generic[Result]):
  """What :func:`build_missing` gives back.

  Attributes:
    results: per item its result, loaded or built, in item order.
    owner: per item the process that built it in this call, or -1 where it
      was loaded from an earlier run.
  """
  results: list[Result]
  owner: list[int]

  @property
  def built(self) -> list[int]:
    """Indices of the items built in this call (by any process)."""
    return [i for i, p in enumerate(self.owner) if p >= 0]

  @property
  def reused(self) -> list[int]:
    """Indices of the items loaded from an earlier run."""
    return [i for i, p in enumerate(self.owner) if p < 0]


def assign(costs: Sequence[float], num_processes: int) -> list[int]:
  """Which process builds each item: longest first, to the least loaded.

  Greedy longest-processing-time scheduling: within 4/3 of the best
  makespan, and the same on every process for the same costs.

  Args:
    costs: per item its estimated cost (any positive unit).
    num_processes: the processes to share among (>= 1).

  Returns:
    Per item a process index in ``[0, num_processes)``.

  Raises:
    ValueError: a cost is negative or not finite, or no processes.
  """
  if num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {num_processes}.")
  for c in costs:
    if not 0.0 <= float(c) < float("inf"):
      raise ValueError(f"costs must be finite and >= 0, got {list(costs)}.")
  load = [0.0] * num_processes
  owner = [0] * len(costs)
  # Ties: the earlier item first, then the lower process.
  for i in sorted(range(len(costs)), key=lambda i: (-float(costs[i]), i)):
    p = min(range(num_processes), key=lambda p: (load[p], p))
    owner[i] = p
    load[p] += float(costs[i])
  return owner


def build_missing(items: Sequence[Item], *, load: Callable[[Item], Result | None],
                  build: Callable[[Item], Result], what: str,
                  describe: Callable[[Item], str] = str,
                  cost: Callable[[Item], float] | None = None,
                  rebuild: bool = False) -> Built[Result]:
  """Loads the saved items, builds the missing ones divided among processes.

  Every process must call this at the same point with the same ``items``
  (it takes part in collectives).

  Args:
    items: what to build, in the same order on every process.
    load: reads an item's saved result, ``None`` when it is missing or
      stale (it may log why).
    build: builds an item and saves it into the shared work directory on
      this process; returns its result.
    what: the artefacts' name for logs and errors (``"zoo stacks"``).
    describe: an item's name (and where it is saved) for logs and errors.
    cost: an item's estimated cost, for sharing missing items among
      processes; default: all equal. Called on process 0 only, and only
      when there are several processes.
    rebuild: build every item, whatever is saved (``--overwrite``).

  Returns:
    The results and who built what (:class:`Built`).

  Raises:
    RuntimeError: another process failed to build its share (this process
      re-raises its own error), or an item another process built cannot be
      read here (the work directory is not shared).
  """
  count, me = jax.process_count(), jax.process_index()
  results: list = [None] * len(items)
  plan, error = None, None
  if me == 0:
    try:
      for i, item in enumerate(items):
        results[i] = None if rebuild else load(item)
      missing = [i for i, r in enumerate(results) if r is None]
      costs = [float(cost(items[i])) if cost and count > 1 else 1.0 for i in missing]
      plan = {"missing": missing, "owner": assign(costs, count)}
    except Exception as e:  # pylint: disable=broad-exception-caught
      if count == 1:
        raise
      # The others must not wait for a plan that never comes.
      error, plan = e, {"error": f"{type(e).__name__}: {e}"}
  plan = json.loads(distributed.broadcast_from_main(json.dumps(plan)))
  if error is not None:
    raise error
  if "error" in plan:
    raise RuntimeError(f"Process 0 could not plan the {what}: {plan['error']}")
  owner = [-1] * len(items)
  for i, p in zip(plan["missing"], plan["owner"]):
    owner[i] = p
  _log_plan(items, owner, what, describe, count)

  problem = ""
  for i in [i for i, p in enumerate(owner) if p == me]:
    try:
      results[i] = build(items[i])
    except Exception as e:  # pylint: disable=broad-exception-caught
      if count == 1:
        raise
      error = e
      problem = f"{describe(items[i])}: {type(e).__name__}: {e}"
      logging.error("Process %d failed to build %s", me, problem)
      break
  if count == 1:
    return Built(results, owner)

  distributed.wait_for_all(f"built {what}")
  problems = distributed.gather_texts(problem)
  if error is not None:
    raise error
  _raise_problems(what, problems, "failed on",
                  "See that process's log; a rerun builds only what is still missing.")
  # Process 0 reads first: reading commits what the others staged
  # (uap_jax.runtime.checkpoint), and only then can they read it.
  problem = _load_others(items, results, load, describe, owner) if me == 0 else ""
  problem = distributed.broadcast_from_main(problem)
  if problem:
    raise RuntimeError(f"Building {what}: process 0 cannot read {problem}")
  problem = _load_others(items, results, load, describe, owner) if me else ""
  _raise_problems(
      what, distributed.gather_texts(problem), "cannot read",
      "Every process must see the same --workdir (and --reference_bank) at the "
      "same path: put them on a file system all hosts mount (NFS, a mounted "
      "bucket), or run a single process.")
  return Built(results, owner)


def _raise_problems(what: str, problems: list[str], verb: str, advice: str) -> None:
  """Raises RuntimeError naming every process with a problem (none: returns)."""
  failed = [(p, text) for p, text in enumerate(problems) if text]
  if failed:
    raise RuntimeError(
        f"Building {what}: " + "; ".join(f"process {p} {verb} {text}"
                                         for p, text in failed) + ". " + advice)


def _load_others(items, results: list, load, describe, owner: list[int]) -> str:
  """Loads every item this process has no result for, into ``results``;
  returns what could not be read ("" when all could)."""
  for i, item in enumerate(items):
    if results[i] is not None:
      continue
    try:
      results[i] = load(item)
    except Exception as e:  # pylint: disable=broad-exception-caught
      return f"{describe(item)} ({type(e).__name__}: {e})"
    if results[i] is None:
      by = f"process {owner[i]} built it" if owner[i] >= 0 else "process 0 found it"
      return (f"{describe(item)} ({by}; host {socket.gethostname()} finds "
              "nothing there)")
  return ""


def _log_plan(items, owner: list[int], what: str, describe, count: int) -> None:
  todo = [i for i, p in enumerate(owner) if p >= 0]
  if not todo:
    return
  if count == 1:
    logging.info("%d of %d %s to build.", len(todo), len(items), what)
    return
  me = jax.process_index()
  mine = [describe(items[i]) for i in todo if owner[i] == me]
  logging.info("%d of %d %s to build, shared among %d processes; process %d "
               "builds %d: %s", len(todo), len(items), what, count, me, len(mine),
               ", ".join(mine) or "none")
