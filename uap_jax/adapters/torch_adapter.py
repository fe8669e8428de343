"""A PyTorch ``nn.Module`` as a :class:`ModelAdapter`, through ``torch2jax``.

``torch2jax`` (0.1.0, samuela/torch2jax) runs the module's forward pass with
every torch operation replaced by its JAX implementation
(``torch2jax.t2j_module(module)(x, state_dict=...)``), so the result is a
pure JAX function: ``jax.jit``, ``jax.grad`` (inputs and weights) and
``jax.vmap`` work on it, and the weights are a JAX pytree that the zoo can
fine-tune. The module runs in eval mode (BatchNorm uses its running
statistics, dropout is off); images go in as NHWC and are transposed to
torch's NCHW inside. Operations torch2jax does not implement raise
``NotImplementedError`` when the model is first checked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from uap_jax.adapters.base import ModelAdapter


def _extend_torch2jax() -> None:
  """Adds the few operations torch2jax 0.1.0 lacks that small CNNs use
  (``x / y``, ``-x``, ``torch.div``, ``torch.neg``, ``torch.sub``,
  ``torch.relu``; ``max_pool2d``'s default stride); each only
  where the installed torch2jax does not define it already."""
  import torch
  import torch2jax
  t = torch2jax.Torchish
  coerce = torch2jax._coerce
  for name, fn in (("__truediv__", lambda a, b: t(a.value / coerce(b))),
                   ("__rtruediv__", lambda a, b: t(coerce(b) / a.value)),
                   ("__neg__", lambda a: t(-a.value))):
    if name not in vars(t):
      setattr(t, name, fn)
  for torch_fn, jax_fn in ((torch.div, jnp.divide), (torch.neg, jnp.negative),
                           (torch.sub, jnp.subtract), (torch.relu, jax.nn.relu)):
    if torch_fn not in torch2jax.HANDLED_FUNCTIONS:
      torch2jax.auto_implements(torch_fn, jax_fn)
  # torch2jax 0.1.0's max_pool2d fails on torch's default stride=None (which
  # means stride = kernel_size).
  pool = torch2jax.HANDLED_FUNCTIONS.get(torch.nn.functional.max_pool2d)
  if pool is not None and not getattr(pool, "_uap_jax_stride", False):
    def max_pool2d(input, kernel_size, stride=None, *args, **kwargs):
      return pool(input, kernel_size, kernel_size if stride is None else stride,
                  *args, **kwargs)
    max_pool2d._uap_jax_stride = True
    torch2jax.HANDLED_FUNCTIONS[torch.nn.functional.max_pool2d] = max_pool2d


def _module_prefix(name: str) -> str:
  return name.rpartition(".")[0]


def _variables(module) -> dict:
  """``{"params": ..., "buffers": ...}``, JAX arrays keyed by state_dict names."""
  import torch2jax
  state = {k: torch2jax.t2j_array(v.detach().cpu().contiguous())
           for k, v in module.state_dict().items()}
  names = {n for n, _ in module.named_parameters()}
  return {"params": {k: v for k, v in state.items() if k in names},
          "buffers": {k: v for k, v in state.items() if k not in names}}


def reinitializer(module):
  """``seed -> state`` of the module's architecture freshly initialised, or None.

  Every submodule's own ``reset_parameters()`` (torch's initialisers, and
  BatchNorm's statistics reset) runs on a copy under ``torch.manual_seed(seed)``
  (the global torch RNG is restored after). A parameter that no
  ``reset_parameters`` reaches (one held by a module without that method)
  would keep the victim's values, and a "fresh" model would then be part
  copy: then there is no initialiser (None).

  Args:
    module: a ``torch.nn.Module``.

  Returns:
    The function, or None when some parameter is not re-initialised.
  """
  import copy
  import torch

  def fresh_module(seed: int):
    fresh = copy.deepcopy(module)
    with torch.random.fork_rng(devices=[]):
      torch.manual_seed(int(seed))
      for m in fresh.modules():
        if callable(getattr(m, "reset_parameters", None)):
          m.reset_parameters()
    return fresh.eval()

  for m in module.modules():
    if (not callable(getattr(m, "reset_parameters", None))
        and any(True for _ in m.parameters(recurse=False))):
      return None

  return lambda seed: _variables(fresh_module(seed))


def from_torch(module, spec: str = "", name: str = "") -> ModelAdapter:
  """A torch classifier as an adapter.

  The module must map float32 [0, 1] images, NCHW, to logits (normalising
  inside). Its parameters are trainable; its buffers (BatchNorm statistics)
  are not; the module that holds the last parameter (in registration order)
  is the final layer. Fresh models of its architecture come from its
  submodules' ``reset_parameters`` (:func:`reinitializer`).

  Args:
    module: a ``torch.nn.Module`` (put in eval mode).
    spec: where it came from.
    name: its name (default: the class name).

  Returns:
    The adapter; ``variables`` is ``{"params": {...}, "buffers": {...}}``
    keyed by ``state_dict`` names.

  Raises:
    ValueError: a TorchScript module (torch2jax needs the Python module).
  """
  import torch
  import torch2jax
  if isinstance(module, torch.jit.ScriptModule):
    raise ValueError(
        f"Model spec {spec!r} is TorchScript: torch2jax translates a Python "
        "nn.Module's operations and cannot run a compiled TorchScript graph. Give "
        "the module instead: py:FILE.py:FUNCTION returning the nn.Module with its "
        "weights loaded (e.g. model.load_state_dict(torch.load(PATH))).")
  _extend_torch2jax()
  module = module.eval()
  forward = torch2jax.t2j_module(module)
  variables = _variables(module)
  params, buffers = variables["params"], variables["buffers"]
  param_names = [n for n, _ in module.named_parameters()]
  last = _module_prefix(param_names[-1]) if param_names else None

  def logits_fn(variables, x):
    state_dict = {**variables["params"], **variables["buffers"]}
    return forward(jnp.transpose(x, (0, 3, 1, 2)), state_dict=state_dict)

  return ModelAdapter(
      name=name or type(module).__name__, logits_fn=logits_fn,
      variables=variables,
      trainable={"params": {k: True for k in params}, "buffers": {k: False for k in buffers}},
      head={"params": {k: _module_prefix(k) == last for k in params},
            "buffers": {k: False for k in buffers}},
      spec=spec, init_fn=reinitializer(module))
