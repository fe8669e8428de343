"""A model from anywhere as one pure JAX function: :class:`ModelAdapter`.

An adapter is what uap-jax needs of a classifier it did not build: a pure
``logits_fn(variables, x)`` on float32 images in [0, 1], NHWC (normalisation
inside the function, so that attack budgets stay in pixel units), the
``variables`` pytree it reads, which of them a piracy attacker may train, and
where it came from (its spec). :func:`to_stack` wraps an adapter into a
one-model :class:`~uap_jax.runtime.stack.Stack`, so that every stage (zoo,
UAP, fingerprint, verify) runs it through the same graphdef + model-axis
machinery as the built-in architectures.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PyTree = Any
LogitsFn = Callable[[PyTree, jax.Array], jax.Array]

# The ``arch`` of a stack that wraps an adapter; its ``arch_kwargs`` hold the
# spec, from which a checkpoint's loader rebuilds the graphdef.
ADAPTER_ARCH = "adapter"


@dataclasses.dataclass(frozen=True, eq=False)
class ModelAdapter:
  """A classifier as a pure JAX function and its variables.

  Attributes:
    name: a short name for logs and reports.
    logits_fn: pure ``(variables, x) -> logits``: ``x`` float32 ``(N, H, W, C)``
      in [0, 1], logits ``(N, num_classes)``; normalises inside; must be
      traceable by ``jax.jit`` / ``jax.grad`` / ``jax.vmap``.
    variables: the pytree ``logits_fn`` reads (array leaves).
    trainable: which leaves a white-box attacker trains (fine-tuning,
      pruning, adversarial training): a pytree of bools shaped like
      ``variables``, ``True`` for all, or None (not trainable: those kinds are
      skipped).
    head: which trainable leaves form the final layer (fine-tuning the last
      layer): bools shaped like ``variables``, or None (that kind is skipped).
    class_names: the classes' names, in logit order, or None.
    input_shape: ``(H, W, C)`` the model needs, or None (any size).
    spec: where it came from (``--victim`` / ``--suspect`` syntax).
    init_fn: ``seed -> variables``: the same architecture freshly
      initialised (the structure of ``variables``), or None. With it, the
      zoo's fresh models of a given victim (extraction students,
      ``independent_seed``, ``independent_data``) have the victim's own
      architecture, and so do stacks of the reference bank, so that an
      architecture is not evidence of piracy; without it both use
      ``--victim_arch``. :func:`check_init_fn` tells whether it works.
  """
  name: str
  logits_fn: LogitsFn
  variables: PyTree
  trainable: PyTree | bool | None = None
  head: PyTree | None = None
  class_names: Sequence[str] | None = None
  input_shape: tuple[int, int, int] | None = None
  spec: str = ""
  init_fn: Callable[[int], PyTree] | None = None

  @property
  def is_trainable(self) -> bool:
    """Whether any variable may be trained."""
    return any(_flags(self.trainable, self.variables))

  @property
  def has_head(self) -> bool:
    """Whether the final layer is known (for fine-tuning it alone)."""
    flags = _flags(self.head, self.variables)
    return any(h and t for h, t in zip(flags, _flags(self.trainable, self.variables)))

  @property
  def parameter_count(self) -> int:
    """Number of numbers in :attr:`variables` (trainable or not)."""
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(self.variables)))


def _flags(mask: PyTree | bool | None, variables: PyTree) -> list[bool]:
  """One bool per leaf of ``variables`` from a mask pytree, a bool or None."""
  leaves = jax.tree.leaves(variables)
  if mask is None or isinstance(mask, bool):
    return [bool(mask)] * len(leaves)
  flags = [bool(f) for f in jax.tree.leaves(mask)]
  if len(flags) != len(leaves):
    raise ValueError(
        f"The adapter's mask has {len(flags)} entries for {len(leaves)} variables: "
        "give one bool per leaf of variables (the same pytree structure), True or None.")
  return flags


def variables_digest(variables: PyTree) -> str:
  """A short hash of a pytree's arrays (shapes, dtypes and values).

  Args:
    variables: any pytree of arrays.

  Returns:
    16 hex digits of the SHA-256 of its leaves, so that a rerun notices a
    changed model behind the same spec.
  """
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(variables):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


class Frozen(nnx.Variable):
  """A variable of an adapter that no training touches."""


class AdapterModule(nnx.Module):
  """An adapter as an ``nnx.Module``, so that stacks, training and attacks
  handle it like a built-in architecture.

  Trainable leaves become ``nnx.Param`` under ``head`` (the final layer) or
  ``body``, the others :class:`Frozen` under ``frozen``; each sits under a
  ``kernel`` key (two or more dimensions: pruned) or ``bias`` (not pruned),
  the names :mod:`uap_jax.train.masks` looks for. The forward pass is the
  adapter's own, always in eval mode (BatchNorm statistics fixed), whether
  the module is in train or eval mode.
  """

  def __init__(self, logits_fn: LogitsFn, variables: PyTree, trainable: Sequence[bool],
               head: Sequence[bool]):
    leaves, self.treedef = jax.tree.flatten(variables)
    self.logits_fn = logits_fn
    groups = {"head": {}, "body": {}, "frozen": {}}
    slots = []
    for i, (leaf, t, h) in enumerate(zip(leaves, trainable, head)):
      group = ("head" if h else "body") if t else "frozen"
      key = "kernel" if np.ndim(leaf) >= 2 else "bias"
      value = jnp.asarray(leaf)
      groups[group][f"v{i:04d}"] = nnx.Dict(
          {key: nnx.Param(value) if t else Frozen(value)})
      slots.append((group, f"v{i:04d}", key))
    self.slots = tuple(slots)
    self.head = nnx.Dict(groups["head"])
    self.body = nnx.Dict(groups["body"])
    self.frozen = nnx.Dict(groups["frozen"])

  def __call__(self, x: jax.Array) -> jax.Array:
    store = {"head": self.head, "body": self.body, "frozen": self.frozen}
    leaves = [store[g][name][key][...] for g, name, key in self.slots]
    return self.logits_fn(jax.tree.unflatten(self.treedef, leaves), x)


def module_of(adapter: ModelAdapter) -> AdapterModule:
  """The adapter as an :class:`AdapterModule` (its variables copied in).

  Args:
    adapter: the model.

  Returns:
    The module; ``nnx.split(module, nnx.Param, ...)`` gives its trainable
    parameters and the rest.
  """
  trainable = _flags(adapter.trainable, adapter.variables)
  head = [h and t for h, t in zip(_flags(adapter.head, adapter.variables), trainable)]
  return AdapterModule(adapter.logits_fn, adapter.variables, trainable, head)


def to_stack(adapter: ModelAdapter, meta: dict | Sequence[dict], *, num_classes: int,
             image_shape: Sequence[int], variables: Sequence[PyTree] | None = None):
  """A one-model stack that runs ``adapter`` (arch :data:`ADAPTER_ARCH`).

  Args:
    adapter: the model (its ``spec`` is what a saved copy reloads from).
    meta: the model's metadata (name, kind, family, ...), or one entry per
      model of ``variables``.
    num_classes: its logit count (checked against the data beforehand).
    image_shape: ``(H, W, C)`` of the run's images.
    variables: other variables of the same architecture, one per model
      (for example ``adapter.init_fn(seed)`` per seed); default: the
      adapter's own, one model.

  Returns:
    The :class:`~uap_jax.runtime.stack.Stack`.
  """
  from uap_jax.runtime import stack as stack_lib
  variables = [adapter.variables] if variables is None else list(variables)
  return stack_lib.from_modules(
      ADAPTER_ARCH,
      {"spec": adapter.spec, "num_classes": int(num_classes),
       "image_shape": tuple(int(s) for s in image_shape)},
      [module_of(dataclasses.replace(adapter, variables=v)) for v in variables],
      [meta] if isinstance(meta, dict) else meta)


def check_init_fn(adapter: ModelAdapter) -> str | None:
  """Whether the adapter's ``init_fn`` gives variables shaped like its own.

  Args:
    adapter: the model.

  Returns:
    None when ``init_fn(0)`` has the structure, shapes and dtypes of
    ``adapter.variables``; else why not (no ``init_fn``, it raised, or
    what differs).
  """
  if adapter.init_fn is None:
    return "its adapter has no init_fn"
  try:
    fresh = adapter.init_fn(0)
  except Exception as e:  # any framework's error (a model keras cannot clone)
    return f"its init_fn raised {type(e).__name__}: {str(e)[:200]}"
  if jax.tree.structure(fresh) != jax.tree.structure(adapter.variables):
    return "its init_fn returns another pytree structure than its variables"
  for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(adapter.variables)):
    if np.shape(a) != np.shape(b) or jnp.result_type(a) != jnp.result_type(b):
      return (f"its init_fn returns a {np.shape(a)} {jnp.result_type(a)} leaf for a "
              f"{np.shape(b)} {jnp.result_type(b)} variable")
  return None


def check_outputs(adapter: ModelAdapter, images: np.ndarray, num_classes: int,
                  image_shape: Sequence[int]) -> np.ndarray:
  """Runs the model (jitted) on a few of the data's images and checks it.

  Args:
    adapter: the model.
    images: a few float32 ``(N, H, W, C)`` images in [0, 1] of the run's data.
    num_classes: the data's class count.
    image_shape: the data's ``(H, W, C)``.

  Returns:
    The logits, ``(N, num_classes)``.

  Raises:
    ValueError: one message naming the problem and the fix: input shape,
      a failing forward pass, output shape, class count, non-finite outputs,
      probabilities instead of logits.
  """
  where = f"The model of {adapter.spec or adapter.name!r}"
  image_shape = tuple(int(s) for s in image_shape)
  if adapter.input_shape is not None and tuple(adapter.input_shape) != image_shape:
    raise ValueError(
        f"{where} takes {tuple(adapter.input_shape)} images (H, W, C) but the data "
        f"set's are {image_shape}: use a model built for this data (or --dataset of "
        "the images it was trained on).")
  try:
    out = np.asarray(jax.jit(adapter.logits_fn)(adapter.variables, jnp.asarray(images)))
  except Exception as e:  # any framework's error: say where it came from
    first = (str(e).strip().splitlines() or [""])[0][:300]
    raise ValueError(
        f"{where} fails on the data's images, float32 {tuple(images.shape)} in [0, 1] "
        f"NHWC ({type(e).__name__}: {first}). logits_fn must take NHWC images in "
        "[0, 1] (normalising inside) and be traceable by jax.jit.") from e
  if out.ndim != 2 or out.shape[0] != len(images):
    raise ValueError(
        f"{where} returns shape {out.shape} for {len(images)} images; it must return "
        f"logits of shape (N, num_classes) = ({len(images)}, {num_classes}).")
  if out.shape[1] != num_classes:
    raise ValueError(
        f"{where} returns {out.shape[1]} logits per image but the data set has "
        f"{num_classes} classes: use a model trained on this data set (or the "
        "--dataset it was trained on).")
  if not np.all(np.isfinite(out)):
    raise ValueError(
        f"{where} returns non-finite outputs (NaN or inf) on the data's images: "
        "check its weights and that it expects [0, 1] images.")
  if np.all(out >= 0) and np.allclose(out.sum(-1), 1.0, atol=1e-3):
    raise ValueError(
        f"{where} returns probabilities (non-negative rows summing to 1), not "
        "logits: remove its final softmax (return the pre-softmax scores), or "
        "wrap it as log(probabilities).")
  return out
