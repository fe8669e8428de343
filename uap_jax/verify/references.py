"""Encoder-free references, scored on the same suspects as the encoder.

Per view (``(M, V)`` scores, tested like the encoder's similarities):

* ``raw_cosine`` / ``raw_cosine_clean_only``: cosine of each raw fingerprint
  view (or of its clean half) with the victim's mean view;
* ``agreement_clean`` / ``agreement_uap``: top-1 agreement with the victim on
  the clean points and on the points plus the victim's UAP(s).

One number per model (tested by the one-view ``model`` test,
:func:`uap_jax.verify.summary.evaluate_scores`):

* ``sac_m``: correlation matrix of softmax outputs on CutMix-ed victim
  training images, -L1 distance to the victim's (SAC-m, :mod:`.sac`);
* ``sac_w``: the same on victim training images the victim misclassifies
  (SAC-w);
* ``error_agreement``: on (up to :data:`ERROR_SAMPLES`) such images, how
  often a model repeats the victim's top-1 (its mistakes);
* ``ipguard``: IPGuard's matching rate on points near the victim's decision
  boundary grown from :data:`IPGUARD_SAMPLES` victim training images
  (:mod:`.ipguard`).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from uap_jax.fingerprint import layout
from uap_jax.runtime import stack as stack_lib
from uap_jax.verify import ipguard
from uap_jax.verify import sac
from uap_jax.verify import similarity
from uap_jax.verify import summary

# SAC-m reference: CutMix-ed inputs from the victim's training part. SAC's
# paper uses on the order of 100 samples; the matrix costs N^2 only.
SAC_SAMPLES = sac.DEFAULT_NUM_SAMPLES
# Misclassified victim training images for error_agreement (more samples
# make the agreement fraction less noisy; SAC-w uses the first SAC_SAMPLES).
ERROR_SAMPLES = 500
# Seed images of IPGuard's boundary points (the paper uses 100).
IPGUARD_SAMPLES = 100
# Folded into the run's seed for the sample references' inputs, so that they
# draw keys of their own.
SAMPLE_KEY = 4242


def raw_similarities(fps: np.ndarray, victim: int, clean_only: bool = False,
                     num_uaps: int = 1, num_classes: int | None = None) -> np.ndarray:
  """Encoder-free score: cosine of each raw view with the victim's mean view.

  Args:
    fps: ``(M, V, D)`` fingerprints.
    victim: the victim's index in ``fps``.
    clean_only: keep only the clean outputs of every view.
    num_uaps: U of the fingerprints (for ``clean_only``).
    num_classes: C (for ``clean_only``).

  Returns:
    ``(M, V)`` cosines.
  """
  if clean_only:
    fps = layout.clean_only(fps, num_uaps, num_classes)
  return similarity.raw_cosine(fps, fps[victim])


def agreement_scores(fps: np.ndarray, victim: int, num_uaps: int,
                     num_classes: int) -> dict[str, np.ndarray]:
  """Encoder-free per-view top-1 agreement with the victim, ``(M, V)`` each.

  Args:
    fps: ``(M, V, D)`` fingerprints.
    victim: the victim's index in ``fps``.
    num_uaps: U of the fingerprints.
    num_classes: C.

  Returns:
    ``agreement_clean``: fraction of a view's K points where the model's
    top-1 equals the victim's on the clean point; ``agreement_uap``: the same
    on the points plus the victim's UAP(s) (the paper's premise: a copy
    follows the victim where the victim's UAP sends it). Absent without a UAP.
  """
  top1 = layout.top1(fps, num_uaps, num_classes)  # (M, V, K, 1+U)
  # View j holds the same images for every model: compare point by point.
  same = top1 == top1[victim][None]
  out = {"agreement_clean": same[..., 0].mean(-1)}
  if num_uaps:
    out["agreement_uap"] = same[..., 1:].mean((-2, -1))
  return out


def view_references(fps: np.ndarray, meta: Sequence[dict], victim: int, split: dict,
                    num_uaps: int, num_classes: int, **test) -> dict[str, dict]:
  """The per-view references, each tested like the encoder's similarities.

  Args:
    fps: ``(M, V, D)`` fingerprints of every model.
    meta: per model its metadata (name, family, kind).
    victim: the victim's index.
    split: the model split (``eval``, ``calib``).
    num_uaps: U of the fingerprints.
    num_classes: C.
    **test: ``num_views``, ``method``, ``alpha`` of the test.

  Returns:
    Per reference its :func:`uap_jax.verify.summary.brief`.
  """
  scores = {name: raw_similarities(fps, victim, clean_only, num_uaps, num_classes)
            for name, clean_only in (("raw_cosine", False), ("raw_cosine_clean_only", True))}
  scores.update(agreement_scores(fps, victim, num_uaps, num_classes))
  return {name: summary.brief(summary.evaluate_split(s, meta, split["eval"], split["calib"],
                                                     **test))
          for name, s in scores.items()}


def sample_scores(stacks: Sequence[stack_lib.Stack], victim: int, images: np.ndarray,
                  labels: np.ndarray, key: jax.Array, strategy: str = "auto"
                  ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
  """The one-number-per-model scores of every model of ``stacks``.

  Args:
    stacks: the victim's stack first (its first model is the victim), then
      the zoo.
    victim: the victim's index among all models of ``stacks``.
    images: ``(P, H, W, C)`` the victim's training images.
    labels: ``(P,)`` their labels.
    key: PRNG key of the CutMix inputs and of the misclassified choice.
    strategy: model-axis strategy.

  Returns:
    ``({name: (M,) scores}, {name: samples used})`` for ``sac_m``, ``sac_w``,
    ``error_agreement`` and ``ipguard``.
  """
  x_mix = np.asarray(sac.cutmix_inputs(images, SAC_SAMPLES, jax.random.fold_in(key, 0)))
  victim_logits = stack_lib.predict(stacks[0], images, strategy=strategy)[0]
  wrong = sac.misclassified_indices(labels, victim_logits, ERROR_SAMPLES,
                                    jax.random.fold_in(key, 1))
  x_wrong = np.asarray(stack_lib.to_float(images[wrong]))
  seeds = jax.random.choice(jax.random.fold_in(key, 2), len(images),
                            (min(IPGUARD_SAMPLES, len(images)),), replace=False)
  first = jax.tree.map(lambda a: a[0], stacks[0].variables)
  x_edge = np.asarray(ipguard.boundary_points(
      stacks[0].logits_fn, first, stack_lib.to_float(images[np.asarray(seeds)]),
      jax.random.fold_in(key, 3)))
  logits = np.concatenate([stack_lib.predict(s, np.concatenate([x_mix, x_wrong, x_edge]),
                                             strategy=strategy) for s in stacks])
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  n_mix, n_w = len(x_mix), min(SAC_SAMPLES, len(wrong))
  mix, err = slice(0, n_mix), slice(n_mix, n_mix + n_w)
  wrong_part, edge = slice(n_mix, n_mix + len(wrong)), slice(n_mix + len(wrong), None)
  scores = {
      "sac_m": sac.scores_from_outputs(probs[:, mix], probs[victim, mix]),
      "sac_w": sac.scores_from_outputs(probs[:, err], probs[victim, err]),
      "error_agreement": sac.error_agreement(logits[:, wrong_part], logits[victim, wrong_part]),
      "ipguard": ipguard.matching_rate(logits[:, edge], logits[victim, edge]),
  }
  return scores, {"sac_m": n_mix, "sac_w": n_w, "error_agreement": len(wrong),
                  "ipguard": len(x_edge)}


_INPUTS = {"sac_m": "cutmix", "sac_w": "victim-misclassified training images",
           "error_agreement": "victim-misclassified training images",
           "ipguard": "points near the victim's decision boundary"}
_SCORE = {"sac_m": "-L1 distance of cosine correlation matrices",
          "sac_w": "-L1 distance of cosine correlation matrices",
          "error_agreement": "top-1 agreement", "ipguard": "matching rate (top-1)"}


def sample_references(stacks: Sequence[stack_lib.Stack], meta: Sequence[dict],
                      victim: int, split: dict, images: np.ndarray, labels: np.ndarray,
                      *, seed: int, alpha: float, strategy: str = "auto"
                      ) -> dict[str, dict[str, Any]]:
  """SAC-style one-number-per-model references, evaluated like the others.

  Every model of ``meta`` (the victim and the zoo, in fingerprint order) is
  scored; the evaluation suspects are ``split["eval"]`` and the reference
  the calibration independents ``split["calib"]``.

  Args:
    stacks: the victim's stack, then the zoo's, in the order of ``meta``.
    meta: per model its metadata (name, family, kind).
    victim: the victim's index.
    split: the model split (``eval``, ``calib``).
    images: ``(P, H, W, C)`` the victim's training images.
    labels: ``(P,)`` their labels.
    seed: the run's seed (the inputs' keys derive from it).
    alpha: accusation level.
    strategy: model-axis strategy.

  Returns:
    Per reference, :func:`uap_jax.verify.summary.evaluate_scores`'s dict with
    ``samples``, ``inputs`` and ``score`` added.
  """
  names = [m["name"] for s in stacks for m in s.meta]
  if names != [m["name"] for m in meta]:
    raise ValueError(
        "The zoo's models differ from the fingerprinted ones; rerun the "
        "fingerprint stage (--stages=fingerprint,encoder,verify --overwrite).")
  key = jax.random.fold_in(jax.random.key(seed), SAMPLE_KEY)
  scores, samples = sample_scores(stacks, victim, images, labels, key, strategy)
  eval_idx, calib_idx = split["eval"], split["calib"]
  out = {}
  for name, score in scores.items():
    result = summary.evaluate_scores(
        score[eval_idx], [meta[i]["family"] for i in eval_idx],
        [meta[i]["kind"] for i in eval_idx], score[calib_idx],
        names=[meta[i]["name"] for i in eval_idx], alpha=alpha)
    result.update(samples=samples[name], inputs=_INPUTS[name], score=_SCORE[name])
    out[name] = result
  return out
