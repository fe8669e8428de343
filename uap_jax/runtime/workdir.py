"""The work directory of a run: where every artefact lives, and what is done.

Layout (all under ``--workdir``)::

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
methods do nothing (they return the path they would have written).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Callable

import numpy as np

from uap_jax.runtime import checkpoint
from uap_jax.runtime import distributed


class Workdir:
  """Paths, atomic writes and the done-markers of one run directory."""

  def __init__(self, root: str, writer: bool | None = None):
    """Opens (and, on the writing process, creates) a run directory.

    Args:
      root: the directory.
      writer: whether this process writes; default: it is the main process.
    """
    self.root = os.path.abspath(root)
    self._writer = writer
    if self.is_writer:
      os.makedirs(self.root, exist_ok=True)

  @property
  def is_writer(self) -> bool:
    """True on the one process that writes the run's files."""
    if self._writer is None:
      return distributed.is_main_process()
    return self._writer

  def path(self, *parts: str) -> str:
    return os.path.join(self.root, *parts)

  def checkpoint_dir(self, name: str) -> str:
    return self.path("checkpoints", name)

  def _write_atomically(self, name: str, mode: str, write: Callable[[Any], Any]) -> str:
    """Writes ``name`` (relative) with ``write(file)`` under a temporary name,
    then renames it, on the writing process only; returns the path."""
    target = self.path(name)
    if not self.is_writer:
      return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".tmp")
    with os.fdopen(fd, mode) as f:
      write(f)
    os.replace(tmp, target)
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
    target = self.path(name)
    if not os.path.exists(target):
      raise FileNotFoundError(
          f"{target} is missing: run the stage that writes it first (see --stages).")
    with open(target) as f:
      try:
        return json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{target} is not valid JSON ({e}); delete it and rerun "
                         "the stage that writes it.") from e

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
    target = self.path(name)
    if not self.is_writer:
      return
    if os.path.isdir(target):
      shutil.rmtree(target)
    elif os.path.exists(target):
      os.remove(target)


def _default(o):
  if isinstance(o, np.integer):
    return int(o)
  if isinstance(o, np.floating):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f"Not JSON serialisable: {type(o).__name__}")
