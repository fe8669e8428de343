"""The persistent XLA compilation cache (``--compile_cache``).

Compiling is most of a small run's time on CPU (14 of the 24 s of the tiny
quickstart's verify stage), and a rerun, a ``--stages=verify`` call on new
suspects or a resumed run compiles the very same programs again. JAX can
keep compiled programs on disk (`persistent compilation cache`); a run
turns it on before its first compilation. A cached program is the program
the compiler would build again, so results do not change (the kill -9 test
checks bit-identical reruns with the cache on).

The cache is trusted code: JAX runs what it finds there, so keep it in a
directory only you can write to (the default is under your home).
"""

from __future__ import annotations

import os

import jax
from absl import logging

# Cache every program: on CPU most take well under JAX's default 1 s
# threshold, and together they are what a rerun waits for.
_MIN_COMPILE_SECONDS = 0.0


def resolve(setting: str) -> str | None:
  """The cache directory a ``--compile_cache`` setting names.

  Args:
    setting: ``auto`` ($JAX_COMPILATION_CACHE_DIR if set, else
      $XDG_CACHE_HOME/uap-jax/xla, else ~/.cache/uap-jax/xla), ``none`` (no
      cache) or a directory.

  Returns:
    The directory, or None for no cache.
  """
  if setting == "none":
    return None
  if setting != "auto":
    return os.path.abspath(os.path.expanduser(setting))
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "uap-jax", "xla")


def enable(setting: str) -> str | None:
  """Turns the persistent compilation cache on (or leaves it off).

  Call before the run's first compilation; a process that already uses
  another cache directory keeps it.

  Args:
    setting: see :func:`resolve`.

  Returns:
    The directory in use, or None.
  """
  path = resolve(setting)
  if path is None:
    return None
  current = jax.config.jax_compilation_cache_dir
  if current and current != path:
    logging.info("XLA compilation cache: keeping %s (set before this run).", current)
    return current
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_SECONDS)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  logging.info("XLA compilation cache: %s (--compile_cache=none turns it off).", path)
  return path
