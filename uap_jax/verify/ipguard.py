"""IPGuard (Cao, Jia and Gong, AsiaCCS 2021): points near the victim's decision boundary.

A second baseline beside SAC. IPGuard fingerprints a classifier by data
points on its decision boundary: starting from a training image, gradient
descent moves it until two classes, i (the victim's answer on the image) and
j (a random other one), tie at the top by a margin ``k`` over every other
class. A copy keeps the victim's boundary, so it answers those points as the
victim does; an independent model, whose boundary lies elsewhere, does so
less often. The score of a model is its **matching rate**: the share of the
points on which its top-1 equals the victim's (the paper's test is a
threshold on it; here it is tested like every one-number reference, against
the calibration independents).

:func:`boundary_points` is jit-compiled, a ``lax.fori_loop`` of signed
gradient steps with an explicit PRNG key (which picks the j's).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# The paper's margin k over the other classes, in logits, and its steps.
MARGIN = 0.5
STEPS = 100
STEP_SIZE = 0.01


def boundary_loss(logits: jax.Array, i: jax.Array, j: jax.Array, margin: float) -> jax.Array:
  """IPGuard's loss for one image: classes i and j tied, above the rest by ``margin``.

  Args:
    logits: ``(C,)``.
    i, j: the two classes, i != j.
    margin: k.

  Returns:
    ``relu(max_{t not in {i, j}} z_t - min(z_i, z_j) + k) + |z_i - z_j|``.
  """
  classes = jnp.arange(logits.shape[-1])
  others = jnp.where((classes == i) | (classes == j), -jnp.inf, logits)
  return (jax.nn.relu(others.max() - jnp.minimum(logits[i], logits[j]) + margin)
          + jnp.abs(logits[i] - logits[j]))


@functools.partial(jax.jit, static_argnames=("logits_fn", "steps"))
def boundary_points(logits_fn, variables, x: jax.Array, key: jax.Array, *,
                    steps: int = STEPS, step_size: float = STEP_SIZE,
                    margin: float = MARGIN) -> jax.Array:
  """Points near the decision boundary of ONE model, from seed images.

  Args:
    logits_fn: ``(variables, x) -> (N, C)`` logits of the model.
    variables: its variables (no model axis).
    x: ``(N, H, W, C)`` float seed images in [0, 1].
    key: PRNG key (picks each image's second class j).
    steps: signed-gradient steps.
    step_size: each step's size in pixel units of [0, 1].
    margin: k of :func:`boundary_loss`.

  Returns:
    ``(N, H, W, C)`` float32 points in [0, 1].
  """
  logits = logits_fn(variables, x)
  num_classes = logits.shape[-1]
  i = jnp.argmax(logits, -1)
  j = (i + jax.random.randint(key, i.shape, 1, num_classes)) % num_classes

  def total_loss(points):
    z = logits_fn(variables, points)
    return jnp.sum(jax.vmap(boundary_loss, in_axes=(0, 0, 0, None))(z, i, j, margin))

  def step(_, points):
    grad = jax.grad(total_loss)(points)
    return jnp.clip(points - step_size * jnp.sign(grad), 0.0, 1.0)

  return jax.lax.fori_loop(0, steps, step, x.astype(jnp.float32))


def matching_rate(suspect_logits: np.ndarray, victim_logits: np.ndarray) -> np.ndarray:
  """The share of points on which each model's top-1 equals the victim's.

  Args:
    suspect_logits: ``(M, N, C)`` outputs of M models on the points.
    victim_logits: ``(N, C)`` the victim's.

  Returns:
    ``(M,)`` rates in [0, 1].
  """
  suspect_logits, victim_logits = np.asarray(suspect_logits), np.asarray(victim_logits)
  if suspect_logits.shape[1:] != victim_logits.shape:
    raise ValueError(f"Suspect outputs {suspect_logits.shape} do not match the victim's "
                     f"{victim_logits.shape} (M, N, C against N, C).")
  return (suspect_logits.argmax(-1) == victim_logits.argmax(-1)[None]).mean(1)
