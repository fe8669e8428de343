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
* ``shard``: the model axis is split over the devices of a mesh with
  ``jax.shard_map``; inside each device shard the models run with ``vmap``.

``auto`` picks ``vmap`` on accelerators and ``loop`` on CPU.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

STRATEGIES = ("auto", "vmap", "map", "loop", "shard")

PyTree = Any


def default_strategy(backend: str | None = None) -> str:
  """Returns the measured-fastest strategy for a backend.

  Args:
    backend: ``"cpu"``, ``"gpu"``, ``"tpu"``; ``None`` means the default one.

  Returns:
    A strategy name other than ``"auto"``.
  """
  backend = backend or jax.default_backend()
  return "loop" if backend == "cpu" else "vmap"


def resolve(strategy: str) -> str:
  """Validates a strategy name and resolves ``auto``."""
  if strategy not in STRATEGIES:
    raise ValueError(
        f"Unknown model-axis strategy {strategy!r}; choose one of "
        f"{', '.join(STRATEGIES)}.")
  return default_strategy() if strategy == "auto" else strategy


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


def over_models(
    fn: Callable[..., Any],
    strategy: str = "auto",
    *,
    in_axes: Sequence[int | None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: str = "models",
    donate_argnums: Sequence[int] = (),
) -> Callable[..., Any]:
  """Lifts a per-model function over the leading model axis.

  Args:
    fn: ``fn(*args)`` for one model. Arguments whose ``in_axes`` entry is 0
      carry a leading model axis in the lifted call; ``None`` entries are
      shared by every model.
    strategy: one of :data:`STRATEGIES`.
    in_axes: per positional argument, 0 (per model) or None (shared). By
      default the first argument is per model and the others are shared.
    mesh: device mesh for ``shard``; by default all devices on one axis.
    axis_name: mesh axis that the model axis is split over for ``shard``.
    donate_argnums: buffers the jitted function may reuse (training state).

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

  if strategy == "vmap":
    @functools.partial(jax.jit, donate_argnums=tuple(donate_argnums))
    def vmapped(*args):
      return jax.vmap(fn, in_axes=axes_for(len(args)))(*args)
    return vmapped

  if strategy == "map":
    @functools.partial(jax.jit, donate_argnums=tuple(donate_argnums))
    def mapped(*args):
      axes = axes_for(len(args))
      per_model = tuple(a for a, ax in zip(args, axes) if ax == 0)

      def one(per):
        it = iter(per)
        full = [next(it) if ax == 0 else a for a, ax in zip(args, axes)]
        return fn(*full)

      return jax.lax.map(one, per_model)
    return mapped

  if strategy == "loop":
    jitted = jax.jit(fn, donate_argnums=tuple(donate_argnums))

    def looped(*args):
      axes = axes_for(len(args))
      k = num_models([a for a, ax in zip(args, axes) if ax == 0])
      outs = []
      for i in range(k):
        full = [jax.tree.map(lambda x, i=i: x[i], a) if ax == 0 else a
                for a, ax in zip(args, axes)]
        outs.append(jitted(*full))
      return stack_trees(outs)
    return looped

  # shard: split the model axis over the mesh, vmap within each shard.
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  if mesh is None:
    mesh = jax.make_mesh((jax.device_count(),), (axis_name,),
                         axis_types=(jax.sharding.AxisType.Auto,))

  @jax.jit
  def sharded(*args):
    axes = axes_for(len(args))
    specs = tuple(
        jax.tree.map(lambda _: P(axis_name) if ax == 0 else P(), a)
        for a, ax in zip(args, axes))

    def body(*shard_args):
      return jax.vmap(fn, in_axes=axes)(*shard_args)

    return jax.shard_map(body, mesh=mesh, in_specs=specs,
                         out_specs=P(axis_name), check_vma=False)(*args)

  def sharded_checked(*args):
    axes = axes_for(len(args))
    k = num_models([a for a, ax in zip(args, axes) if ax == 0])
    n = mesh.shape[axis_name]
    if k % n:
      raise ValueError(
          f"strategy 'shard' splits {k} models over {n} devices of mesh axis "
          f"{axis_name!r}; use a stack size divisible by {n} (pad the stack "
          "with uap_jax.engine.pad_models) or another strategy.")
    return sharded(*args)
  return sharded_checked


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
  return jax.tree.map(
      lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]),
      tree), k
