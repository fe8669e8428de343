"""A sample-correlation reference fingerprint in the manner of SAC-m.

Guan, Liang, He, "Are You Stealing My Model? Sample Correlation for
Fingerprinting Deep Neural Networks", NeurIPS 2022. SAC-m fingerprints a
model by how its outputs on N CutMix-ed inputs correlate with EACH OTHER,
not by the outputs themselves: a copy of the victim (extracted, fine-tuned,
pruned, ...) inherits the victim's pairwise output correlations, while an
independently trained model, even an accurate one, correlates the samples its
own way. CutMix-ed inputs (two images pasted together) sit off the data
manifold, where models of different lineage disagree most.

Steps, for every model of a stack (all pure, jit-compiled, batched):

1. :func:`cutmix_inputs`: N inputs, each image ``a`` with a random box
   pasted from image ``b`` (box area ``1 - lam``, ``lam ~ U(0, 1)`` as in
   CutMix's Beta(1, 1)), from the victim's own data, seeded by a PRNG key.
2. :func:`model_outputs`: every model's outputs on them, ``(M, N, C)``
   (softmax probabilities by default).
3. :func:`correlation_matrices`: per model the ``(N, N)`` matrix of cosine
   similarities (the SAC paper's choice) or Pearson correlations between the
   output vectors of every pair of samples.
4. :func:`matrix_distance`: distance of each model's matrix to the victim's,
   the mean absolute difference over the N x N entries (SAC's L1 distance
   divided by N^2) or the root mean squared difference (``l2``).
5. Score = ``-distance`` (higher: more likely pirated), one number per
   model. :func:`uap_jax.verify.summary.evaluate_scores` turns the scores of
   evaluation suspects and calibration independents into the same detection
   figures as :func:`uap_jax.verify.summary.evaluate`.

SAC-w (:func:`misclassified_indices`) takes inputs the victim misclassifies
instead of CutMix-ed ones; :func:`error_agreement` is the plainer score on
the same inputs (how often a model repeats the victim's top-1 there).

Since SAC gives ONE number per model (no views), its test is the one-view
case of :mod:`uap_jax.verify`'s ``model`` test
(:func:`uap_jax.verify.tests.score_p_value`): a Gaussian prediction test
against the calibration independents' scores, ``t = (s - mean) / (std *
sqrt(1 + 1 / R))`` with ``R - 1`` degrees of freedom. A suspect is accused
when ``p < alpha`` (this is what "above the (1 - alpha) quantile of the
independents' score distribution" means when that distribution is estimated
from R models). ``accused_above_calib_max`` also counts, distribution-free,
the independents scoring above every calibration independent.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from uap_jax.runtime import stack as stack_lib

METRICS = ("cosine", "pearson")
DISTANCES = ("l1", "l2")
OUTPUTS = ("probs", "logits")
DEFAULT_NUM_SAMPLES = 100


# --------------------------------------------------------------------------
# Inputs.


def cutmix_boxes(key: jax.Array, num_samples: int, height: int,
                 width: int) -> jax.Array:
  """Random CutMix boxes, ``(N, 4)`` int32 rows ``(top, bottom, left, right)``.

  Args:
    key: PRNG key.
    num_samples: N boxes.
    height: image height H.
    width: image width W.

  Returns:
    Half-open boxes ``[top, bottom) x [left, right)`` inside the image; the
    box side ratio is ``sqrt(1 - lam)`` with ``lam ~ U(0, 1)`` and a
    uniform centre (CutMix, Yun et al. 2019), clipped at the borders.
  """
  k_lam, k_y, k_x = jax.random.split(key, 3)
  lam = jax.random.uniform(k_lam, (num_samples,))
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  cy = jax.random.randint(k_y, (num_samples,), 0, height)
  cx = jax.random.randint(k_x, (num_samples,), 0, width)
  top = jnp.clip(cy - cut_h // 2, 0, height)
  bottom = jnp.clip(cy + cut_h // 2, 0, height)
  left = jnp.clip(cx - cut_w // 2, 0, width)
  right = jnp.clip(cx + cut_w // 2, 0, width)
  return jnp.stack([top, bottom, left, right], axis=1)


@jax.jit
def _paste(x_a: jax.Array, x_b: jax.Array, boxes: jax.Array) -> jax.Array:
  rows = jnp.arange(x_a.shape[1])[None, :, None]
  cols = jnp.arange(x_a.shape[2])[None, None, :]
  inside = ((rows >= boxes[:, 0, None, None]) & (rows < boxes[:, 1, None, None])
            & (cols >= boxes[:, 2, None, None]) & (cols < boxes[:, 3, None, None]))
  return jnp.where(inside[..., None], x_b, x_a)


def cutmix(x_a: np.ndarray | jax.Array, x_b: np.ndarray | jax.Array,
           key: jax.Array) -> jax.Array:
  """Pastes a random box of each ``x_b[i]`` into ``x_a[i]``.

  Args:
    x_a: ``(N, H, W, C)`` base images, uint8 or float in [0, 1].
    x_b: ``(N, H, W, C)`` images the boxes come from (same shape).
    key: PRNG key of the boxes.

  Returns:
    ``(N, H, W, C)`` float32 images in [0, 1].
  """
  x_a, x_b = np.asarray(x_a), np.asarray(x_b)
  if x_a.ndim != 4 or x_a.shape != x_b.shape:
    raise ValueError(
        f"x_a and x_b must both be (N, H, W, C) of one shape, got {x_a.shape} "
        f"and {x_b.shape}; pair the images before mixing.")
  boxes = cutmix_boxes(key, x_a.shape[0], x_a.shape[1], x_a.shape[2])
  return _paste(stack_lib.to_float(x_a), stack_lib.to_float(x_b), boxes)


def cutmix_inputs(images: np.ndarray | jax.Array, num_samples: int,
                  key: jax.Array) -> jax.Array:
  """N CutMix-ed inputs from a pool of images (the victim's data).

  Args:
    images: ``(P, H, W, C)`` pool, uint8 or float in [0, 1], P >= 2.
    num_samples: N inputs to make; each mixes two distinct pool images, and
      no image is used twice while ``2 N <= P``.
    key: PRNG key: the pairs and the boxes follow from it.

  Returns:
    ``(N, H, W, C)`` float32 images in [0, 1].
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(
        f"images must be (P, H, W, C), got shape {images.shape}; pass the "
        "victim's training images.")
  if images.shape[0] < 2:
    raise ValueError(
        f"CutMix needs >= 2 images to pair, got {images.shape[0]}.")
  if num_samples < 2:
    raise ValueError(
        f"num_samples must be >= 2 (a correlation matrix needs pairs of "
        f"samples), got {num_samples}.")
  k_pairs, k_boxes = jax.random.split(key)
  pool = images.shape[0]
  order = np.asarray(jax.random.permutation(k_pairs, pool))
  # Without replacement while the pool allows, then cycling through it.
  picks = np.resize(order, 2 * num_samples)
  first, second = picks[0::2], picks[1::2]
  same = first == second
  second[same] = (second[same] + 1) % pool
  return cutmix(images[first], images[second], k_boxes)


def misclassified_indices(labels: np.ndarray, victim_logits: np.ndarray,
                          num_samples: int, key: jax.Array) -> np.ndarray:
  """Indices of (up to) N inputs the victim gets wrong, a seeded choice.

  SAC-w's inputs (Guan et al. 2022): where the victim errs, a copy tends to
  err the same way (it learnt the victim's function, mistakes included)
  while an independent model, even one trained on the same data, errs
  elsewhere.

  Args:
    labels: ``(P,)`` true labels of the pool.
    victim_logits: ``(P, C)`` the victim's outputs on the pool.
    num_samples: N, the most indices to return.
    key: PRNG key of the choice.

  Returns:
    ``(min(N, #wrong),)`` sorted int64 indices into the pool.
  """
  labels = np.asarray(labels)
  victim_logits = np.asarray(victim_logits)
  if victim_logits.ndim != 2 or labels.shape != victim_logits.shape[:1]:
    raise ValueError(
        f"labels must be (P,) and victim_logits (P, C) for the same P, got "
        f"{labels.shape} and {victim_logits.shape}.")
  wrong = np.nonzero(victim_logits.argmax(-1) != labels)[0]
  if wrong.size < 2:
    raise ValueError(
        f"The victim misclassifies only {wrong.size} of {labels.size} inputs; "
        "SAC-w needs >= 2: pass a larger or harder pool (e.g. held-out data).")
  order = np.asarray(jax.random.permutation(key, wrong.size))
  return np.sort(wrong[order[:num_samples]]).astype(np.int64)


def error_agreement(suspect_logits: np.ndarray, victim_logits: np.ndarray) -> np.ndarray:
  """Fraction of inputs where each model's top-1 equals the victim's.

  Args:
    suspect_logits: ``(M, N, C)`` outputs of M models.
    victim_logits: ``(N, C)`` the victim's outputs on the same inputs.

  Returns:
    ``(M,)`` float64 in [0, 1]. On inputs the victim misclassifies this
    counts inherited mistakes.
  """
  suspect_logits = np.asarray(suspect_logits)
  victim_logits = np.asarray(victim_logits)
  if suspect_logits.ndim != 3 or suspect_logits.shape[1:] != victim_logits.shape:
    raise ValueError(
        f"suspect_logits must be (M, N, C) with (N, C) = victim_logits.shape, "
        f"got {suspect_logits.shape} and {victim_logits.shape}.")
  return (suspect_logits.argmax(-1) == victim_logits.argmax(-1)[None]).mean(-1).astype(
      np.float64)


# --------------------------------------------------------------------------
# Outputs and correlation matrices.


def model_outputs(stack: stack_lib.Stack, x: np.ndarray | jax.Array, *,
                  output: str = "probs", strategy: str = "auto",
                  batch_size: int = 500) -> np.ndarray:
  """Outputs of every model of a stack, ``(M, N, C)`` (see stack.predict)."""
  if output not in OUTPUTS:
    raise ValueError(f"Unknown output {output!r}; choose one of {', '.join(OUTPUTS)}.")
  return stack_lib.predict(stack, np.asarray(x), batch_size=batch_size,
                           strategy=strategy, output=output)


@functools.partial(jax.jit, static_argnames=("metric",))
def _correlation(outputs: jax.Array, metric: str) -> jax.Array:
  if metric == "pearson":
    outputs = outputs - outputs.mean(-1, keepdims=True)
  norm = jnp.linalg.norm(outputs, axis=-1, keepdims=True)
  unit = outputs / jnp.maximum(norm, 1e-12)
  return jnp.einsum("...ic,...jc->...ij", unit, unit)


def correlation_matrices(outputs: np.ndarray | jax.Array,
                         metric: str = "cosine") -> jax.Array:
  """Pairwise sample correlations of each model's outputs.

  Args:
    outputs: ``(..., N, C)`` outputs of one or more models on N samples.
    metric: ``cosine`` (cosine similarity of the output vectors, SAC's
      choice) or ``pearson`` (the same after centring each vector over its
      C entries).

  Returns:
    ``(..., N, N)`` float32 symmetric matrices with entries in [-1, 1] (1 on
    the diagonal except for all-zero / constant output vectors, which
    correlate 0 with everything).
  """
  if metric not in METRICS:
    raise ValueError(f"Unknown correlation metric {metric!r}; choose one of "
                     f"{', '.join(METRICS)}.")
  outputs = jnp.asarray(outputs, jnp.float32)
  if outputs.ndim < 2 or outputs.shape[-2] < 2 or outputs.shape[-1] < 2:
    raise ValueError(
        f"outputs must be (..., N, C) with N >= 2 samples and C >= 2 classes, "
        f"got shape {outputs.shape}.")
  if not bool(jnp.all(jnp.isfinite(outputs))):
    raise ValueError("outputs contain NaN or inf; check the models.")
  return _correlation(outputs, metric)


def matrix_distance(matrices: np.ndarray | jax.Array,
                    reference: np.ndarray | jax.Array,
                    distance: str = "l1") -> jax.Array:
  """Distance of each correlation matrix to a reference (the victim's).

  Args:
    matrices: ``(..., N, N)`` correlation matrices.
    reference: ``(N, N)`` the victim's matrix.
    distance: ``l1`` (mean absolute difference over the N^2 entries: SAC's
      L1 norm divided by N^2) or ``l2`` (root mean squared difference).

  Returns:
    ``(...)`` non-negative distances; 0 for a matrix equal to the reference.
  """
  if distance not in DISTANCES:
    raise ValueError(f"Unknown distance {distance!r}; choose one of "
                     f"{', '.join(DISTANCES)}.")
  matrices = jnp.asarray(matrices, jnp.float32)
  reference = jnp.asarray(reference, jnp.float32)
  if reference.ndim != 2 or reference.shape[0] != reference.shape[1]:
    raise ValueError(f"reference must be one (N, N) matrix, got {reference.shape}.")
  if matrices.shape[-2:] != reference.shape:
    raise ValueError(
        f"matrices {matrices.shape} and reference {reference.shape} disagree "
        "on N: compute them on the same samples.")
  diff = matrices - reference
  if distance == "l1":
    return jnp.abs(diff).mean((-2, -1))
  return jnp.sqrt(jnp.square(diff).mean((-2, -1)))


def scores(stacks: Sequence[stack_lib.Stack], victim: stack_lib.Stack,
           x: np.ndarray | jax.Array, *, output: str = "probs",
           metric: str = "cosine", distance: str = "l1",
           strategy: str = "auto") -> np.ndarray:
  """SAC-m scores of every model of several stacks, in stack order.

  Args:
    stacks: stacks of suspects (any architectures, same classes).
    victim: the victim (a stack of one model; its first model is used).
    x: ``(N, H, W, C)`` the SAC inputs (:func:`cutmix_inputs`).
    output: ``probs`` or ``logits``.
    metric: correlation metric (:func:`correlation_matrices`).
    distance: matrix distance (:func:`matrix_distance`).
    strategy: model-axis strategy.

  Returns:
    ``(M,)`` float64 scores ``-distance`` (higher: closer to the victim), M
    the total number of models.
  """
  num_classes = victim.num_classes
  for s in stacks:
    if s.num_classes != num_classes:
      raise ValueError(
          f"A {s.arch} stack has {s.num_classes} classes but the victim has "
          f"{num_classes}: they do not answer the same task.")
  victim_outputs = model_outputs(victim, x, output=output, strategy=strategy)[0]
  out = [scores_from_outputs(model_outputs(s, x, output=output, strategy=strategy),
                             victim_outputs, metric=metric, distance=distance)
         for s in stacks]
  return np.concatenate(out) if out else np.zeros((0,), np.float64)


def scores_from_outputs(outputs: np.ndarray | jax.Array,
                        victim_outputs: np.ndarray | jax.Array, *,
                        metric: str = "cosine", distance: str = "l1") -> np.ndarray:
  """SAC scores from recorded outputs (e.g. of a black-box suspect).

  Args:
    outputs: ``(M, N, C)`` outputs of M models on the N SAC inputs.
    victim_outputs: ``(N, C)`` the victim's outputs on them.
    metric: correlation metric (:func:`correlation_matrices`).
    distance: matrix distance (:func:`matrix_distance`).

  Returns:
    ``(M,)`` float64 scores ``-distance``.
  """
  ref = correlation_matrices(victim_outputs, metric)
  mats = correlation_matrices(outputs, metric)
  return -np.asarray(matrix_distance(mats, ref, distance), np.float64)
