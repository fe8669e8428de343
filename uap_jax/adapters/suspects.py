"""``--suspect``: one suspect or several, each a model spec or recorded answers.

A ``--suspect`` value is a comma list of sources, or a directory that holds
them (a directory that is itself a stack checkpoint is one source). A source
is a recorded-answers ``.npz`` (black box, :mod:`uap_jax.fingerprint.blackbox`)
or a model spec (white box, :mod:`uap_jax.adapters.spec`).
"""

from __future__ import annotations

import os

from uap_jax.adapters import spec as spec_lib

# Entries of a suspects directory that are taken as sources.
_FILE_SUFFIXES = (".npz",) + spec_lib.TORCH_SUFFIXES + spec_lib.KERAS_SUFFIXES


def split_sources(value: str, flag: str = "--suspect") -> list[str]:
  """The sources a ``--suspect`` value names, in order.

  Args:
    value: a source, a comma list of sources, or a directory of sources
      (``.npz`` answers, TorchScript / ``.keras`` files, stack checkpoint
      folders; ``py:`` specs only in a comma list).
    flag: the flag that gave it, for the messages.

  Returns:
    The sources.

  Raises:
    ValueError: an empty list, or a directory with no source in it.
  """
  items = [s.strip() for s in value.split(",") if s.strip()]
  if not items:
    raise ValueError(f"{flag}={value!r} names no model.")
  sources = []
  for item in items:
    if (os.path.isdir(item) and not item.startswith("py:")
        and not spec_lib.is_stack_checkpoint(item)):
      found = sorted(
          os.path.join(item, name) for name in os.listdir(item)
          if name.endswith(_FILE_SUFFIXES)
          or spec_lib.is_stack_checkpoint(os.path.join(item, name)))
      if not found:
        raise ValueError(
            f"{flag}={item}: the directory holds no model (.npz answers, "
            "TorchScript or .keras files, stack checkpoint folders) and is no "
            "stack checkpoint itself.")
      sources.extend(found)
    else:
      sources.append(item)
  return sources


def is_answers(source: str) -> bool:
  """Whether a source is recorded black-box answers (an ``.npz``)."""
  return source.endswith(".npz")


def check_sources(value: str) -> list[str]:
  """Checks every source of a ``--suspect`` value, cheaply, before any work.

  Args:
    value: the ``--suspect`` value.

  Returns:
    The sources.

  Raises:
    ValueError / FileNotFoundError: naming the bad source and the fix.
  """
  from uap_jax.fingerprint import blackbox
  sources = split_sources(value)
  for source in sources:
    if is_answers(source) or (not source.startswith("py:") and os.path.isdir(source)):
      blackbox.check_suspect(source)
    else:
      try:
        spec_lib.check_spec(source)
      except ValueError as e:
        raise ValueError(f"--suspect={source}: {e}") from e
  return sources


def check_reference_models(value: str) -> list[str]:
  """Checks a ``--reference_models`` value cheaply, before any work.

  Args:
    value: a spec, a comma list or a directory of specs.

  Returns:
    The specs.

  Raises:
    ValueError: naming the bad entry and the fix (answers cannot calibrate:
      a reference model is run on every fingerprint point).
  """
  sources = split_sources(value, flag="--reference_models")
  for source in sources:
    if is_answers(source):
      raise ValueError(f"--reference_models={source}: recorded answers cannot join the "
                       "reference; give the model itself (a py: spec, a TorchScript or "
                       ".keras file, or a stack checkpoint).")
    try:
      spec_lib.check_spec(source)
    except ValueError as e:
      raise ValueError(f"--reference_models={source}: {e}") from e
  return sources


def source_id(source: str) -> str:
  """A source as recorded in its verdicts: an absolute path, or a ``py:``
  spec with its module path made absolute."""
  if source.startswith("py:"):
    module, _, function = source[len("py:"):].rpartition(":")
    if module.endswith(".py") or os.sep in module:
      module = os.path.abspath(module)
    return f"py:{module}:{function}"
  return os.path.abspath(source)


def display_name(source: str) -> str:
  """A short name of a source: its file or folder name without suffix, or
  for ``py:`` specs the module's name and the function's."""
  if source.startswith("py:"):
    module, _, function = source[len("py:"):].rpartition(":")
    stem = os.path.splitext(os.path.basename(module))[0] if (
        module.endswith(".py") or os.sep in module) else module.rsplit(".", 1)[-1]
    return f"{stem}_{function}"
  return os.path.splitext(os.path.basename(os.path.normpath(source)))[0]
