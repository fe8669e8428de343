"""A Keras 3 model on the JAX backend as a :class:`ModelAdapter`.

The forward pass is ``model.stateless_call`` (pure: variables in, outputs
out) in inference mode. Keras picks its backend once, when it is first
imported: :func:`import_keras` sets ``KERAS_BACKEND=jax`` before that, and
refuses clearly when keras was already imported with another backend.
"""

from __future__ import annotations

import os
import sys

from uap_jax.adapters.base import ModelAdapter


def import_keras():
  """Imports keras 3 on the JAX backend.

  Returns:
    The ``keras`` module.

  Raises:
    ValueError: keras is missing, or was imported with another backend.
  """
  if "keras" not in sys.modules:
    os.environ.setdefault("KERAS_BACKEND", "jax")
  try:
    import keras
  except ImportError as e:
    raise ValueError("Keras models need keras 3: pip install 'uap-jax[keras]'.") from e
  backend = keras.backend.backend()
  if backend != "jax":
    raise ValueError(
        f"keras was imported with the {backend!r} backend (KERAS_BACKEND="
        f"{os.environ.get('KERAS_BACKEND', '')!r}); uap-jax runs Keras models on the "
        "JAX backend: set KERAS_BACKEND=jax before anything imports keras.")
  return keras


def from_keras(model, spec: str = "", name: str = "") -> ModelAdapter:
  """A Keras 3 classifier (JAX backend) as an adapter.

  The model must map float32 [0, 1] NHWC images to logits (normalising
  inside, e.g. with a ``Rescaling`` or ``Normalization`` layer). Its
  trainable variables are trainable; its last layer with weights is the
  final layer. Fresh models of its architecture come from
  ``keras.models.clone_model``.

  Args:
    model: a built ``keras.Model``.
    spec: where it came from.
    name: its name (default: the model's).

  Returns:
    The adapter; ``variables`` is ``(trainable values, non-trainable values)``.
  """
  import_keras()
  trainable = [v.value for v in model.trainable_variables]
  frozen = [v.value for v in model.non_trainable_variables]
  weighted = [layer for layer in model.layers if layer.trainable_weights]
  last_ids = {id(v) for v in weighted[-1].trainable_weights} if weighted else set()
  head = [id(v) in last_ids for v in model.trainable_variables]
  shape = getattr(model, "input_shape", None)
  input_shape = (tuple(int(s) for s in shape[1:]) if isinstance(shape, tuple)
                 and len(shape) == 4 and all(s is not None for s in shape[1:]) else None)

  def logits_fn(variables, x):
    t, f = variables
    out, _ = model.stateless_call(t, f, x, training=False)
    return out

  return ModelAdapter(
      name=name or model.name, logits_fn=logits_fn, variables=(trainable, frozen),
      trainable=([True] * len(trainable), [False] * len(frozen)),
      head=(head, [False] * len(frozen)), input_shape=input_shape, spec=spec,
      init_fn=_reinitializer(model))


def _reinitializer(model):
  """``seed -> variables`` of the model's architecture freshly initialised
  (``keras.models.clone_model``: new layers, their own initialisers).

  Not tried here: a model that cannot be cloned (some subclassed models) is
  found by :func:`~uap_jax.adapters.base.check_init_fn` when a fresh model is
  first needed, so loading a suspect clones nothing. ``set_random_seed``
  also seeds Python's and NumPy's global generators.
  """
  keras = import_keras()

  def init_fn(seed: int):
    keras.utils.set_random_seed(int(seed))
    clone = keras.models.clone_model(model)
    return ([v.value for v in clone.trainable_variables],
            [v.value for v in clone.non_trainable_variables])

  return init_fn


def load_keras_file(path: str) -> ModelAdapter:
  """A ``.keras`` file as an adapter (see :func:`from_keras`).

  Args:
    path: the file (``model.save(path)``).

  Returns:
    The adapter.
  """
  keras = import_keras()
  model = keras.saving.load_model(path, compile=False)
  return from_keras(model, spec=path, name=os.path.basename(path))
