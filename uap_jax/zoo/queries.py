"""What the attacker queries and what the victim's API answers.

The victim's probability API or its label-only API (:func:`label_only_api`),
the attacker's augmented copies of its images (:func:`augmented_queries`)
and, for ``extract_adv``, PGD examples of its own substitute
(:func:`substitute_adversarials`, the PGD of :func:`uap_jax.attacks.pgd_steps`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uap_jax import attacks
from uap_jax.runtime import engine
from uap_jax.runtime import stack as stack_lib
from uap_jax.zoo.plan import EXTRACT_ADV_PGD_STEPS

PyTree = Any


def single_variables(stack: stack_lib.Stack, i: int = 0) -> tuple[PyTree, PyTree]:
  """The variables of one model of a stack.

  Args:
    stack: the models.
    i: which model.

  Returns:
    ``(params, rest)`` of model ``i`` without the model axis.
  """
  return jax.tree.map(lambda a: a[i], stack.variables)


@functools.lru_cache(maxsize=None)
def label_only_api(graphdef) -> stack_lib.LogitsFn:
  """A label-only API over one model: ``(variables, x) -> one-hot top-1``.

  Extraction through it sees the victim's top-1 label and nothing else.
  Cached per graphdef so jitted callers compile once.

  Args:
    graphdef: the victim's module structure.

  Returns:
    ``answer(variables, x) -> (N, C)`` one-hot float labels.
  """
  logits_fn = stack_lib.eval_logits_fn(graphdef)

  def answer(variables, x):
    logits = logits_fn(variables, x)
    return jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1])
  return answer


def augmented_queries(x: np.ndarray, copies: int, rng: np.random.Generator, *,
                      flip: bool) -> np.ndarray:
  """Random translations (and flips) of the attacker's images.

  Translations shift by up to an eighth of the image size (reflect-padded);
  flips only where mirror images are natural (``flip``: colour photographs,
  not digits).

  Args:
    x: uint8 ``(N, H, W, C)`` images.
    copies: augmented copies per image.
    rng: numpy generator (seeded by the caller).
    flip: also mirror half of the copies horizontally.

  Returns:
    uint8 ``(copies * N, H, W, C)``, copy ``j`` of image ``i`` at ``j * N + i``.
  """
  n, h, w, _ = x.shape
  shift = min(h, w) // 8
  if copies == 0 or n == 0:
    return x[:0]
  padded = np.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
  out = np.empty((copies * n,) + x.shape[1:], x.dtype)
  for j in range(copies):
    offsets = rng.integers(0, 2 * shift + 1, (n, 2))
    mirror = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    for i in range(n):
      img = padded[i, offsets[i, 0]:offsets[i, 0] + h, offsets[i, 1]:offsets[i, 1] + w]
      out[j * n + i] = img[:, ::-1] if mirror[i] else img
  return out


def substitute_pgd(logits_fn: stack_lib.LogitsFn, variables: PyTree, key: jax.Array,
                   x: jax.Array, eps: jax.Array) -> jax.Array:
  """The attacker's attack on ONE substitute: untargeted L-inf PGD.

  :func:`uap_jax.attacks.pgd_steps` (``image`` iterate, random start) of
  ``EXTRACT_ADV_PGD_STEPS`` steps of ``2.5 eps / steps``, raising the summed
  cross-entropy of the substitute's own top-1 on ``x``.

  Args:
    logits_fn: the substitute's ``(variables, x) -> logits``.
    variables: its variables.
    key: PRNG key of the random start.
    x: ``(N, H, W, C)`` float images in [0, 1].
    eps: L-inf radius in pixel units of [0, 1].

  Returns:
    ``(N, H, W, C)`` float adversarial images.
  """
  y = jnp.argmax(logits_fn(variables, x), -1)

  def loss(xa):
    logp = jax.nn.log_softmax(logits_fn(variables, xa))
    return -jnp.sum(jnp.take_along_axis(logp, y[:, None], -1))

  step_size = 2.5 * eps / EXTRACT_ADV_PGD_STEPS
  return attacks.pgd_steps(loss, x, key, eps, step_size, EXTRACT_ADV_PGD_STEPS,
                           iterate="image")


@functools.lru_cache(maxsize=None)
def _substitute_pgd_over_models(graphdef, strategy: str):
  logits_fn = stack_lib.eval_logits_fn(graphdef)
  one = functools.partial(substitute_pgd, logits_fn)
  return engine.over_models(one, strategy, in_axes=(0, 0, None, None))


def substitute_adversarials(stack: stack_lib.Stack, x: np.ndarray, eps: float,
                            key: jax.Array, *, batch_size: int = 500,
                            strategy: str = "auto") -> np.ndarray:
  """PGD examples of each model of a stack around the same images.

  Args:
    stack: the attacker's substitutes.
    x: uint8 ``(N, H, W, C)`` query images.
    eps: L-inf radius in pixel units of [0, 1].
    key: PRNG key of the random starts: model ``i``'s batch ``b`` uses
      ``fold_in(split(key, K)[i], b)``.
    batch_size: images per compiled call.
    strategy: model-axis strategy.

  Returns:
    uint8 ``(K, N, H, W, C)``: the examples as images an API would accept.
  """
  fn = _substitute_pgd_over_models(stack.graphdef, engine.resolve(strategy))
  keys = jax.random.split(key, stack.size)
  batch_size = min(batch_size, len(x))
  outs = []
  for b, start in enumerate(range(0, len(x), batch_size)):
    xb = x[start:start + batch_size]
    n = len(xb)
    # One compiled shape: the last batch is padded with copies, then cut.
    xb = np.concatenate([xb, np.repeat(xb[:1], batch_size - n, axis=0)])
    step_keys = jnp.stack([jax.random.fold_in(k, b) for k in keys])
    out = fn(stack.variables, step_keys, stack_lib.to_float(xb), jnp.float32(eps))
    outs.append(np.asarray(out)[:, :n])
  return np.round(np.concatenate(outs, axis=1) * 255.0).astype(np.uint8)
