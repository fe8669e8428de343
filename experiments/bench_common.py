"""What the benchmark scripts share: where they ran and how they write results."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any


def machine() -> str:
  """The processor's name, or the machine type where Python cannot tell it."""
  return platform.processor() or platform.machine()


def command() -> str:
  """The command line that ran this benchmark, to rerun it."""
  return " ".join([sys.executable] + sys.argv)


def write_json(path: str, result: dict[str, Any]) -> None:
  """Writes ``result`` to ``path`` (folders made as needed) and says so.

  Atomically (a temporary file renamed over it): benchmarks rewrite their
  JSON as they go, and one killed by a time limit must leave the last
  complete version, not half of one.
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  partial = f"{path}.partial"
  with open(partial, "w") as f:
    json.dump(result, f, indent=1)
  os.replace(partial, path)
  print(f"wrote {path}")


def matmul_gflops(n: int, repeats: int = 10) -> float:
  """Best float32 matmul GFLOP/s of the default device over sizes n and 2n:
  the floor that the benchmarks' GFLOP/s are compared with."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rates = []
  for size in (n, 2 * n):
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
      start = time.perf_counter()
      f(a, b).block_until_ready()
      best = min(best, time.perf_counter() - start)
    rates.append(2 * size ** 3 / best / 1e9)
  return max(rates)
