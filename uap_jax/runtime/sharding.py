"""Device meshes for the ``shard`` model-axis strategy.

A mesh names the devices of THIS process along at most two axes:

* ``models``: the model axis of a stack is split over it (each device holds
  ``K / n`` models and runs them with ``vmap``);
* ``data``: the batch of an inference call (images, fingerprint views) is
  split over it, for stacks whose activations do not fit on one device.

The mesh is written as a spec string, e.g. ``"models:8"``, ``"models:4,data:2"``
or ``"data:8"``; one axis may leave its size out (``"models,data:2"``) to take
every remaining device. The empty spec (or ``"auto"``) is all local devices on
``models``. :func:`set_default_mesh` installs the mesh that
``engine.over_models(..., strategy="shard")`` uses when it is given none (the
``--mesh`` flag).

Meshes hold local devices only: in a multi-host run every process works on its
own share of suspects (:mod:`uap_jax.runtime.distributed`), so no computation spans
hosts and no array has to be global.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

MODEL_AXIS = "models"
DATA_AXIS = "data"
AXES = (MODEL_AXIS, DATA_AXIS)

_default_mesh: Mesh | None = None


def parse_mesh_spec(spec: str, num_devices: int) -> dict[str, int]:
  """Parses a mesh spec into axis sizes.

  Args:
    spec: ``"models:4,data:2"``-style string; ``""`` or ``"auto"`` means all
      devices on ``models``. At most one axis may omit its size (or write
      ``*``): it takes the devices left over by the others.
    num_devices: devices the mesh must cover exactly.

  Returns:
    Ordered ``{axis_name: size}`` whose sizes multiply to ``num_devices``;
    ``models`` is always present (size 1 if the spec leaves it out).

  Raises:
    ValueError: on an unknown axis, a repeated axis, a size that is not a
      positive integer, or sizes that do not multiply to ``num_devices``.
  """
  spec = (spec or "").strip()
  if num_devices < 1:
    raise ValueError(f"A mesh needs at least one device, got {num_devices}.")
  if spec in ("", "auto"):
    return {MODEL_AXIS: num_devices}
  sizes: dict[str, int | None] = {}
  for part in spec.split(","):
    name, _, size = part.strip().partition(":")
    name, size = name.strip(), size.strip()
    if name not in AXES:
      raise ValueError(
          f"--mesh={spec!r}: unknown axis {name!r}; the axes are "
          f"{' and '.join(AXES)}, e.g. --mesh=models:4,data:2.")
    if name in sizes:
      raise ValueError(f"--mesh={spec!r}: axis {name!r} is given twice.")
    if size in ("", "*"):
      sizes[name] = None
    elif size.isdigit() and int(size) >= 1:
      sizes[name] = int(size)
    else:
      raise ValueError(
          f"--mesh={spec!r}: size {size!r} of axis {name!r} must be a positive "
          "integer (or left out to take the remaining devices).")
  free = [n for n, s in sizes.items() if s is None]
  if len(free) > 1:
    raise ValueError(
        f"--mesh={spec!r}: only one axis may leave its size out; give the "
        f"size of {free[0]!r}.")
  fixed = math.prod(s for s in sizes.values() if s is not None)
  if free:
    if num_devices % fixed:
      raise ValueError(
          f"--mesh={spec!r}: {num_devices} devices do not divide into the "
          f"fixed axis sizes (product {fixed}); choose sizes dividing "
          f"{num_devices}.")
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(
        f"--mesh={spec!r} covers {fixed} devices but this process has "
        f"{num_devices}; make the sizes multiply to {num_devices} (e.g. "
        f"--mesh=models:{num_devices}), or leave one size out.")
  ordered = {MODEL_AXIS: sizes.get(MODEL_AXIS) or 1}
  if DATA_AXIS in sizes:
    ordered[DATA_AXIS] = sizes[DATA_AXIS]
  return ordered


def make_mesh(spec: str = "", devices: Sequence[Any] | None = None) -> Mesh:
  """Builds a device mesh from a spec string (the ``--mesh`` flag).

  Args:
    spec: see :func:`parse_mesh_spec`.
    devices: devices to lay out; default: this process's local devices of the
      default backend.

  Returns:
    A ``jax.sharding.Mesh`` with axes ``("models",)`` or
    ``("models", "data")``.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  sizes = parse_mesh_spec(spec, len(devices))
  grid = np.array(devices, dtype=object).reshape(tuple(sizes.values()))
  return Mesh(grid, tuple(sizes),
              axis_types=(jax.sharding.AxisType.Auto,) * len(sizes))


def set_default_mesh(mesh: Mesh | str | None) -> Mesh | None:
  """Installs the mesh used by the ``shard`` strategy when none is passed.

  Args:
    mesh: a ``Mesh``, a spec string for :func:`make_mesh`, or ``None`` to go
      back to all local devices on ``models``.

  Returns:
    The installed mesh (``None`` after a reset).
  """
  global _default_mesh
  _default_mesh = make_mesh(mesh) if isinstance(mesh, str) else mesh
  return _default_mesh


def default_mesh() -> Mesh:
  """The installed mesh, else all local devices on the ``models`` axis."""
  if _default_mesh is not None:
    return _default_mesh
  return make_mesh("")


def axis_size(mesh: Mesh, axis_name: str) -> int:
  """Size of a mesh axis; 1 if the mesh does not have it."""
  return int(dict(mesh.shape).get(axis_name, 1))
