"""A stack: K models of one architecture with a leading model axis.

A :class:`Stack` holds one ``nnx.GraphDef`` (the architecture, shared) and
the models' variables as pytrees whose leaves have a leading axis of size K:
``params`` (trainable ``nnx.Param``) and ``rest`` (BatchNorm statistics).
The pure function :func:`Stack.logits_fn` maps ``(variables, x)`` of ONE
model to logits; :mod:`uap_jax.runtime.engine` lifts it over the model axis.
Attacks and fingerprints use the same ``logits_fn(variables, x)`` convention,
with ``variables = (params, rest)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uap_jax.runtime import engine
from uap_jax import models

PyTree = Any
LogitsFn = Callable[[PyTree, jax.Array], jax.Array]


@dataclasses.dataclass
class Stack:
  """K models of one architecture.

  Attributes:
    arch: architecture name (a key of ``uap_jax.models.ARCHITECTURES``).
    arch_kwargs: keyword arguments of ``models.build`` besides ``seed``
      (num_classes, image_shape, width, mean, std).
    graphdef: the shared module structure.
    params: trainable variables, leading axis K.
    rest: non-trainable variables (BatchNorm statistics), leading axis K.
    meta: one dict per model (name, kind, family, parent, seed, part, ...).
  """
  arch: str
  arch_kwargs: dict
  graphdef: Any
  params: PyTree
  rest: PyTree
  meta: list[dict]

  @property
  def size(self) -> int:
    return len(self.meta)

  @property
  def names(self) -> list[str]:
    return [m["name"] for m in self.meta]

  @property
  def num_classes(self) -> int:
    return int(self.arch_kwargs["num_classes"])

  @property
  def variables(self) -> tuple[PyTree, PyTree]:
    return (self.params, self.rest)

  @property
  def logits_fn(self) -> LogitsFn:
    """Pure eval-mode forward pass of one model: ``(variables, x) -> logits``."""
    return eval_logits_fn(self.graphdef)

  def select(self, index: Sequence[int]) -> "Stack":
    """A new stack with models ``index`` (in that order)."""
    return dataclasses.replace(
        self, params=engine.take_models(self.params, index),
        rest=engine.take_models(self.rest, index),
        meta=[dict(self.meta[i]) for i in index])

  def model(self, i: int) -> nnx.Module:
    """Model ``i`` as a stand-alone ``nnx.Module`` (eval mode)."""
    params = jax.tree.map(lambda x: x[i], self.params)
    rest = jax.tree.map(lambda x: x[i], self.rest)
    module = nnx.merge(self.graphdef, params, rest)
    module.eval()
    return module


@functools.lru_cache(maxsize=None)
def eval_logits_fn(graphdef) -> LogitsFn:
  """Cached so that jitted callers see the same function and compile once."""
  def logits_fn(variables, x):
    params, rest = variables
    module = nnx.merge(graphdef, params, rest)
    module.eval()
    return module(x)
  return logits_fn


@functools.lru_cache(maxsize=None)
def train_logits_fn(graphdef) -> Callable[..., tuple[jax.Array, PyTree]]:
  """Train-mode forward: ``(params, rest, x) -> (logits, new_rest)``."""
  def logits_fn(params, rest, x):
    # Fresh Variables at the current trace level: BatchNorm mutates them, and
    # NNX refuses to mutate a Variable created under another trace (grad, jit).
    params, rest = jax.tree.map(lambda a: a, (params, rest))
    module = nnx.merge(graphdef, params, rest)
    module.train()
    logits = module(x)
    _, _, new_rest = nnx.split(module, nnx.Param, ...)
    return logits, new_rest
  return logits_fn


def create(arch: str, seeds: Sequence[int], meta: Sequence[dict] | None = None,
           **arch_kwargs) -> Stack:
  """Initialises K models of one architecture, one per seed.

  Args:
    arch: architecture name.
    seeds: initialisation seed of each model.
    meta: per-model metadata; defaults to ``{"name": f"{arch}_{i}"}``.
    **arch_kwargs: num_classes, image_shape, width, mean, std.

  Returns:
    The stack.
  """
  if not seeds:
    raise ValueError("A stack needs at least one model (got no seeds).")
  meta = [dict(m) for m in meta] if meta is not None else [
      {"name": f"{arch}_{i}"} for i in range(len(seeds))]
  if len(meta) != len(seeds):
    raise ValueError(f"{len(meta)} metadata entries for {len(seeds)} seeds.")
  for seed, m in zip(seeds, meta):
    m.setdefault("seed", int(seed))
  return from_modules(arch, dict(arch_kwargs),
                      [models.build(arch, seed=int(s), **arch_kwargs) for s in seeds], meta)


def from_modules(arch: str, arch_kwargs: dict, modules: Sequence[nnx.Module],
                 meta: Sequence[dict]) -> Stack:
  """A stack of K modules of one architecture (one graphdef).

  Args:
    arch: the architecture's name.
    arch_kwargs: what a checkpoint's loader rebuilds the graphdef from.
    modules: the models, all of that architecture.
    meta: one metadata entry per model.

  Returns:
    The stack.
  """
  if len(meta) != len(modules):
    raise ValueError(f"{len(meta)} metadata entries for {len(modules)} models.")
  params, rest, graphdef = [], [], None
  for module in modules:
    graphdef, p, r = nnx.split(module, nnx.Param, ...)
    params.append(p)
    rest.append(r)
  return Stack(arch=arch, arch_kwargs=arch_kwargs, graphdef=graphdef,
               params=engine.stack_trees(params), rest=engine.stack_trees(rest),
               meta=[dict(m) for m in meta])


def to_float(x: np.ndarray | jax.Array) -> jax.Array:
  """uint8 pixels (0-255) to float32 in [0, 1]; floats pass unchanged."""
  if x.dtype == np.uint8:
    return jnp.asarray(x, jnp.float32) / 255.0
  return jnp.asarray(x, jnp.float32)


def predict(stack: Stack, x: np.ndarray, *, batch_size: int = 500,
            strategy: str = "auto", output: str = "logits") -> np.ndarray:
  """Outputs of every model of a stack on the same inputs.

  Args:
    stack: the models.
    x: images, uint8 (0-255) or float in [0, 1], shape ``(N, H, W, C)``.
    batch_size: inputs per compiled call.
    strategy: model-axis strategy (see :mod:`uap_jax.runtime.engine`).
    output: ``logits`` or ``probs``.

  Returns:
    ``(K, N, num_classes)`` float32 numpy array.
  """
  fn = _predict_fn(stack.graphdef, engine.resolve(strategy, forward_only=True),
                   output)
  outs = []
  for start in range(0, len(x), batch_size):
    outs.append(np.asarray(fn(stack.variables, to_float(x[start:start + batch_size]))))
  return np.concatenate(outs, axis=1)


@functools.lru_cache(maxsize=None)
def _predict_fn(graphdef, strategy: str, output: str):
  logits_fn = eval_logits_fn(graphdef)
  if output == "probs":
    per_model = lambda v, x: jax.nn.softmax(logits_fn(v, x))
  elif output == "logits":
    per_model = logits_fn
  else:
    raise ValueError(f"output must be 'logits' or 'probs', got {output!r}.")
  return engine.over_models(per_model, strategy)


def accuracy(stack: Stack, x: np.ndarray, y: np.ndarray, **kwargs) -> np.ndarray:
  """Top-1 accuracy of every model, shape ``(K,)``."""
  pred = predict(stack, x, **kwargs).argmax(-1)
  return (pred == np.asarray(y)[None]).mean(-1)


def forward_flops(stack: Stack) -> float:
  """Floating-point operations of one model's forward pass on one image.

  XLA's own count for the compiled forward pass (nothing runs), for
  estimating what training a stack costs before dividing stacks among
  processes; the parameter count when the backend gives no count.

  Args:
    stack: any stack (its first model is measured).

  Returns:
    FLOPs per image (> 0).
  """
  variables = jax.tree.map(lambda x: x[0], stack.variables)
  shape = (1,) + tuple(int(d) for d in stack.arch_kwargs["image_shape"])
  try:
    cost = jax.jit(stack.logits_fn).lower(
        variables, jax.ShapeDtypeStruct(shape, jnp.float32)).cost_analysis()
    flops = float((cost or {}).get("flops", 0.0))
  except Exception:  # pylint: disable=broad-exception-caught
    flops = 0.0
  if flops > 0:
    return flops
  return float(max(1, sum(int(x.size) for x in jax.tree.leaves(variables[0]))))
