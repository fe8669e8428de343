"""What the benchmark scripts share: where they ran and how they write results."""

from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any


def machine() -> str:
  """The processor's name, or the machine type where Python cannot tell it."""
  return platform.processor() or platform.machine()


def command() -> str:
  """The command line that ran this benchmark, to rerun it."""
  return " ".join([sys.executable] + sys.argv)


def write_json(path: str, result: dict[str, Any]) -> None:
  """Writes ``result`` to ``path`` (folders made as needed) and says so."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {path}")
