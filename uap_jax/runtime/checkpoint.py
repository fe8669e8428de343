"""Saving and restoring stacks (and any array pytree) with orbax.

Each stack lives in its own ``ocp.CheckpointManager`` directory with two
items: ``state`` (params and BatchNorm statistics, leading model axis) and
``meta`` (architecture, its build arguments and per-model metadata, JSON).
Orbax writes a step into a temporary directory and renames it when complete,
so an interrupted save leaves the previous good step in place. Arrays are
saved from host memory by the calling process alone, so that in a
multi-process run the main process can save while the others wait
(:class:`uap_jax.runtime.workdir.Workdir` decides who saves).

Orbax writes host (numpy) arrays on process 0 only, and refuses a process's
own device arrays in a multi-process run. So a stack that another process
trained (its share of the zoo, see :mod:`uap_jax.runtime.divide`) is
*staged*: written whole, atomically, as ``DIRECTORY.staged.npz`` beside its
checkpoint directory, and process 0 turns it into the orbax checkpoint the
next time it looks at that directory (:func:`latest_step` and every load do).
A staged stack survives the process that trained it, so a rerun after a
killed process commits what it staged instead of training it again.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from uap_jax import models
from uap_jax.runtime import files
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

  On process 0 a stack staged for ``directory`` is committed first.

  Args:
    directory: a checkpoint directory.

  Returns:
    The step number, or None when there is no complete step (or no
    directory).
  """
  _commit_staged(directory)
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

  On a process other than 0 the stack is staged (see the module doc): it
  becomes the checkpoint when process 0 next looks at ``directory``.

  Args:
    directory: the stack's checkpoint directory (created if missing).
    stack: the models.
    step: step number (default: one after the newest, 0 in a new
      directory); the newest step is what :func:`load_stack` restores.
  """
  meta = _jsonable({"arch": stack.arch, "arch_kwargs": stack.arch_kwargs,
                    "models": stack.meta})
  state = _on_host({"params": stack.params, "rest": stack.rest})
  if jax.process_index() != 0:
    _stage(directory, meta, state)
    return
  _save_state(directory, meta, state, step)


STAGED_SUFFIX = ".staged.npz"


def staged_path(directory: str) -> str:
  """Where a stack for ``directory`` is staged by a process other than 0."""
  return os.path.abspath(directory).rstrip(os.sep) + STAGED_SUFFIX


def _stage(directory: str, meta: dict, state: PyTree) -> None:
  leaves = jax.tree.leaves(state)
  if any(not isinstance(x, np.ndarray) for x in leaves):
    raise ValueError(f"Cannot stage the stack for {directory}: it holds arrays "
                     "without a numpy form (typed PRNG keys); run one process.")
  # Whole or absent, as orbax's own steps are.
  files.write_atomically(staged_path(directory), "wb", lambda f: np.savez(
      f, meta=np.array(json.dumps(meta)),
      **{f"leaf_{i}": x for i, x in enumerate(leaves)}))


def _commit_staged(directory: str) -> None:
  """On process 0: makes a staged stack the checkpoint of ``directory``."""
  staged = staged_path(directory)
  if jax.process_index() != 0 or not os.path.exists(staged):
    return
  try:
    with np.load(staged) as f:
      meta = json.loads(str(f["meta"]))
      leaves = [f[f"leaf_{i}"] for i in range(len(f.files) - 1)]
    _, target = _restore_target(meta)
    treedef = jax.tree.structure(target)
    if treedef.num_leaves != len(leaves) or any(
        tuple(t.shape) != x.shape for t, x in zip(jax.tree.leaves(target), leaves)):
      raise ValueError("its arrays do not match its architecture")
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise ValueError(
        f"{staged} (a stack another process trained) is damaged ({type(e).__name__}: "
        f"{e}). Delete it and rerun: that stack is trained again.") from e
  # Whatever the directory held is older than what was staged for it.
  if os.path.isdir(directory):
    shutil.rmtree(directory)
  _save_state(directory, meta, jax.tree.unflatten(treedef, leaves), None)
  os.remove(staged)


def discard_staged(directory: str) -> None:
  """Removes a stack staged for ``directory``, if any (a stale one)."""
  try:
    os.remove(staged_path(directory))
  except FileNotFoundError:
    pass


def _save_state(directory: str, meta: dict, state: PyTree, step: int | None) -> None:
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
  graphdef, target = _restore_target(meta)
  with _open_for_restore(directory) as mngr:
    try:
      state = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))["state"]
    except Exception as e:
      raise ValueError(_corrupt_message(directory, e)) from e
  # Saved from numpy (see _on_host), restored as numpy: back on the device,
  # as the models were before they were saved.
  state = jax.tree.map(jax.numpy.asarray, state)
  return stack_lib.Stack(arch=meta["arch"], arch_kwargs=_arch_kwargs(meta),
                         graphdef=graphdef,
                         params=state["params"], rest=state["rest"],
                         meta=list(meta["models"]))


def _arch_kwargs(meta: dict) -> dict:
  arch_kwargs = dict(meta["arch_kwargs"])
  if "image_shape" in arch_kwargs:
    arch_kwargs["image_shape"] = tuple(arch_kwargs["image_shape"])
  return arch_kwargs


def _restore_target(meta: dict) -> tuple[nnx.GraphDef, PyTree]:
  """A saved stack's graphdef, and the shapes and dtypes of its
  ``{"params", "rest"}``."""
  k = len(meta["models"])
  graphdef, params, rest = nnx.split(_abstract_model(meta["arch"], _arch_kwargs(meta)),
                              nnx.Param, ...)
  with_axis = lambda t: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((k,) + tuple(x.shape), x.dtype), t)
  return graphdef, {"params": with_axis(params), "rest": with_axis(rest)}


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
  _commit_staged(directory)
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
