"""A Flax NNX module, or a uap-jax stack checkpoint, as a :class:`ModelAdapter`."""

from __future__ import annotations

import jax
from flax import nnx

from uap_jax.adapters.base import ModelAdapter


def _path_has(path, name: str) -> bool:
  return any(getattr(k, "key", getattr(k, "name", None)) == name for k in path)


def from_nnx(module: nnx.Module, spec: str = "", name: str = "") -> ModelAdapter:
  """An NNX classifier as an adapter: its ``nnx.Param`` are trainable.

  The module must map float32 [0, 1] NHWC images to logits (normalising
  inside). Run in eval mode. The final layer (for fine-tuning it alone) is
  the parameters under a ``head`` attribute, else the last ``nnx.Linear``
  the module holds.

  Args:
    module: the classifier.
    spec: where it came from.
    name: its name (default: the class name).

  Returns:
    The adapter; ``variables`` is ``(params, rest)``.
  """
  module.eval()
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)

  def logits_fn(variables, x):
    p, r = variables
    m = nnx.merge(graphdef, p, r)
    m.eval()
    return m(x)

  head_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
                if _path_has(p, "head")]
  if head_paths:
    head_params = jax.tree_util.tree_map_with_path(lambda p, _: _path_has(p, "head"),
                                                   params)
  else:
    linears = [path for path, m in module.iter_modules() if isinstance(m, nnx.Linear)]
    last = tuple(linears[-1]) if linears else None
    head_params = jax.tree_util.tree_map_with_path(
        lambda p, _: last is not None and tuple(
            getattr(k, "key", getattr(k, "name", None)) for k in p[:len(last)]) == last,
        params)
  return ModelAdapter(
      name=name or type(module).__name__, logits_fn=logits_fn, variables=(params, rest),
      trainable=(jax.tree.map(lambda _: True, params), jax.tree.map(lambda _: False, rest)),
      head=(head_params, jax.tree.map(lambda _: False, rest)), spec=spec)


def from_stack_checkpoint(directory: str, index: int = 0) -> ModelAdapter:
  """Model ``index`` of a uap-jax stack checkpoint as an adapter.

  Args:
    directory: a stack checkpoint directory (``checkpoints/victim`` of a run,
      or one of its zoo stacks).
    index: which model of the stack.

  Returns:
    The adapter (variables ``(params, rest)``; params trainable, the
    ``head`` layer the final one).
  """
  from uap_jax.runtime import checkpoint
  from uap_jax import train
  stack = checkpoint.load_stack(directory)
  params, rest = jax.tree.map(lambda a: a[index], stack.variables)
  return ModelAdapter(
      name=stack.meta[index].get("name", stack.arch), logits_fn=stack.logits_fn,
      variables=(params, rest),
      trainable=(jax.tree.map(lambda _: True, params), jax.tree.map(lambda _: False, rest)),
      head=(train.head_mask(params), jax.tree.map(lambda _: False, rest)),
      input_shape=tuple(stack.arch_kwargs["image_shape"]), spec=directory)
