"""Model specs: where a victim or white-box suspect comes from.

=====================================  =========================================
spec                                   model
=====================================  =========================================
``DIR`` (a stack checkpoint)           model 0 of a uap-jax stack checkpoint
``py:MODULE:FUNCTION``                 what ``FUNCTION()`` returns: a
                                       :class:`ModelAdapter`, a
                                       ``(logits_fn, variables)`` pair, a Flax
                                       NNX module, a torch ``nn.Module`` or a
                                       Keras 3 model; MODULE importable or a
                                       path to a ``.py`` file
``FILE.pt`` / ``.pth`` / ``.ts``       a TorchScript file (``torch.jit.save``)
``FILE.keras``                         a Keras 3 model file
=====================================  =========================================

:func:`check_spec` refuses a bad spec cheaply (nothing imported but the
module named); :func:`load_model` resolves it, once per process (so that a
reloaded checkpoint of an adapter stack shares its compiled functions).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys

from uap_jax.adapters.base import ModelAdapter

TORCH_SUFFIXES = (".pt", ".pth", ".ts")
KERAS_SUFFIXES = (".keras",)
_TORCH_EXTRA = "pip install 'uap-jax[torch]' (torch and torch2jax)"
_KERAS_EXTRA = "pip install 'uap-jax[keras]' (keras 3)"


def is_stack_checkpoint(spec: str) -> bool:
  """Whether ``spec`` names a uap-jax stack checkpoint directory.

  Cheap (no JAX backend starts, so it may run before ``jax.distributed``):
  a directory with a numbered step folder that holds the stack's items.
  """
  if not os.path.isdir(spec):
    return False
  return any(name.isdigit() and os.path.isdir(os.path.join(spec, name, "meta"))
             for name in os.listdir(spec))


def _split_py(spec: str) -> tuple[str, str]:
  body = spec[len("py:"):]
  module, sep, function = body.rpartition(":")
  if not sep or not module or not function:
    raise ValueError(
        f"Model spec {spec!r}: a py: spec is py:MODULE:FUNCTION (MODULE importable "
        "or a path to a .py file), e.g. py:my_models.py:make_victim.")
  return module, function


def _is_path(module: str) -> bool:
  return module.endswith(".py") or os.sep in module


def _need(package: str, spec: str, extra: str) -> None:
  if importlib.util.find_spec(package) is None:
    raise ValueError(f"Model spec {spec!r} needs {package}, which is not installed: "
                     f"{extra}.")


def check_spec(spec: str) -> None:
  """Refuses a spec that cannot name a model, before any work.

  Checks the form, that the file, directory or module exists, and that the
  framework a file needs is installed. Nothing is run.

  Args:
    spec: a model spec (see the module docstring).

  Raises:
    ValueError: naming the problem and the fix.
  """
  if spec.startswith("py:"):
    module, _ = _split_py(spec)
    if _is_path(module):
      if not os.path.isfile(module):
        raise ValueError(f"Model spec {spec!r}: no file {module}; give the path of "
                         "the .py file that defines the function.")
    elif importlib.util.find_spec(module.split(".")[0]) is None:
      raise ValueError(f"Model spec {spec!r}: module {module!r} is not importable; "
                       "give a path to its .py file, or add its folder to PYTHONPATH.")
    return
  if os.path.isdir(spec):
    if not is_stack_checkpoint(spec):
      raise ValueError(f"Model spec {spec!r} is a directory with no uap-jax stack "
                       "checkpoint (such as WORKDIR/checkpoints/victim).")
    return
  if spec.endswith(TORCH_SUFFIXES + KERAS_SUFFIXES):
    if not os.path.isfile(spec):
      raise ValueError(f"Model spec {spec!r}: no such file.")
    if spec.endswith(TORCH_SUFFIXES):
      _need("torch", spec, _TORCH_EXTRA)
      _need("torch2jax", spec, _TORCH_EXTRA)
    else:
      _need("keras", spec, _KERAS_EXTRA)
    return
  raise ValueError(
      f"Model spec {spec!r} is none of: a uap-jax stack checkpoint directory, "
      "py:MODULE:FUNCTION, a TorchScript file (.pt, .pth, .ts) or a .keras file"
      + ("" if os.path.exists(spec) else " (and no such path exists)") + ".")


def _import(module: str, spec: str):
  if not _is_path(module):
    return importlib.import_module(module)
  path = os.path.abspath(module)
  # One module name per file, so that a second resolution finds the first.
  name = "uap_jax_user_" + "".join(c if c.isalnum() else "_" for c in path)
  if name in sys.modules:
    return sys.modules[name]
  loader_spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(loader_spec)
  sys.modules[name] = mod
  try:
    loader_spec.loader.exec_module(mod)
  except Exception:
    del sys.modules[name]
    raise
  return mod


def _from_object(obj, spec: str, name: str) -> ModelAdapter:
  """Whatever a ``py:`` function returned, as an adapter."""
  import dataclasses
  from flax import nnx
  if isinstance(obj, ModelAdapter):
    return dataclasses.replace(obj, spec=spec, name=obj.name or name)
  if isinstance(obj, nnx.Module):
    from uap_jax.adapters import flax_nnx
    return flax_nnx.from_nnx(obj, spec=spec, name=name)
  if isinstance(obj, tuple) and len(obj) == 2 and callable(obj[0]):
    return ModelAdapter(name=name, logits_fn=obj[0], variables=obj[1], spec=spec)
  module = type(obj).__module__ or ""
  if module.startswith("torch") or _is_torch_module(obj):
    _need("torch2jax", spec, _TORCH_EXTRA)
    from uap_jax.adapters import torch_adapter
    return torch_adapter.from_torch(obj, spec=spec, name=name)
  if module.startswith("keras") or _is_keras_model(obj):
    from uap_jax.adapters import keras_adapter
    return keras_adapter.from_keras(obj, spec=spec, name=name)
  raise ValueError(
      f"Model spec {spec!r} returned a {type(obj).__name__}; the function must return "
      "a uap_jax.adapters.ModelAdapter, a (logits_fn, variables) pair, a Flax NNX "
      "module, a torch nn.Module or a Keras 3 model.")


def _is_torch_module(obj) -> bool:
  torch = sys.modules.get("torch")
  return torch is not None and isinstance(obj, torch.nn.Module)


def _is_keras_model(obj) -> bool:
  keras = sys.modules.get("keras")
  return keras is not None and isinstance(obj, keras.Model)


@functools.lru_cache(maxsize=None)
def load_model(spec: str) -> ModelAdapter:
  """Resolves a model spec into an adapter (once per process and spec).

  Args:
    spec: a model spec (see the module docstring).

  Returns:
    The :class:`ModelAdapter`, its ``spec`` set.

  Raises:
    ValueError: a bad spec, a missing module / function / file / framework,
      or a function that returns something else than a model.
  """
  check_spec(spec)
  if spec.startswith("py:"):
    module_name, function_name = _split_py(spec)
    module = _import(module_name, spec)
    function = getattr(module, function_name, None)
    if not callable(function):
      raise ValueError(f"Model spec {spec!r}: {module_name} has no function "
                       f"{function_name!r}; name a function that returns the model.")
    return _from_object(function(), spec, function_name)
  if os.path.isdir(spec):
    from uap_jax.adapters import flax_nnx
    return flax_nnx.from_stack_checkpoint(spec)
  if spec.endswith(TORCH_SUFFIXES):
    import torch
    from uap_jax.adapters import torch_adapter
    return torch_adapter.from_torch(torch.jit.load(spec, map_location="cpu"), spec=spec,
                                    name=os.path.basename(spec))
  from uap_jax.adapters import keras_adapter
  return keras_adapter.load_keras_file(spec)
