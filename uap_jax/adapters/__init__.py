"""Models from anywhere: a victim or a white-box suspect the owner brings.

:func:`load_model` turns a spec (a uap-jax stack checkpoint, ``py:MODULE:
FUNCTION``, a TorchScript file, a ``.keras`` file; see
:mod:`~uap_jax.adapters.spec`) into a :class:`ModelAdapter`: a pure
``logits_fn(variables, x)`` on float32 [0, 1] NHWC images and its variables.
:func:`to_stack` makes it a one-model stack, which every stage runs like a
built-in architecture. PyTorch goes through ``torch2jax`` (extra
``[torch]``), Keras 3 through ``stateless_call`` on the JAX backend (extra
``[keras]``); both are imported only when a spec needs them.
"""

from __future__ import annotations

import functools

from uap_jax.adapters.base import ADAPTER_ARCH
from uap_jax.adapters.base import AdapterModule
from uap_jax.adapters.base import ModelAdapter
from uap_jax.adapters.base import check_init_fn
from uap_jax.adapters.base import check_outputs
from uap_jax.adapters.base import module_of
from uap_jax.adapters.base import to_stack
from uap_jax.adapters.base import variables_digest
from uap_jax.adapters.flax_nnx import from_nnx
from uap_jax.adapters.spec import check_spec
from uap_jax.adapters.spec import is_stack_checkpoint
from uap_jax.adapters.spec import load_model


@functools.lru_cache(maxsize=None)
def module_for_spec(spec: str) -> AdapterModule:
  """The :class:`AdapterModule` of a spec, once per process and spec, so
  that every stack reloaded from it shares one graphdef (and compiled code).

  Args:
    spec: a model spec.

  Returns:
    The module, holding the spec's own variables.
  """
  return module_of(load_model(spec))


def check_against_data(spec: str, data, *, flag: str, count: int = 8) -> ModelAdapter:
  """Loads a spec and checks its model on a few of the data's test images.

  Args:
    spec: a model spec.
    data: the run's :class:`~uap_jax.data.Dataset`.
    flag: the flag that gave the spec, for the messages.
    count: test images run through the model.

  Returns:
    The adapter.

  Raises:
    ValueError: ``flag=spec: ...`` naming the problem and the fix.
  """
  import numpy as np
  try:
    adapter = load_model(spec)
    images = np.asarray(data.x_test[:count], np.float32) / 255.0
    check_outputs(adapter, images, data.num_classes, data.image_shape)
  except ValueError as e:
    raise ValueError(f"{flag}={spec}: {e}") from e
  except Exception as e:  # the user's code raised: one line, named
    first = (str(e).strip().splitlines() or [""])[0][:300]
    raise ValueError(f"{flag}={spec}: loading the model raised {type(e).__name__}: "
                     f"{first}. Fix the function or file the spec names.") from e
  return adapter


def reinit_problem(victim) -> str | None:
  """Why fresh models of the victim's own architecture cannot be made.

  Args:
    victim: the run's victim stack.

  Returns:
    None when the victim is a given model (arch :data:`ADAPTER_ARCH`) whose
    adapter has a working ``init_fn``; else the reason.
  """
  if victim.arch != ADAPTER_ARCH:
    return f"the victim is a built-in {victim.arch}, not a given model"
  return check_init_fn(load_model(victim.arch_kwargs["spec"]))


def fresh_stack(victim, seeds, meta: list[dict]):
  """Models of a given victim's own architecture, freshly initialised.

  Args:
    victim: the run's victim stack, arch :data:`ADAPTER_ARCH` (its spec
      names the model).
    seeds: one initialisation seed per model.
    meta: one metadata entry per model.

  Returns:
    The stack (the victim's graphdef, new variables).

  Raises:
    ValueError: the victim's adapter has no ``init_fn``.
  """
  adapter = load_model(victim.arch_kwargs["spec"])
  if adapter.init_fn is None:
    raise ValueError(f"The victim {adapter.spec!r} cannot be initialised afresh "
                     "(its adapter has no init_fn).")
  for m, seed in zip(meta, seeds):
    m.setdefault("seed", int(seed))
  return to_stack(adapter, meta, num_classes=victim.arch_kwargs["num_classes"],
                  image_shape=victim.arch_kwargs["image_shape"],
                  variables=[adapter.init_fn(int(s)) for s in seeds])


__all__ = [
    "fresh_stack", "check_init_fn",
    "check_against_data",
    "ADAPTER_ARCH", "AdapterModule", "ModelAdapter", "check_outputs", "module_of",
    "reinit_problem",
    "to_stack", "variables_digest", "from_nnx", "check_spec", "is_stack_checkpoint",
    "load_model", "module_for_spec",
]
