"""The verification of a whole zoo, and of suspects from outside it.

:func:`evaluate_zoo` judges every model of the zoo's evaluation part under
two protocols, the saved random split and leave-kind-out (for each kind, an
encoder and a calibration set that never saw it), and adds the other tests
and the encoder-free references on the same suspects, and the same
protocols once more for the label judge: what ``verify.json`` holds.
:func:`judge` gives the verdicts on suspects outside the zoo.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from absl import logging
import numpy as np

from uap_jax.fingerprint import layout
from uap_jax.runtime import distributed
from uap_jax.verify import crossfit
from uap_jax.verify import encoder as encoder_lib
from uap_jax.verify import metrics
from uap_jax.verify import population
from uap_jax.verify import references
from uap_jax.verify import similarity
from uap_jax.verify import splits
from uap_jax.verify import summary
from uap_jax.verify import tests


@dataclasses.dataclass(frozen=True)
class Settings:
  """How suspects are judged and how the leave-kind-out folds are cut.

  Attributes:
    method: the test (:data:`uap_jax.verify.tests.METHODS`).
    score: the per-view score tested (:data:`uap_jax.verify.similarity.SCORES`).
    num_views: views tested per suspect.
    alpha: accusation level.
    seed: split seed.
    train_frac: fraction that trains the encoder.
    calib_frac: fraction of the independents that calibrates.
  """
  method: str = "model_z"
  score: str = "encoder"
  num_views: int = 20
  alpha: float = 0.01
  seed: int = 0
  train_frac: float = 0.5
  calib_frac: float = 0.25

  @property
  def min_reference(self) -> int:
    """The fewest reference models the test takes."""
    return 2 if self.method == "welch" else 3

  def test(self, method: str | None = None) -> dict[str, Any]:
    """Keyword arguments of :func:`uap_jax.verify.summary.evaluate`."""
    return dict(num_views=self.num_views, method=method or self.method, alpha=self.alpha)


def other_tests(sims: np.ndarray, meta: Sequence[dict], split: dict,
                settings: Settings) -> dict[str, dict]:
  """Every test but ``settings.method`` on the same similarities.

  Args:
    sims: ``(M, V)`` similarities of every model.
    meta: per model its metadata.
    split: the model split.
    settings: the run's settings.

  Returns:
    Per test its :func:`~uap_jax.verify.summary.brief`, or ``{"error": ...}``
    where the test cannot run (e.g. too few calibration models).
  """
  out = {}
  for t in tests.METHODS:
    if t == settings.method:
      continue
    try:
      out[t] = summary.brief(summary.evaluate_split(sims, meta, split["eval"],
                                                    split["calib"], **settings.test(t)))
    except ValueError as e:
      out[t] = {"error": str(e)}
  return out


def _fold_row(result: dict, fold: dict) -> dict:
  kind, family = fold["held_out_kind"], fold["held_out_family"]
  held = [r for r in result["suspects"] if r["kind"] == kind]
  return dict(summary.brief(result), family=family,
              auc_held_out=result["auc"].get(kind) if family == "piracy"
              else result["auc"].get("all"),
              held_out_verdicts={v: sum(r["verdict"] == v for r in held)
                                 for v in summary.VERDICTS},
              similarity_mean=float(np.mean([r["similarity_mean"] for r in held])))


def leave_kind_out(fps: np.ndarray, meta: Sequence[dict], victim: int,
                   encoder_config: dict, settings: Settings, *,
                   point_accuracy: np.ndarray, num_classes: int,
                   sims: np.ndarray | None = None,
                   crossfit_by: str = "none",
                   point_confidence: np.ndarray | None = None) -> dict[str, dict]:
  """Leave-kind-out folds, each with encoders trained on its own part.

  Args:
    fps: ``(M, V, D)`` fingerprints of every model.
    meta: per model its metadata.
    victim: the victim's index.
    encoder_config: the saved encoders' config (each fold's encoders have it).
    settings: the run's settings.
    point_accuracy: ``(M,)`` every model's accuracy on the points (the
      reference's fitness and coverage, :mod:`uap_jax.verify.population`).
    num_classes: C.
    sims: ``(M, V)`` scores of an encoder-free ``settings.score``: no
      fold trains an encoder then, since nothing is learned from the zoo.
    crossfit_by: how each fold's encoders are cross-fitted over the bank
      (:mod:`uap_jax.verify.crossfit`).
    point_confidence: ``(M,)`` every model's point confidence (the
      confidence rule of the coverage; None: off).

  Returns:
    Per held-out kind its brief with ``family``, ``auc_held_out``,
    ``held_out_verdicts`` and ``similarity_mean``, or ``family`` and
    ``error`` where the fold cannot be tested.
  """
  folds = {}
  fold_list = list(splits.leave_kind_out_splits(meta, seed=settings.seed,
                                                train_frac=settings.train_frac,
                                                calib_frac=settings.calib_frac))
  learned = settings.score == "encoder" or sims is None
  bank = splits.bank_models(meta)
  all_sims = (_learned_similarities(fps, meta, victim,
                                    [(fold["train"], bank) for fold in fold_list],
                                    encoder_config, crossfit_by)
              if learned else None)
  for f, fold in enumerate(fold_list):
    kind = fold["held_out_kind"]
    logging.info("Leave-kind-out: %s (%d train, %d calib, %d eval)", kind,
                 len(fold["train"]), len(fold["calib"]), len(fold["eval"]))
    fold_sims = all_sims[f] if learned else sims
    try:
      ref = population.reference(fold["calib"], meta, point_accuracy, victim, num_classes,
                                   minimum=settings.min_reference,
                                   confidence=point_confidence)
      result = summary.evaluate_split(fold_sims, meta, fold["eval"], ref.index,
                                      point_accuracy, ref, **settings.test())
    except ValueError as e:
      # E.g. holding out an independent kind leaves fewer calibration models
      # than the model-level tests need: that fold is reported, not fatal.
      logging.warning("Leave-kind-out fold %s: %s", kind, e)
      folds[kind] = {"family": fold["held_out_family"], "error": str(e)}
      continue
    folds[kind] = _fold_row(result, fold)
  return folds


def _learned_similarities(fps: np.ndarray, meta: Sequence[dict], victim: int,
                          parts: Sequence[tuple[Sequence[int], Sequence[int]]],
                          encoder_config: dict, crossfit_by: str) -> np.ndarray:
  """``(F, M, V)`` scores of each fold's own encoders.

  Fold f's encoders train on its zoo part ``parts[f][0]``, cross-fitted over
  its bank part ``parts[f][1]``; a model in neither is scored by encoders
  that never saw it. Training the encoders is most of a fold's cost: in a
  multi-process run each process trains a share of the folds' encoders and
  every process gets every fold's scores (an all-gather of F x M x V numbers).
  """
  mine = distributed.share_indices(len(parts), mode="strided")
  shape = (0,) + tuple(fps.shape[:2])
  rows = range(fps.shape[0])
  local = np.stack([crossfit.train(fps, meta, parts[f][0], parts[f][1], encoder_config,
                                   crossfit_by, verbose=False).similarities(
                                       fps, fps[victim], rows)
                    for f in mine]) if len(mine) else np.zeros(shape, np.float32)
  return distributed.gather_to_process0(local, mine, len(parts), everywhere=True)


def _held_out_groups(meta: Sequence[dict], bank: Sequence[int]) -> list[tuple[str, str]]:
  return [(by, group) for by in ("arch", "recipe")
          for group in sorted({str(meta[i].get(by)) for i in bank})]


def reference_held_out(sims: np.ndarray, meta: Sequence[dict], victim: int,
                       calib: Sequence[int], point_accuracy: np.ndarray,
                       num_classes: int, settings: Settings, *,
                       fps: np.ndarray | None = None, train: Sequence[int] = (),
                       encoder_config: dict | None = None,
                       crossfit_by: str = "none",
                       point_confidence: np.ndarray | None = None) -> dict[str, dict]:
  """The bank's models judged as suspects, one group left out at a time.

  For each architecture (then each recipe) of the reference bank, its bank
  models are judged against the calibration models of every OTHER
  architecture (recipe): the open-world case of an independent built in a
  way the reference never saw. Encoders cross-fitted over the bank
  (``crossfit_by`` not ``none``) are retrained per group without it, so
  that none of the group's models taught the encoders that score it.

  Args:
    sims: ``(M, V)`` scores of every model (used as they are unless the
      encoders are retrained).
    meta: per model its metadata (``kind``, ``arch``, ``recipe``).
    victim: the victim's index.
    calib: the calibration models (bank included).
    point_accuracy: ``(M,)`` accuracies on the points.
    num_classes: C.
    settings: the run's settings.
    fps: ``(M, V, D)`` fingerprints (retrained encoders only).
    train: the zoo models that train the encoders (retrained encoders only).
    encoder_config: the encoders' config (retrained encoders only).
    crossfit_by: the encoders' cross-fitting over the bank (``--enc_crossfit``);
      ``none`` (or an encoder-free score): the bank never trained them.
    point_confidence: ``(M,)`` every model's point confidence (the
      confidence rule of the coverage; None: off).

  Returns:
    ``{"arch": ..., "recipe": ...}``, each with per group the models held
    out, how many were accused and the least p-value, and in all
    ``held_out`` / ``accused``.
  """
  bank = splits.bank_models(meta)
  groups_of = _held_out_groups(meta, bank)
  retrain = crossfit_by != "none"
  if retrain:
    group_sims = _learned_similarities(
        fps, meta, victim,
        [(train, [i for i in bank if str(meta[i].get(by)) != g]) for by, g in groups_of],
        encoder_config, crossfit_by)
  groups = {by: {} for by in ("arch", "recipe")}
  for n, (by, group) in enumerate(groups_of):
    held = [i for i in bank if str(meta[i].get(by)) == group]
    others = [i for i in calib if str(meta[i].get(by)) != group]
    try:
      ref = population.reference(others, meta, point_accuracy, victim, num_classes,
                                 minimum=settings.min_reference,
                                 confidence=point_confidence)
    except ValueError as e:
      groups[by][group] = {"error": str(e)}
      continue
    result = summary.evaluate_split(group_sims[n] if retrain else sims, meta, held,
                                    ref.index, point_accuracy, ref, **settings.test())
    rows = result["suspects"]
    accused = [r["name"] for r in rows if r["verdict"] == "pirated"]
    groups[by][group] = {"held_out": len(rows), "accused": len(accused),
                         "accused_names": accused, "reference_models": len(ref.index),
                         "min_p_value": float(min(r["p_value"] for r in rows))}
  return {by: {"groups": g,
               "held_out": sum(r.get("held_out", 0) for r in g.values()),
               "accused": sum(r.get("accused", 0) for r in g.values())}
          for by, g in groups.items()}


def calibration_left_out(sims: np.ndarray, meta: Sequence[dict], victim: int,
                         calib: Sequence[int], point_accuracy: np.ndarray,
                         num_classes: int, settings: Settings, *,
                         point_confidence: np.ndarray | None = None) -> dict[str, Any]:
  """Each of the zoo's calibration independents judged against the others.

  The zoo's calibration models never train an encoder, so each can be
  judged against the reference without itself, as a new suspect made the
  same way would be. The zoo's independents are the models made most like
  the victim (its architecture, data part and recipe for
  ``independent_seed``); when the bank holds nothing like them, leaving one
  out shows the tail an innocent twin of the victim falls in.

  Args:
    sims: ``(M, V)`` scores of every model.
    meta: per model its metadata.
    victim: the victim's index.
    calib: the calibration models (bank included; the bank's are judged by
      :func:`reference_held_out`).
    point_accuracy: ``(M,)`` accuracies on the points.
    num_classes: C.
    settings: the run's settings.
    point_confidence: ``(M,)`` point confidences (the coverage's confidence
      rule; None: off).

  Returns:
    ``{"held_out", "accused", "accused_names", "min_p_value"}``.
  """
  bank = set(splits.bank_models(meta))
  rows = []
  for i in [i for i in calib if i not in bank]:
    try:
      ref = population.reference([j for j in calib if j != i], meta, point_accuracy, victim,
                                 num_classes, minimum=settings.min_reference,
                                 confidence=point_confidence)
    except ValueError as e:
      logging.warning("Calibration leave-one-out of %s: %s", meta[i].get("name"), e)
      continue
    rows += summary.evaluate_split(sims, meta, [i], ref.index, point_accuracy, ref,
                                   **settings.test())["suspects"]
  accused = [r["name"] for r in rows if r["verdict"] == "pirated"]
  return {"held_out": len(rows), "accused": len(accused), "accused_names": accused,
          "min_p_value": float(min((r["p_value"] for r in rows), default=1.0))}


def false_accusations(random: dict, folds: dict, bank: dict,
                      calibration: dict | None = None) -> dict[str, Any]:
  """Every held-out independent judged by the protocols, and how many were accused.

  Args:
    random: the random split's :func:`~uap_jax.verify.summary.evaluate` dict.
    folds: :func:`leave_kind_out`'s folds (independent folds count).
    bank: :func:`reference_held_out`'s dict.
    calibration: :func:`calibration_left_out`'s dict (None: not judged).

  Returns:
    Per source its ``held_out`` and ``accused``, the totals, and the
    Clopper-Pearson 95 % upper bound on the accusation rate.
  """
  sources = {"random_split": {
      "held_out": int(random["num_independents"]),
      "accused": int(random["accused_independents"])}}
  for kind, fold in folds.items():
    if fold.get("family") == "independent" and "held_out_verdicts" in fold:
      v = fold["held_out_verdicts"]
      sources[f"leave_kind_out/{kind}"] = {"held_out": int(sum(v.values())),
                                           "accused": int(v.get("pirated", 0))}
  for by, part in bank.items():
    sources[f"reference_leave_{by}_out"] = {"held_out": part["held_out"],
                                            "accused": part["accused"]}
  if calibration is not None:
    sources["calibration_leave_one_out"] = {"held_out": calibration["held_out"],
                                            "accused": calibration["accused"]}
  held = sum(v["held_out"] for v in sources.values())
  accused = sum(v["accused"] for v in sources.values())
  return {"sources": sources, "held_out": held, "accused": accused,
          "upper_95": metrics.clopper_pearson_upper(accused, held)}


def _confidence(settings: Settings, encoder: Any, fps: np.ndarray, num_uaps: int,
                num_classes: int) -> np.ndarray | None:
  """Point confidences for the coverage rule, or None for a score that
  does not read them.

  ``uap_follow`` reads top-1 answers only, which no softmax temperature
  changes, and an encoder that re-tempers every model to the victim's
  confidence (``--enc_confidence``) reads none; every other score reads the
  probabilities themselves.
  """
  if settings.score == "uap_follow" or (
      settings.score == "encoder" and encoder_lib.retempers(encoder)):
    return None
  return population.point_confidence(fps, num_uaps, num_classes)


def evaluate_zoo(encoder: Any, fps: np.ndarray, meta: Sequence[dict], victim: int,
                 split: dict, settings: Settings, *, num_uaps: int, num_classes: int,
                 point_labels: np.ndarray,
                 sample_references: dict[str, dict] | None = None,
                 label_judge: Any = None) -> tuple[dict[str, Any], np.ndarray]:
  """Every protocol on the zoo (what ``verify.json`` holds).

  Args:
    encoder: the trained encoders (a :class:`~uap_jax.verify.crossfit.CrossFitted`,
      or one TrainedEncoder).
    fps: ``(M, V, D)`` fingerprints of the victim, every zoo model and the
      reference bank.
    meta: per model its metadata (name, family, kind, arch, ...).
    victim: the victim's index.
    split: the saved model split.
    settings: the run's settings.
    num_uaps: U of the fingerprints.
    num_classes: C.
    point_labels: ``(V, K)`` true labels of the fingerprint points.
    sample_references: the one-number-per-model references
      (:func:`uap_jax.verify.references.sample_references`), listed after
      the per-view ones.
    label_judge: the encoder trained on top-1 labels: the zoo is judged
      again on its labels alone (``labels``), as answers that carry only
      the top class are; None: not.

  Returns:
    ``({"protocols": {"random", "leave_kind_out", "reference_held_out",
    "calibration_left_out"},
    "false_accusations", "reference", "other_tests", "references",
    "victim_self", "labels"}, (M, V) scores of every model)``; ``labels``
    holds the same protocols, false accusations, reference and victim_self
    for the label judge (None without one, or for an encoder-free score).
  """
  judged, sims, ref = _protocols(encoder, fps, meta, victim, split, settings,
                                 num_uaps=num_uaps, num_classes=num_classes,
                                 point_labels=point_labels)
  fit_split = dict(split, calib=ref.index)
  others = other_tests(sims, meta, fit_split, settings)
  refs = references.view_references(fps, meta, victim, fit_split, num_uaps, num_classes,
                                    **settings.test())
  if settings.score != "encoder":
    # The paper's learned score on the same suspects and references.
    encoder_sims = similarity.scores("encoder", encoder, fps, fps[victim],
                                     num_uaps=num_uaps, num_classes=num_classes,
                                     rows=range(fps.shape[0]))
    refs["encoder"] = summary.brief(summary.evaluate_split(
        encoder_sims, meta, split["eval"], ref.index, **settings.test()))
  refs.update(sample_references or {})
  on_labels = None
  if label_judge is not None and settings.score == "encoder":
    on_labels, _, _ = _protocols(label_judge, layout.as_labels(fps, num_uaps, num_classes),
                                 meta, victim, split, settings, num_uaps=num_uaps,
                                 num_classes=num_classes, point_labels=point_labels)
  return dict(judged, other_tests=others, references=refs, labels=on_labels), sims


def _protocols(encoder: Any, fps: np.ndarray, meta: Sequence[dict], victim: int,
               split: dict, settings: Settings, *, num_uaps: int, num_classes: int,
               point_labels: np.ndarray
               ) -> tuple[dict[str, Any], np.ndarray, population.Reference]:
  """The zoo under every protocol with one score: the verdicts and their
  false accusations, the reference, the victim judged as its own suspect;
  also the ``(M, V)`` scores and the reference population."""
  rows = range(fps.shape[0])
  sims = similarity.scores(settings.score, encoder, fps, fps[victim], num_uaps=num_uaps,
                           num_classes=num_classes, rows=rows)
  accuracy = population.point_accuracy(fps, point_labels, num_uaps, num_classes)
  confidence = _confidence(settings, encoder, fps, num_uaps, num_classes)
  ref = population.reference(split["calib"], meta, accuracy, victim, num_classes,
                             minimum=settings.min_reference, confidence=confidence)
  random = summary.evaluate_split(sims, meta, split["eval"], ref.index, accuracy, ref,
                                  **settings.test())
  random["auc_vs_reference"] = summary.auc_against_reference(
      sims, meta, split["eval"], ref.index, settings.num_views)
  by = getattr(encoder, "mode", "none")
  learned = settings.score == "encoder"
  folds = leave_kind_out(fps, meta, victim, encoder.config, settings,
                         point_accuracy=accuracy, num_classes=num_classes, sims=sims,
                         crossfit_by=by, point_confidence=confidence)
  bank = reference_held_out(sims, meta, victim, split["calib"], accuracy, num_classes,
                            settings, fps=fps, train=split["train"],
                            encoder_config=encoder.config,
                            crossfit_by=by if learned else "none",
                            point_confidence=confidence)
  left_out = calibration_left_out(sims, meta, victim, split["calib"], accuracy,
                                  num_classes, settings, point_confidence=confidence)
  zoo_rows = {m["name"]: m for m in meta}
  for row in random["suspects"]:
    src = zoo_rows[row["name"]]
    row.update(arch=src.get("arch"), test_accuracy=src.get("test_accuracy"),
               agreement=src.get("agreement"))
  victim_self = tests.verify_suspect(sims[victim], sims[ref.index],
                                     num_views=settings.num_views,
                                     method=settings.method, alpha=settings.alpha)
  # A victim less accurate than every fit reference model makes its faithful
  # copies read inconclusive by the coverage rule, whatever their scores.
  victim_self.update(point_accuracy=float(accuracy[victim]),
                     outside_reference=ref.outside(float(accuracy[victim])))
  return {"protocols": {"random": random, "leave_kind_out": folds,
                        "reference_held_out": bank, "calibration_left_out": left_out},
          "false_accusations": false_accusations(random, folds, bank, left_out),
          "reference": ref.description, "score": settings.score,
          "victim_self": victim_self}, sims, ref


def judge(encoder: Any, suspect_fps: np.ndarray, fps: np.ndarray, meta: Sequence[dict],
          victim: int, calib: Sequence[int], settings: Settings, *, num_uaps: int,
          num_classes: int, point_labels: np.ndarray,
          labels_only: bool = False, label_judge: Any = None) -> list[dict[str, Any]]:
  """Verdicts on suspects from outside the zoo.

  Args:
    encoder: the trained encoders (as :func:`evaluate_zoo` takes).
    suspect_fps: ``(S, V, D)`` the suspects' fingerprints.
    fps: ``(M, V, D)`` the run's fingerprints (victim, zoo, bank).
    meta: per model of ``fps`` its metadata.
    victim: the victim's index in ``fps``.
    calib: the calibration models (the reference, before the fitness rule).
    settings: the run's settings.
    num_uaps: U.
    num_classes: C.
    point_labels: ``(V, K)`` true labels of the points.
    labels_only: the suspects' fingerprints are labels (one-hot) while the
      run's hold probabilities or logits: the run's are reduced to labels
      too (:func:`uap_jax.fingerprint.layout.as_labels`) and the label
      judge (or an encoder-free score) compares them.
    label_judge: the run's encoder trained on top-1 labels: it judges
      label answers, and a suspect whose answers are more or less
      confident than every reference model's (a sharpened or softened
      softmax; only for an encoder that reads answers as they are, since one
      that re-tempers them reads no confidence), on its top-1 labels. None:
      such answers get no verdict from an encoder (labels raise; other
      answers read ``inconclusive``).

  Returns:
    Per suspect its :func:`~uap_jax.verify.tests.verify_suspect` dict with
    the coverage rule applied, its ``statement``
    (:func:`uap_jax.verify.population.apply_coverage`) and ``judged_on``
    (``labels``, or ``outputs``: the probabilities or logits themselves).
  """
  learned = settings.score == "encoder"
  if labels_only:
    if learned and label_judge is None:
      raise ValueError(
          "Label-only answers need the label judge, which this run has not trained "
          "(made before it, or with --fp_mode=labels already): rerun "
          "--stages=encoder,verify, or use the encoder-free --score=uap_follow.")
    return _judge_on_labels(label_judge if learned else encoder, suspect_fps, fps, meta,
                            victim, calib, settings, num_uaps=num_uaps,
                            num_classes=num_classes, point_labels=point_labels)
  mode = "labels" if _are_labels(fps, num_uaps, num_classes) else "outputs"
  verdicts = [dict(v, judged_on=mode) for v in _judge(
      encoder, suspect_fps, fps, meta, victim, calib, settings, num_uaps=num_uaps,
      num_classes=num_classes, point_labels=point_labels)]
  sharp = [n for n, v in enumerate(verdicts) if v["outside_reference"] == "confidence"]
  if not (learned and sharp and label_judge is not None):
    return verdicts
  # Confidence is what a softmax temperature changes and top-1 labels are
  # not: answers outside the reference's confidence are judged on labels.
  on_labels = _judge_on_labels(label_judge, suspect_fps[sharp], fps, meta, victim, calib,
                               settings, num_uaps=num_uaps, num_classes=num_classes,
                               point_labels=point_labels)
  for n, v in zip(sharp, on_labels):
    lo, hi = verdicts[n]["reference_population"]["point_confidence"]
    why = (f"Judged on top-1 labels: the answers' mean top-1 probability "
           f"{verdicts[n]['point_confidence']:.3f} lies outside the reference models' "
           f"and the victim's ({lo:.3f} to {hi:.3f}). ")
    verdicts[n] = dict(v, statement=why + v["statement"],
                       scores_verdict=verdicts[n]["statement"])
  return verdicts


def _are_labels(fps: np.ndarray, num_uaps: int, num_classes: int) -> bool:
  """Whether fingerprints hold one-hot rows (a run made with --fp_mode=labels)."""
  return bool(np.array_equal(fps, layout.as_labels(fps, num_uaps, num_classes)))


def _judge_on_labels(encoder: Any, suspect_fps: np.ndarray, fps: np.ndarray,
                     meta: Sequence[dict], victim: int, calib: Sequence[int],
                     settings: Settings, **kwargs) -> list[dict[str, Any]]:
  """:func:`_judge` with every fingerprint reduced to top-1 labels."""
  num_uaps, num_classes = kwargs["num_uaps"], kwargs["num_classes"]
  return [dict(v, judged_on="labels") for v in _judge(
      encoder, layout.as_labels(suspect_fps, num_uaps, num_classes),
      layout.as_labels(fps, num_uaps, num_classes), meta, victim, calib, settings,
      **kwargs)]


def _judge(encoder: Any, suspect_fps: np.ndarray, fps: np.ndarray, meta: Sequence[dict],
           victim: int, calib: Sequence[int], settings: Settings, *, num_uaps: int,
           num_classes: int, point_labels: np.ndarray) -> list[dict[str, Any]]:
  accuracy = population.point_accuracy(fps, point_labels, num_uaps, num_classes)
  ref = population.reference(calib, meta, accuracy, victim, num_classes,
                             minimum=settings.min_reference,
                             confidence=_confidence(settings, encoder, fps, num_uaps,
                                                    num_classes))
  suspect_confidence = _confidence(settings, encoder, suspect_fps, num_uaps, num_classes)
  score = lambda f, rows: similarity.scores(settings.score, encoder, f, fps[victim],
                                            num_uaps=num_uaps, num_classes=num_classes,
                                            rows=rows)
  reference, sims = score(fps[ref.index], ref.index), score(suspect_fps, None)
  suspect_accuracy = population.point_accuracy(suspect_fps, point_labels, num_uaps,
                                               num_classes)
  return [population.apply_coverage(
              tests.verify_suspect(s, reference, num_views=settings.num_views,
                                   method=settings.method, alpha=settings.alpha),
              a, ref, None if suspect_confidence is None else suspect_confidence[n])
          for n, (s, a) in enumerate(zip(sims, suspect_accuracy))]
