"""Writing a file whole or not at all."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable


def write_atomically(target: str, mode: str, write: Callable[[Any], Any]) -> None:
  """Writes ``target`` with ``write(file)`` under a temporary name, then
  renames it: an interrupted write never leaves half a file.

  Args:
    target: the file's path (its folder is created if missing).
    mode: ``"w"`` or ``"wb"``.
    write: writes the content into the open file.
  """
  os.makedirs(os.path.dirname(target), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".tmp")
  with os.fdopen(fd, mode) as f:
    write(f)
  os.replace(tmp, target)
