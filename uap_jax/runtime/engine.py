"""How a function runs over the leading model axis of a stack.

A *stack* keeps K models of one architecture as pytrees whose leaves carry a
leading axis of size K. Anything that runs "for every model" (a forward pass,
a training step, an attack) is written for ONE model as a pure function
``fn(model_tree, *args)`` and lifted over the model axis by
:func:`over_models`. How it is lifted is a strategy, chosen per backend by
measurement (``experiments/bench_model_axis.py``):

* ``vmap``: one jitted, batched program over all K models. Best on GPU/TPU.
* ``map``: ``lax.map`` inside one jitted program: one compile, models run one
  after another. On CPU it matches the loop for inference, but gradients of
  Flax convolutions inside ``lax.scan`` were measured ~19x slower.
* ``loop``: a Python loop over K calls of one jitted per-model function
  (compiled once); outputs are stacked. On CPU, vmap over conv nets was 2-4x
  slower than this.
* ``shard``: the model axis is split over the devices of a mesh
  (:mod:`uap_jax.runtime.sharding`, the ``--mesh`` flag) with ``jax.shard_map``;
  inside each device shard the models run with ``vmap``. A stack that does
  not divide the mesh is padded and the outputs sliced back; inference can
  also split its batch over a ``data`` mesh axis (``data_split``).

``auto`` picks per backend (:func:`default_strategy`): ``vmap`` on one
accelerator, ``shard`` on several; on CPU ``map`` for forward passes and
``loop`` for anything with a backward pass (training, attacks).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from uap_jax.config import STRATEGIES

PyTree = Any


def default_strategy(backend: str | None = None, forward_only: bool = False) -> str:
  """Returns the measured-fastest strategy for a backend.

  Args:
    backend: ``"cpu"``, ``"gpu"``, ``"tpu"``; ``None`` means the default one.
    forward_only: the lifted function runs forward passes only (predictions,
      fingerprints), no gradients.

  Returns:
    A strategy name other than ``"auto"``: on an accelerator ``shard`` when
    this process has several devices, else ``vmap`` (unmeasured so far); on
    CPU ``map`` for forward passes (``experiments/bench_model_axis.py``: 8-21 %
    faster than the loop for MLP and small-CNN stacks, equal for ResNet-20)
    and ``loop`` with a backward pass (``experiments/bench_train_stack.py``:
    ``map`` trained LeNet-5 stacks 2x slower).
  """
  backend = backend or jax.default_backend()
  if backend == "cpu":
    return "map" if forward_only else "loop"
  if jax.local_device_count(backend) > 1:
    return "shard"
  return "vmap"


def check_strategy(strategy: str) -> None:
  """Raises ValueError for an unknown strategy name, without touching devices.

  Checks of settings before a run should use this rather than
  :func:`resolve`: resolving ``auto`` initialises JAX's backends, after which
  ``jax.distributed`` can no longer start.

  Args:
    strategy: the name to check.
  """
  if strategy not in STRATEGIES:
    raise ValueError(
        f"Unknown model-axis strategy {strategy!r}; choose one of "
        f"{', '.join(STRATEGIES)}.")


def resolve(strategy: str, forward_only: bool = False) -> str:
  """Validates a strategy name and resolves ``auto``.

  Args:
    strategy: one of :data:`uap_jax.config.STRATEGIES`.
    forward_only: what it is for runs forward passes only (see
      :func:`default_strategy`).

  Returns:
    A concrete strategy (never ``"auto"``).
  """
  check_strategy(strategy)
  if strategy == "auto":
    return default_strategy(forward_only=forward_only)
  return strategy


def num_models(tree: PyTree) -> int:
  """Size of the leading model axis of a stacked pytree."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError("Empty model pytree: a stack needs at least one leaf.")
  return int(leaves[0].shape[0])


def stack_trees(trees: Sequence[PyTree]) -> PyTree:
  """Stacks per-model pytrees along a new leading model axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack_tree(tree: PyTree) -> list[PyTree]:
  """Splits a stacked pytree into a list of per-model pytrees."""
  return [jax.tree.map(lambda x, i=i: x[i], tree)
          for i in range(num_models(tree))]


def take_models(tree: PyTree, index: Sequence[int] | np.ndarray) -> PyTree:
  """Selects models ``index`` of a stacked pytree (keeps the model axis)."""
  index = np.asarray(index, dtype=np.int32)
  return jax.tree.map(lambda x: x[index], tree)


@jax.jit
def _model_at(tree: PyTree, index: jax.Array) -> PyTree:
  """Model ``index`` of a stacked pytree, in one dispatch.

  Eager ``x[i]`` per leaf costs one dispatch per leaf and model, which was
  measured to dominate the 'loop' strategy's training steps of small models;
  this is compiled once per tree structure (``index`` is traced).
  """
  return jax.tree.map(
      lambda x: jax.lax.dynamic_index_in_dim(x, index, keepdims=False), tree)


_stack_jitted = jax.jit(stack_trees)


def _stack_outputs(outs: list[PyTree]) -> PyTree:
  """Stacks per-model outputs: one compiled call when that stays cheap to
  compile (compiling grows with models x leaves; 12,800 inputs took ~10 s),
  else one eager stack per leaf."""
  if len(outs) * len(jax.tree.leaves(outs[0])) <= 1024:
    return _stack_jitted(outs)
  return stack_trees(outs)


def over_models(
    fn: Callable[..., Any],
    strategy: str = "auto",
    *,
    in_axes: Sequence[int | None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: str = "models",
    donate_argnums: Sequence[int] = (),
    data_split: Sequence[int | None] | None = None,
    data_axis_name: str = "data",
) -> Callable[..., Any]:
  """Lifts a per-model function over the leading model axis.

  Args:
    fn: ``fn(*args)`` for one model. Arguments whose ``in_axes`` entry is 0
      carry a leading model axis in the lifted call; ``None`` entries are
      shared by every model.
    strategy: one of :data:`uap_jax.config.STRATEGIES`.
    in_axes: per positional argument, 0 (per model) or None (shared). By
      default the first argument is per model and the others are shared.
    mesh: device mesh for ``shard``; by default the mesh installed with
      :func:`uap_jax.runtime.sharding.set_default_mesh` (the ``--mesh`` flag), else
      all local devices on ``models``. Resolved at call time.
    axis_name: mesh axis that the model axis is split over for ``shard``.
    donate_argnums: buffers the jitted function may reuse (training state).
    data_split: ``shard`` only, per positional argument: the axis of ONE
      model's argument that is a batch and may be split over the mesh axis
      ``data_axis_name`` (None: not split). Only for functions that treat
      examples independently (eval-mode inference, fingerprints): each device
      sees part of the batch. Every output's first per-model axis must be
      that batch axis. Ignored when the mesh has no (or a size-1) data axis.
      Without it, a mesh's data axis also carries models: the model axis is
      split over ``models`` x ``data`` devices.
    data_axis_name: mesh axis for ``data_split``.

  With ``shard``, a model axis (or split batch) that does not divide the
  mesh axis is padded by repeating the last model (row) and the outputs are
  sliced back, so any stack size runs on any mesh.

  Returns:
    A function with the same arguments whose outputs gain a leading model
    axis. Every strategy compiles once per input shape.
  """
  strategy = resolve(strategy)

  def axes_for(nargs: int) -> tuple[int | None, ...]:
    if in_axes is None:
      return (0,) + (None,) * (nargs - 1)
    if len(in_axes) != nargs:
      raise ValueError(
          f"in_axes has {len(in_axes)} entries for {nargs} arguments.")
    return tuple(in_axes)

  donate = tuple(donate_argnums)
  if strategy == "shard":
    return _sharded(fn, axes_for, mesh, axis_name, donate, data_split,
                    data_axis_name)
  return {"vmap": _vmapped, "map": _mapped, "loop": _looped}[strategy](
      fn, axes_for, donate)


def _vmapped(fn, axes_for, donate_argnums):
  """The ``vmap`` strategy (see :func:`over_models`)."""
  @functools.partial(jax.jit, donate_argnums=donate_argnums)
  def vmapped(*args):
    return jax.vmap(fn, in_axes=axes_for(len(args)))(*args)
  return vmapped


def _mapped(fn, axes_for, donate_argnums):
  """The ``map`` strategy (see :func:`over_models`)."""
  @functools.partial(jax.jit, donate_argnums=donate_argnums)
  def mapped(*args):
    axes = axes_for(len(args))
    per_model = tuple(a for a, ax in zip(args, axes) if ax == 0)

    def one(per):
      it = iter(per)
      full = [next(it) if ax == 0 else a for a, ax in zip(args, axes)]
      return fn(*full)

    return jax.lax.map(one, per_model)
  return mapped


def _looped(fn, axes_for, donate_argnums):
  """The ``loop`` strategy (see :func:`over_models`)."""
  jitted = jax.jit(fn, donate_argnums=donate_argnums)
  one_model = {}  # axes -> jitted vmap, for stacks of one model

  def looped(*args):
    axes = axes_for(len(args))
    per_model = tuple(a for a, ax in zip(args, axes) if ax == 0)
    k = num_models(per_model)
    if k == 1:
      # The same computation as one looped call, without slicing the
      # model out and stacking the outputs back.
      if axes not in one_model:
        one_model[axes] = jax.jit(jax.vmap(fn, in_axes=axes),
                                  donate_argnums=donate_argnums)
      return one_model[axes](*args)
    outs = []
    for i in range(k):
      it = iter(_model_at(per_model, i))
      full = [next(it) if ax == 0 else a for a, ax in zip(args, axes)]
      outs.append(jitted(*full))
    return _stack_outputs(outs)
  return looped


def _sharded(fn, axes_for, mesh, axis_name, donate_argnums, data_split,
             data_axis_name):
  """The ``shard`` strategy (see :func:`over_models`)."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime import sharding  # pylint: disable=g-import-not-at-top
  compiled_per_mesh = {}

  def build(active_mesh, axes, split, model_axes):
    def spec(ax, d):
      batch = [] if d is None else [None] * d + [data_axis_name]
      return P(model_axes, *batch) if ax == 0 else P(*batch)

    in_specs = tuple(spec(ax, d) for ax, d in zip(axes, split))
    out_spec = (P(model_axes, data_axis_name)
                if any(d is not None for d in split) else P(model_axes))

    def body(*shard_args):
      return jax.vmap(fn, in_axes=axes)(*shard_args)

    # check_vma=False: shared arguments are replicated and the checker cannot
    # tell that per-model outputs do not depend on other devices' models.
    return jax.jit(jax.shard_map(body, mesh=active_mesh, in_specs=in_specs,
                                 out_specs=out_spec, check_vma=False),
                   donate_argnums=donate_argnums)

  def sharded(*args):
    active_mesh = mesh if mesh is not None else sharding.default_mesh()
    if axis_name not in active_mesh.shape:
      raise ValueError(
          f"strategy 'shard' needs a mesh axis {axis_name!r}; the mesh has "
          f"{tuple(active_mesh.shape)}. Build it with "
          "uap_jax.runtime.sharding.make_mesh('models:N[,data:M]').")
    axes = axes_for(len(args))
    n_models = sharding.axis_size(active_mesh, axis_name)
    n_data = sharding.axis_size(active_mesh, data_axis_name)
    split = (tuple(data_split) if data_split is not None and n_data > 1
             else (None,) * len(args))
    if len(split) != len(args):
      raise ValueError(
          f"data_split has {len(split)} entries for {len(args)} arguments.")
    k = num_models([a for a, ax in zip(args, axes) if ax == 0])
    if all(d is None for d in split) and n_data > 1:
      # Nothing to split over 'data' (e.g. a training step): spread the
      # models over both axes rather than repeat the work on every data row.
      model_axes, n_models = (axis_name, data_axis_name), n_models * n_data
    else:
      model_axes = axis_name
    # Pad the model axis (repeat the last model) and the batch axis (repeat
    # the last row) to multiples of the mesh axes; slice the outputs back.
    args = [pad_models(a, n_models)[0] if ax == 0 else a
            for a, ax in zip(args, axes)]
    args, batch = _pad_batches(args, axes, split, n_data)
    key = (active_mesh, axes, split, model_axes)
    if key not in compiled_per_mesh:
      compiled_per_mesh[key] = build(active_mesh, axes, split, model_axes)
    out = compiled_per_mesh[key](*args)
    if batch is not None:
      return jax.tree.map(lambda x: x[:k, :batch], out)
    return jax.tree.map(lambda x: x[:k], out)

  return sharded


def _pad_batches(args: list, axes: Sequence[int | None],
                 split: Sequence[int | None], n_data: int) -> tuple[list, int | None]:
  """Pads the split batch axis of each argument to a multiple of ``n_data``.

  Returns:
    The arguments and the batch size before padding (None: nothing split).
  """
  args, batch = list(args), None
  for i, (a, ax, d) in enumerate(zip(args, axes, split)):
    if d is None:
      continue
    where = d + (1 if ax == 0 else 0)
    sizes = {int(x.shape[where]) for x in jax.tree.leaves(a)}
    if batch is None:
      batch = sizes.pop() if len(sizes) == 1 else None
    if batch is None or sizes - {batch}:
      raise ValueError(
          "data_split: every split argument needs the same batch size on "
          f"its split axis; argument {i} has sizes {sorted(sizes)}.")
    args[i] = _pad_axis(a, where, n_data)
  return args, batch


def _pad_axis(tree: PyTree, axis: int, multiple: int) -> PyTree:
  """Pads ``axis`` of every leaf to a multiple by repeating its last entry."""
  def pad(x):
    n = x.shape[axis]
    extra = (-n) % multiple
    if not extra:
      return x
    index = np.concatenate([np.arange(n), np.full(extra, n - 1)])
    return jnp.take(x, index, axis=axis)
  return jax.tree.map(pad, tree)


def pad_models(tree: PyTree, multiple: int) -> tuple[PyTree, int]:
  """Pads the model axis to a multiple by repeating the last model.

  Args:
    tree: stacked pytree.
    multiple: the padded size is the next multiple of this.

  Returns:
    The padded tree and the original number of models (slice outputs back
    with ``[:k]``).
  """
  k = num_models(tree)
  pad = (-k) % multiple
  if not pad:
    return tree, k
  index = np.concatenate([np.arange(k), np.full(pad, k - 1)])
  # Indexing (not concatenate) also pads typed PRNG key arrays.
  return jax.tree.map(lambda x: x[index], tree), k
