"""The work directory of a run: where every artefact lives, and what is done.

Layout (all under ``--workdir``)::

  config.json             the run's settings
  partition.json          the seeded data partition (indices per part)
  stages/STAGE.json       written last by a finished stage (seconds, summary)
  checkpoints/NAME/       orbax checkpoints (stacks, UAPs, fingerprints, ...)
  victim.json, zoo.json, uap.json, ...   human-readable results
  report/                 results.json, report.md, plots

JSON files are written to a temporary name and renamed, so an interrupted
write never leaves half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any


class Workdir:
  """Paths and atomic JSON I/O inside one run directory."""

  def __init__(self, root: str):
    self.root = os.path.abspath(root)
    os.makedirs(self.root, exist_ok=True)

  def path(self, *parts: str) -> str:
    return os.path.join(self.root, *parts)

  def checkpoint_dir(self, name: str) -> str:
    return self.path("checkpoints", name)

  def write_json(self, name: str, obj: Any) -> str:
    """Writes ``obj`` as indented JSON at ``name`` (relative), atomically."""
    target = self.path(name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=False, default=_default)
      f.write("\n")
    os.replace(tmp, target)
    return target

  def write_text(self, name: str, text: str) -> str:
    target = self.path(name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, target)
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
    marker = self.path("stages", f"{stage}.json")
    if os.path.exists(marker):
      os.remove(marker)

  def remove(self, name: str) -> None:
    target = self.path(name)
    if os.path.isdir(target):
      shutil.rmtree(target)
    elif os.path.exists(target):
      os.remove(target)


def _default(o):
  import numpy as np  # pylint: disable=g-import-not-at-top
  if isinstance(o, np.integer):
    return int(o)
  if isinstance(o, np.floating):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f"Not JSON serialisable: {type(o).__name__}")
