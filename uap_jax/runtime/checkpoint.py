"""Saving and restoring stacks (and any array pytree) with orbax.

Each stack lives in its own ``ocp.CheckpointManager`` directory with two
items: ``state`` (params and BatchNorm statistics, leading model axis) and
``meta`` (architecture, its build arguments and per-model metadata, JSON).
Orbax writes a step into a temporary directory and renames it when complete,
so an interrupted save leaves the previous good step in place. Arrays are
saved from host memory by the calling process alone, so that in a
multi-process run the main process can save while the others wait
(:class:`uap_jax.runtime.workdir.Workdir` decides who saves).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from uap_jax import models
from uap_jax.runtime import stack as stack_lib

PyTree = Any


def _manager(directory: str, create: bool) -> ocp.CheckpointManager:
  # Arrays here are whole on every process, and saved from host memory
  # (_on_host): each process reads on its own, and only the main one writes
  # (see runtime.workdir), so orbax must not wait at barriers for the others.
  me = jax.process_index()
  if create:  # orbax will not create it with active_processes set
    os.makedirs(directory, exist_ok=True)
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=2, create=False, enable_async_checkpointing=False,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              primary_host=me, active_processes={me})),
      item_names=("state", "meta"))


def latest_step(directory: str) -> int | None:
  """The newest complete step in ``directory`` (the one loads restore).

  Args:
    directory: a checkpoint directory.

  Returns:
    The step number, or None when there is no complete step (or no
    directory).
  """
  if not os.path.isdir(directory):
    return None
  with _manager(directory, create=False) as mngr:
    return mngr.latest_step()


def exists(directory: str) -> bool:
  """True if ``directory`` holds at least one complete checkpoint step."""
  return latest_step(directory) is not None


def _jsonable(value):
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (np.floating,)):
    return float(value)
  return value


def _on_host(tree: PyTree) -> PyTree:
  """The tree with its jax.Array leaves as numpy arrays (same values).

  orbax saves a jax.Array with a collective across processes, which would
  wait forever for processes that do not save; numpy leaves are written by
  the saving process alone. Typed PRNG keys have no numpy form and stay.
  """
  def host(x):
    if isinstance(x, jax.Array) and not jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key):
      return np.asarray(x)
    return x
  return jax.tree.map(host, tree)


def _next_step(mngr: ocp.CheckpointManager, step: int | None) -> int:
  # A rerun of a stage saves after what is there: orbax refuses to write a
  # step twice, and the previous step stays good until the new one is whole.
  if step is not None:
    return step
  latest = mngr.latest_step()
  return 0 if latest is None else latest + 1


def save_stack(directory: str, stack: stack_lib.Stack, step: int | None = None) -> None:
  """Saves a stack (state and metadata) as checkpoint ``step``.

  Args:
    directory: the stack's checkpoint directory (created if missing).
    stack: the models.
    step: step number (default: one after the newest, 0 in a new
      directory); the newest step is what :func:`load_stack` restores.
  """
  meta = _jsonable({"arch": stack.arch, "arch_kwargs": stack.arch_kwargs,
                    "models": stack.meta})
  state = _on_host({"params": stack.params, "rest": stack.rest})
  with _manager(directory, create=True) as mngr:
    mngr.save(_next_step(mngr, step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
              force=True)
    mngr.wait_until_finished()


def load_meta(directory: str) -> dict:
  """The JSON metadata of the newest checkpoint (no arrays are read)."""
  mngr = _open_for_restore(directory)
  with mngr:
    step = mngr.latest_step()
    try:
      return mngr.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # orbax raises many types for damaged files
      raise ValueError(_corrupt_message(directory, e)) from e


def load_stack(directory: str) -> stack_lib.Stack:
  """Restores the newest checkpoint of a stack.

  Args:
    directory: a directory written by :func:`save_stack`.

  Returns:
    The stack, with the architecture rebuilt from the saved metadata.

  Raises:
    FileNotFoundError: no checkpoint there.
    ValueError: the checkpoint is damaged or does not match its metadata.
  """
  meta = load_meta(directory)
  arch, arch_kwargs = meta["arch"], dict(meta["arch_kwargs"])
  if "image_shape" in arch_kwargs:
    arch_kwargs["image_shape"] = tuple(arch_kwargs["image_shape"])
  k = len(meta["models"])
  graphdef, params, rest = nnx.split(_abstract_model(arch, arch_kwargs), nnx.Param, ...)
  with_axis = lambda t: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((k,) + tuple(x.shape), x.dtype), t)
  target = {"params": with_axis(params), "rest": with_axis(rest)}
  with _open_for_restore(directory) as mngr:
    try:
      state = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))["state"]
    except Exception as e:
      raise ValueError(_corrupt_message(directory, e)) from e
  # Saved from numpy (see _on_host), restored as numpy: back on the device,
  # as the models were before they were saved.
  state = jax.tree.map(jax.numpy.asarray, state)
  return stack_lib.Stack(arch=arch, arch_kwargs=arch_kwargs, graphdef=graphdef,
                         params=state["params"], rest=state["rest"],
                         meta=list(meta["models"]))


def _abstract_model(arch: str, arch_kwargs: dict) -> nnx.Module:
  """The module a stack's checkpoint restores into (shapes only when built-in)."""
  from uap_jax.adapters import base as adapter_base
  if arch == adapter_base.ADAPTER_ARCH:
    # A given model: its graphdef comes from its spec again (the run's own
    # copies, such as fine-tuned ones, differ from it only in their arrays).
    from uap_jax import adapters
    return adapters.module_for_spec(arch_kwargs["spec"])
  models.check_arch(arch)
  return nnx.eval_shape(lambda: models.build(arch, **arch_kwargs))


def save_arrays(directory: str, tree: PyTree, meta: dict | None = None,
                step: int | None = None) -> None:
  """Saves any pytree of arrays (UAPs, fingerprints, encoder) plus JSON meta.

  ``step`` as in :func:`save_stack`.
  """
  with _manager(directory, create=True) as mngr:
    mngr.save(_next_step(mngr, step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(_on_host(tree)),
        meta=ocp.args.JsonSave(_jsonable(meta or {}))), force=True)
    mngr.wait_until_finished()


def load_arrays(directory: str) -> tuple[PyTree, dict]:
  """Restores what :func:`save_arrays` wrote: ``(tree, meta)`` (numpy leaves)."""
  with _open_for_restore(directory) as mngr:
    try:
      out = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
          state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    except Exception as e:
      raise ValueError(_corrupt_message(directory, e)) from e
  return jax.tree.map(np.asarray, out["state"]), out["meta"]


def _open_for_restore(directory: str) -> ocp.CheckpointManager:
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"No checkpoint at {directory}: run the stage that writes it first "
        "(see --stages), or point --workdir at the run that has it.")
  mngr = _manager(directory, create=False)
  if mngr.latest_step() is None:
    mngr.close()
    raise FileNotFoundError(
        f"{directory} holds no complete checkpoint (an interrupted save leaves "
        "only a temporary folder): rerun the stage that writes it.")
  return mngr


def _corrupt_message(directory: str, error: Exception) -> str:
  # The cause first and on one line (orbax and TensorStore errors run over
  # many lines), so that the fix is what the message ends with.
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  cause = lines[0] if lines else ""
  if len(cause) > 200:
    cause = cause[:200] + "..."
  return (f"Checkpoint at {directory} is damaged or does not match its "
          f"metadata ({type(error).__name__}: {cause}). Delete that folder and "
          "rerun: the stage that writes it runs again (or rerun with --overwrite).")
