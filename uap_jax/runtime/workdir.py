"""The work directory of a run: where every artefact lives, and what is done.

Layout (all under ``--workdir``)::

  lock                    held by the run writing here (host, pid, start)
  config.json             the run's settings
  partition.json          the seeded data partition (indices per part)
  stages/STAGE.json       written last by a finished stage (seconds, summary)
  checkpoints/NAME/       orbax checkpoints (stacks, UAPs, fingerprints, ...)
  victim.json, zoo.json, uap.json, ...   human-readable results
  queries.npz, queries.json              black-box query images, manifest
  report/                 results.json, report.md, plots

JSON, text and ``.npz`` files are written to a temporary name and renamed,
so an interrupted write never leaves half a file.

In a multi-process run only the main process writes: every write of a run
goes through a :class:`Workdir`, and on the other processes its writing
methods do nothing (they return the path they would have written). The one
exception is an artefact that a stage divides among the processes (a zoo or
reference-bank stack, see :mod:`uap_jax.runtime.divide`): it has exactly one
builder, which saves it through :meth:`Workdir.writing_here`. So every
process of a multi-process run must see the same work directory at the same
path; :meth:`Workdir.lock` checks that before any work.

One run at a time writes a work directory: the writing process holds
:meth:`Workdir.lock` for the whole run (an ``fcntl.flock`` on
``WORKDIR/lock``, which the kernel drops when the process dies, so a run
killed with ``kill -9`` leaves no lock that blocks the next one).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
from typing import Any, Callable, Iterator

import numpy as np
from absl import logging

from uap_jax.runtime import checkpoint
from uap_jax.runtime import distributed
from uap_jax.runtime import files


class Workdir:
  """Paths, atomic writes and the done-markers of one run directory."""

  def __init__(self, root: str, writer: bool | None = None):
    """Opens a run directory; it is created by the first write (or the lock).

    Nothing is created here, so a run refused by its checks leaves no trace.

    Args:
      root: the directory.
      writer: whether this process writes; default: it is the main process.
    """
    self.root = os.path.abspath(root)
    self._writer = writer

  @property
  def is_writer(self) -> bool:
    """True on the one process that writes the run's files."""
    if self._writer is None:
      return distributed.is_main_process()
    return self._writer

  def writing_here(self) -> "Workdir":
    """The same directory, written by this process whatever its rank.

    For an artefact this process alone builds (its share of a divided
    stage): nobody else writes it, so the main-process rule would only lose
    it.

    Returns:
      A :class:`Workdir` of the same root that writes on this process.
    """
    return Workdir(self.root, writer=True)

  def path(self, *parts: str) -> str:
    return os.path.join(self.root, *parts)

  def checkpoint_dir(self, name: str) -> str:
    return self.path("checkpoints", name)

  def _write_atomically(self, name: str, mode: str, write: Callable[[Any], Any]) -> str:
    """Writes ``name`` (relative) with ``write(file)`` under a temporary name,
    then renames it, on the writing process only; returns the path."""
    target = self.path(name)
    if self.is_writer:
      files.write_atomically(target, mode, write)
    return target

  def write_json(self, name: str, obj: Any) -> str:
    """Writes ``obj`` as indented JSON at ``name`` (relative), atomically."""
    def write(f):
      json.dump(obj, f, indent=2, sort_keys=False, default=_default)
      f.write("\n")
    return self._write_atomically(name, "w", write)

  def write_text(self, name: str, text: str) -> str:
    """Writes ``text`` at ``name`` (relative), atomically."""
    return self._write_atomically(name, "w", lambda f: f.write(text))

  def save_stack(self, name: str, stack) -> str:
    """Saves a stack as the checkpoint ``checkpoints/NAME``."""
    directory = self.checkpoint_dir(name)
    if self.is_writer:
      checkpoint.save_stack(directory, stack)
    return directory

  def save_arrays(self, name: str, tree: Any, meta: dict | None = None) -> str:
    """Saves an array pytree and JSON metadata as ``checkpoints/NAME``."""
    directory = self.checkpoint_dir(name)
    if self.is_writer:
      checkpoint.save_arrays(directory, tree, meta)
    return directory

  def save_figure(self, name: str, fig, **kwargs) -> str:
    """Saves a matplotlib figure at ``name`` (relative)."""
    target = self.path(name)
    if self.is_writer:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      fig.savefig(target, **kwargs)
    return target

  def write_npz(self, name: str, **arrays: np.ndarray) -> str:
    """Writes arrays as a compressed ``.npz`` at ``name`` (relative), atomically.

    Args:
      name: the file, relative to the run directory.
      **arrays: the arrays, by key.

    Returns:
      The file's path.
    """
    return self._write_atomically(name, "wb", lambda f: np.savez_compressed(f, **arrays))

  def write_with(self, name: str, write: Callable[[str], Any]) -> str:
    """Lets ``write(path)`` write the file ``name`` (relative), on the writer only.

    For files whose format another module owns (the data partition): that
    module writes, the work directory decides whether this process may.

    Args:
      name: the file, relative to the run directory.
      write: called with the file's absolute path.

    Returns:
      The file's path.
    """
    target = self.path(name)
    if self.is_writer:
      write(target)
    return target

  def read_json(self, name: str) -> Any:
    """The JSON file ``name`` (relative), parsed.

    Args:
      name: the file, relative to the run directory.

    Returns:
      Its content.

    Raises:
      FileNotFoundError: it is missing.
      ValueError: it is not valid JSON; the message names the stage that
        rewrites it.
    """
    target = self.path(name)
    if not os.path.exists(target):
      raise FileNotFoundError(
          f"{target} is missing: run the stage that writes it first (see --stages).")
    with open(target) as f:
      try:
        return json.load(f)
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{target} is not valid JSON ({e}): it was cut short "
                         f"or edited. {_rewrite_advice(name)}") from e

  def exists(self, name: str) -> bool:
    return os.path.exists(self.path(name))

  def stage_done(self, stage: str) -> bool:
    return self.exists(os.path.join("stages", f"{stage}.json"))

  def mark_done(self, stage: str, info: dict) -> None:
    self.write_json(os.path.join("stages", f"{stage}.json"), info)

  def clear_stage(self, stage: str) -> None:
    self.remove(os.path.join("stages", f"{stage}.json"))

  def stage_seconds(self, stages) -> dict[str, float]:
    """Seconds each finished stage of ``stages`` took (from its marker)."""
    return {stage: float(self.read_json(os.path.join("stages", f"{stage}.json"))["seconds"])
            for stage in stages if self.stage_done(stage)}

  def remove(self, name: str) -> None:
    """Removes the file or folder ``name`` (relative), with a checkpoint's
    staged copy (see :mod:`uap_jax.runtime.checkpoint`), on the writer."""
    target = self.path(name)
    if not self.is_writer:
      return
    checkpoint.discard_staged(target)
    if os.path.isdir(target):
      shutil.rmtree(target)
    elif os.path.exists(target):
      os.remove(target)

  # The lock: one writing run per work directory.

  def check_free(self) -> None:
    """Refuses at once when another run holds the lock; takes nothing.

    For the checks before a run's work: a busy directory is reported before
    the data is loaded, and nothing is created or written. The writing
    process looks; in a multi-process run every process must call this, and
    all get its answer (:func:`distributed.main_process_refusal`).

    Raises:
      WorkdirInUse: another live process holds ``WORKDIR/lock``.
    """
    problem = self._in_use_problem() if self.is_writer else None
    problem = distributed.main_process_refusal(problem)
    if problem:
      raise WorkdirInUse(problem)

  def _in_use_problem(self) -> str | None:
    """Who holds ``WORKDIR/lock`` (the message), None when nobody does."""
    path = self.path(LOCK_FILE)
    try:
      fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
      return None
    try:
      if not _try_flock(fd):
        return _in_use_message(self.root, path, _read_holder(fd))
      fcntl.flock(fd, fcntl.LOCK_UN)
      return None
    finally:
      os.close(fd)

  @contextlib.contextmanager
  def lock(self) -> Iterator[None]:
    """Holds ``WORKDIR/lock`` (host, pid, start time) while the block runs.

    Only the writing process locks; in a multi-process run the others wait
    for its outcome (:func:`distributed.main_process_refusal`) and stop with
    its message when it could not lock, instead of running on alone. A lock
    file left by a process that died (``kill -9``, a crash) is not held by
    the kernel any more: it is taken over with a warning. The file is
    removed on exit, also when the block raises.

    Yields:
      Nothing; the lock is held inside the block.

    Raises:
      WorkdirInUse: another live process holds the lock (on every process).
    """
    if not self.is_writer:
      problem = distributed.main_process_refusal(None)
      if problem:
        raise WorkdirInUse(problem)
      self._check_shared()
      yield
      return
    try:
      fd = self._acquire()
    except Exception as e:
      # The others stop with the same message (any failure: they must not
      # wait in the collective for a process that has left).
      distributed.main_process_refusal(str(e) or type(e).__name__)
      raise
    distributed.main_process_refusal(None)
    try:
      self._check_shared()
      yield
    finally:
      self._release(fd)

  def _check_shared(self) -> None:
    """Refuses a multi-process run whose processes see different directories.

    Divided stages save artefacts on every process and read each other's
    (:mod:`uap_jax.runtime.divide`): every process reads the lock file the
    writer has just written and compares it with the writer's copy, before
    any work. A collective: every process calls it under :meth:`lock`.

    Raises:
      NotSharedWorkdir: some process does not see the writer's lock file.
    """
    if distributed.process_count() == 1:
      return
    try:
      with open(self.path(LOCK_FILE)) as f:
        mine = f.read()
    except OSError as e:
      mine = f"<unreadable: {e.strerror}>"
    writers = distributed.broadcast_from_main(mine)
    seen = distributed.gather_texts("" if mine == writers else socket.gethostname())
    apart = [f"process {p} (host {host})" for p, host in enumerate(seen) if host]
    if apart:
      raise NotSharedWorkdir(
          f"{self.root} is not one directory shared by all "
          f"{distributed.process_count()} processes: {', '.join(apart)} do(es) "
          "not see the lock file process 0 wrote there. The processes divide "
          "the zoo and the reference bank and read each other's checkpoints, "
          "so put --workdir (and --reference_bank) on a file system every host "
          "mounts at the same path (NFS, a mounted bucket), or run one process.")

  def _acquire(self) -> int:
    """Takes the lock; returns the descriptor that holds it."""
    os.makedirs(self.root, exist_ok=True)
    path = self.path(LOCK_FILE)
    while True:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
      if not _try_flock(fd):
        holder = _read_holder(fd)
        os.close(fd)
        raise WorkdirInUse(_in_use_message(self.root, path, holder))
      # The previous holder unlinks the file before it lets go: a lock taken
      # on that old file guards nothing, so open the new one and try again.
      if _same_file(fd, path):
        break
      os.close(fd)
    previous = _read_holder(fd)
    if previous is not None:
      logging.warning(
          "%s: taking over the lock left by pid %s on host %s (since %s), "
          "which ended without releasing it (killed?).", self.root,
          previous.get("pid"), previous.get("host"), previous.get("started"))
    holder = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now().astimezone().isoformat(
                  timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    os.fsync(fd)
    return fd

  def _release(self, fd: int) -> None:
    # Unlinked while still held: a process that opened it meanwhile sees
    # another file at the path once it gets the lock, and retries.
    try:
      os.unlink(self.path(LOCK_FILE))
    except FileNotFoundError:
      pass
    finally:
      os.close(fd)  # closing drops the flock


def _default(o):
  if isinstance(o, np.integer):
    return int(o)
  if isinstance(o, np.floating):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f"Not JSON serialisable: {type(o).__name__}")


LOCK_FILE = "lock"


class WorkdirInUse(ValueError):
  """Another run holds the work directory's lock."""


class NotSharedWorkdir(ValueError):
  """The processes of one run do not see the same work directory."""


def _try_flock(fd: int) -> bool:
  """Takes an exclusive flock on ``fd`` without waiting; False when held."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      return False
    raise
  return True


def _same_file(fd: int, path: str) -> bool:
  try:
    on_disk = os.stat(path)
  except FileNotFoundError:
    return False
  mine = os.fstat(fd)
  return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read_holder(fd: int) -> dict | None:
  """The holder a lock file names, None when it is empty or unreadable."""
  try:
    holder = json.loads(os.pread(fd, 4096, 0).decode() or "null")
  except (ValueError, UnicodeDecodeError):
    return None
  return holder if isinstance(holder, dict) else None


def _in_use_message(root: str, path: str, holder: dict | None) -> str:
  if holder is None:  # it has the lock but has not written its details yet
    who = "another run"
  else:
    who = (f"pid {holder.get('pid')} on host {holder.get('host')} since "
           f"{holder.get('started')}")
  return (f"{root} is in use by {who}; wait for it to finish, or, if that run "
          f"is dead, delete {path} and rerun. To run both at once, give this "
          "one another --workdir.")


# The stage that rewrites each JSON file (markers: their own stage), for the
# advice on a damaged file.
_WRITTEN_BY = {
    "partition.json": "victim", "victim.json": "victim", "zoo.json": "zoo",
    "uap.json": "uap", "fingerprints.json": "fingerprint", "split.json": "encoder",
    "encoder.json": "encoder", "verify.json": "verify",
    "queries.json": "export_queries", os.path.join("report", "results.json"): "report",
}


def _rewrite_advice(name: str) -> str:
  """How to get a good copy of the work directory's file ``name``."""
  name = os.path.normpath(name)
  if name == "config.json":
    return "Delete it: the next run writes it again from its flags."
  folder, base = os.path.split(name)
  stage = base[:-len(".json")] if folder == "stages" else _WRITTEN_BY.get(name)
  if stage is None:
    return "Delete it and rerun the stage that writes it."
  return (f"The {stage} stage writes it: delete it and rerun with "
          f"--stages={stage} and the stages after it (or --overwrite).")
