"""Who a suspect is compared with, and whether that comparison covers it.

A p-value says how unusual a suspect's score is among reference models; it
is worth what that population is worth. Two rules keep it honest:

* **Fit references only.** A model that failed to learn the task (accuracy
  near chance) is no one's product, yet its outlying score would widen the
  reference spread and with it hide every pirate. References must reach
  :func:`accuracy_floor` on the fingerprint points.
* **Coverage.** A suspect that is a worse classifier than every reference
  model (by more than :data:`COVERAGE_MARGIN`), or whose answers are more
  or less confident than every reference model's and the victim's (by more
  than :data:`CONFIDENCE_MARGIN`), lies outside what the reference
  describes: its verdict is ``inconclusive``, never ``pirated``.

Accuracy here is the top-1 accuracy on the clean fingerprint points, which
every suspect's fingerprint holds (white box or recorded answers alike);
confidence is the mean top-1 probability there (:func:`point_confidence`).
The confidence rule is there because the encoder reads confidence: on the
fresh Fashion-MNIST zoo, independents behind an API that sharpened its
softmax (temperature 0.3, top-1 unchanged) had a mean top-1 probability of
0.96-0.98 against the references' 0.71-0.95, and 7 of 20 were accused
(``experiments/api_evasion.py``, 2026-12-04). An encoder that re-tempers
every model to the victim's confidence (``--enc_confidence``) reads none,
and for it the rule is off, as for the top-1-only ``uap_follow``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from uap_jax.fingerprint import compute
from uap_jax.fingerprint import layout

# A reference must close at least this share of the gap from chance to the
# victim's accuracy on the points.
FIT_SHARE = 0.5
# A suspect below the least accurate reference by more than this is outside
# the reference.
COVERAGE_MARGIN = 0.05
# A suspect whose mean top-1 probability lies outside the references' and
# the victim's range by more than this is outside the reference.
CONFIDENCE_MARGIN = 0.01


def point_accuracy(fps: np.ndarray, labels: np.ndarray, num_uaps: int,
                   num_classes: int) -> np.ndarray:
  """Top-1 accuracy of each model on its clean fingerprint points.

  Args:
    fps: ``(M, V, D)`` fingerprints.
    labels: ``(V, K)`` true labels of the points (view j, point i).
    num_uaps: U of the fingerprints.
    num_classes: C.

  Returns:
    ``(M,)`` accuracies in [0, 1].
  """
  top1 = layout.top1(np.asarray(fps), num_uaps, num_classes)[..., 0]  # (M, V, K)
  labels = np.asarray(labels)
  if labels.shape != top1.shape[1:]:
    raise ValueError(f"Point labels of shape {labels.shape} do not match fingerprints "
                     f"of {top1.shape[1]} views of {top1.shape[2]} points.")
  return (top1 == labels[None]).mean((1, 2))


def point_confidence(fps: np.ndarray, num_uaps: int, num_classes: int) -> np.ndarray:
  """Each model's mean top-1 probability on its clean fingerprint points.

  Args:
    fps: ``(M, V, D)`` fingerprints of probabilities, logits (a softmax is
      taken) or labels (every confidence is 1).
    num_uaps: U of the fingerprints.
    num_classes: C.

  Returns:
    ``(M,)`` in [1 / C, 1].
  """
  clean = layout.split(np.asarray(fps, np.float64), num_uaps, num_classes)[..., 0, :]
  if compute.detect_output_kind(clean) == "logits":
    clean = np.exp(clean - clean.max(-1, keepdims=True))
    clean /= clean.sum(-1, keepdims=True)
  return clean.max(-1).mean((-2, -1))


def accuracy_floor(victim_accuracy: float, num_classes: int) -> float:
  """The least point accuracy of a fit reference model.

  Args:
    victim_accuracy: the victim's accuracy on the points.
    num_classes: C (chance is 1 / C).

  Returns:
    ``chance + FIT_SHARE * (victim_accuracy - chance)``.
  """
  chance = 1.0 / num_classes
  return chance + FIT_SHARE * max(victim_accuracy - chance, 0.0)


@dataclasses.dataclass(frozen=True)
class Reference:
  """The reference population of a verification.

  Attributes:
    index: model indices (into the fingerprints) of the fit references.
    left_out: names of the references left out as unfit.
    accuracy_min: the least point accuracy among ``index``.
    description: JSON-able: how many models of which kinds, architectures
      and recipes, their accuracy range, and what was left out.
    confidence_range: the least and greatest :func:`point_confidence` of
      the fit references and the victim (None: the confidence rule is off).
    confidence: ``(M,)`` every model's point confidence, for the zoo's own
      suspects (None with ``confidence_range``).
  """
  index: list[int]
  left_out: list[str]
  accuracy_min: float
  description: dict
  confidence_range: tuple[float, float] | None = None
  confidence: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

  def covers(self, suspect_accuracy: float, suspect_confidence: float | None = None) -> bool:
    """Whether a suspect of this point accuracy (and confidence) is within the reference."""
    return self.outside(suspect_accuracy, suspect_confidence) is None

  def outside(self, suspect_accuracy: float,
              suspect_confidence: float | None = None) -> str | None:
    """Why a suspect lies outside the reference (``accuracy``, ``confidence``), or None."""
    if suspect_accuracy < self.accuracy_min - COVERAGE_MARGIN:
      return "accuracy"
    if self.confidence_range is not None and suspect_confidence is not None:
      lo, hi = self.confidence_range
      if not lo - CONFIDENCE_MARGIN <= suspect_confidence <= hi + CONFIDENCE_MARGIN:
        return "confidence"
    return None


def reference(calib: Sequence[int], meta: Sequence[dict], accuracy: np.ndarray,
              victim: int, num_classes: int, minimum: int = 3,
              confidence: np.ndarray | None = None) -> Reference:
  """The fit part of the calibration models, described.

  Args:
    calib: the calibration independents.
    meta: per model its metadata (name, kind, arch, recipe).
    accuracy: ``(M,)`` :func:`point_accuracy` of every model.
    victim: the victim's index.
    num_classes: C.
    minimum: the fewest fit references the test needs (3 for the
      model-level tests, 2 for Welch's).
    confidence: ``(M,)`` :func:`point_confidence` of every model: turns the
      confidence rule on.

  Returns:
    The :class:`Reference`.

  Raises:
    ValueError: fewer than ``minimum`` fit references remain.
  """
  floor = accuracy_floor(float(accuracy[victim]), num_classes)
  fit = [int(i) for i in calib if accuracy[i] >= floor]
  left_out = [str(meta[i].get("name")) for i in calib if accuracy[i] < floor]
  if len(fit) < minimum and len(fit) < len(calib):
    raise ValueError(
        f"Only {len(fit)} of {len(calib)} calibration models reach point accuracy "
        f"{floor:.3f} (half way from chance to the victim's): the reference "
        f"needs >= {minimum}. Train the reference bank longer (--zoo_epochs) or "
        "with more models (--reference_per_recipe).")
  if len(fit) < minimum:
    raise ValueError(
        f"The reference holds {len(fit)} calibration model(s) and the test needs "
        f">= {minimum}: add independents (--reference_per_recipe, --zoo_counts).")
  count = lambda key: _counts(meta[i].get(key) for i in fit)
  description = {
      "models": len(fit),
      "kinds": count("kind"), "archs": count("arch"), "recipes": count("recipe"),
      "point_accuracy": [float(accuracy[fit].min()), float(accuracy[fit].max())],
      "accuracy_floor": float(floor),
      "left_out_unfit": left_out,
  }
  confidence_range = None
  if confidence is not None:
    confidence = np.asarray(confidence, np.float64)
    around = confidence[fit + [victim]]
    confidence_range = (float(around.min()), float(around.max()))
    description["point_confidence"] = list(confidence_range)
  return Reference(index=fit, left_out=left_out,
                   accuracy_min=float(accuracy[fit].min()), description=description,
                   confidence_range=confidence_range, confidence=confidence)


def _counts(values) -> dict[str, int]:
  out: dict[str, int] = {}
  for v in values:
    if v is not None:
      out[str(v)] = out.get(str(v), 0) + 1
  return dict(sorted(out.items()))


def statement(verdict: dict[str, Any], ref: Reference) -> str:
  """One sentence that says what the confidence is over.

  Args:
    verdict: a :func:`uap_jax.verify.tests.verify_suspect` dict (with
      ``verdict``, ``p_value``, ``method``).
    ref: the reference it was tested against.

  Returns:
    E.g. "pirated: of 24 reference models (archs lenet5 x8, mlp x8, ...),
    none is expected to come this close (p = 2e-06, model_z)".
  """
  d = ref.description
  archs = ", ".join(f"{a} x{n}" for a, n in d["archs"].items())
  population = f"{d['models']} fit reference models ({archs})"
  v, p, method = verdict["verdict"], verdict["p_value"], verdict["method"]
  if v == "invalid_answers" or p is None:
    return f"{v}: not judged."
  if verdict.get("outside_reference") == "confidence":
    lo, hi = ref.confidence_range
    return (f"inconclusive: the suspect's answers are more or less confident (mean "
            f"top-1 probability {verdict['point_confidence']:.3f}) than those of the "
            f"{population} and the victim ({lo:.3f} to {hi:.3f}), so they do not tell "
            f"how unusual its score is (p = {p:.2g} against them, {method}).")
  if verdict.get("outside_reference"):
    return (f"inconclusive: the suspect's point accuracy "
            f"{verdict['point_accuracy']:.3f} is below every one of the {population} "
            f"(least {ref.accuracy_min:.3f}), so they do not tell how unusual its "
            f"score is (p = {p:.2g} against them, {method}).")
  if v == "pirated":
    return (f"pirated: among {population}, a score this close to the victim's has "
            f"probability {p:.2g} ({method}).")
  return (f"{v}: among {population}, a score at least this close to the victim's "
          f"has probability {p:.2g} ({method}).")


def apply_coverage(verdict: dict[str, Any], suspect_accuracy: float,
                   ref: Reference, suspect_confidence: float | None = None) -> dict[str, Any]:
  """The verdict with the coverage rule applied and the statement added.

  Args:
    verdict: a :func:`uap_jax.verify.tests.verify_suspect` dict.
    suspect_accuracy: the suspect's point accuracy.
    ref: the reference.
    suspect_confidence: the suspect's :func:`point_confidence` (the
      confidence rule applies when the reference has a range).

  Returns:
    A new dict with ``point_accuracy``, ``point_confidence`` (or None),
    ``outside_reference`` (False, or why: ``accuracy``, ``confidence``),
    ``reference_population`` and ``statement``; ``pirated`` becomes
    ``inconclusive`` when the suspect is outside the reference.
  """
  why = ref.outside(suspect_accuracy, suspect_confidence)
  out = dict(verdict, point_accuracy=float(suspect_accuracy),
             point_confidence=(None if suspect_confidence is None
                               else float(suspect_confidence)),
             outside_reference=why or False,
             reference_population=ref.description)
  if out["outside_reference"] and out["verdict"] == "pirated":
    out["verdict"] = "inconclusive"
  out["statement"] = statement(out, ref)
  return out
