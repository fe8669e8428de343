"""The verification of a whole zoo, and of suspects from outside it.

:func:`evaluate_zoo` judges every model of the zoo's evaluation part under
two protocols, the saved random split and leave-kind-out (for each kind, an
encoder and a calibration set that never saw it), and adds the other tests
and the encoder-free references on the same suspects: what ``verify.json``
holds. :func:`judge` gives the verdicts on suspects outside the zoo.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from absl import logging
import numpy as np

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
    num_views: views tested per suspect.
    alpha: accusation level.
    seed: split seed.
    train_frac: fraction that trains the encoder.
    calib_frac: fraction of the independents that calibrates.
  """
  method: str = "welch"
  num_views: int = 20
  alpha: float = 0.01
  seed: int = 0
  train_frac: float = 0.5
  calib_frac: float = 0.25

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
                   encoder_config: dict, settings: Settings) -> dict[str, dict]:
  """Leave-kind-out folds, each with an encoder trained on its own part.

  Args:
    fps: ``(M, V, D)`` fingerprints of every model.
    meta: per model its metadata.
    victim: the victim's index.
    encoder_config: the saved encoder's config (each fold's encoder has it).
    settings: the run's settings.

  Returns:
    Per held-out kind its brief with ``family``, ``auc_held_out``,
    ``held_out_verdicts`` and ``similarity_mean``, or ``family`` and
    ``error`` where the fold cannot be tested.
  """
  folds = {}
  for fold in splits.leave_kind_out_splits(meta, seed=settings.seed,
                                           train_frac=settings.train_frac,
                                           calib_frac=settings.calib_frac):
    kind = fold["held_out_kind"]
    logging.info("Leave-kind-out: %s (%d train, %d calib, %d eval)", kind,
                 len(fold["train"]), len(fold["calib"]), len(fold["eval"]))
    fold_enc = splits.train_encoder(fps, meta, fold["train"], encoder_config)
    fold_sims = similarity.similarities(fold_enc, fps, fps[victim])
    try:
      result = summary.evaluate_split(fold_sims, meta, fold["eval"], fold["calib"],
                                      **settings.test())
    except ValueError as e:
      # E.g. holding out an independent kind leaves fewer calibration models
      # than the model-level tests need: that fold is reported, not fatal.
      logging.warning("Leave-kind-out fold %s: %s", kind, e)
      folds[kind] = {"family": fold["held_out_family"], "error": str(e)}
      continue
    folds[kind] = _fold_row(result, fold)
  return folds


def evaluate_zoo(encoder: Any, fps: np.ndarray, meta: Sequence[dict], victim: int,
                 split: dict, settings: Settings, *, num_uaps: int, num_classes: int,
                 sample_references: dict[str, dict] | None = None
                 ) -> tuple[dict[str, Any], np.ndarray]:
  """Every protocol on the zoo (what ``verify.json`` holds).

  Args:
    encoder: the trained encoder (a TrainedEncoder).
    fps: ``(M, V, D)`` fingerprints of the victim and every zoo model.
    meta: per model its metadata (name, family, kind, arch, ...).
    victim: the victim's index.
    split: the saved model split.
    settings: the run's settings.
    num_uaps: U of the fingerprints.
    num_classes: C.
    sample_references: the one-number-per-model references
      (:func:`uap_jax.verify.references.sample_references`), listed after
      the per-view ones.

  Returns:
    ``({"protocols": {"random", "leave_kind_out"}, "other_tests",
    "references", "victim_self"}, (M, V) similarities to the victim)``.
  """
  sims = similarity.similarities(encoder, fps, fps[victim])
  random = summary.evaluate_split(sims, meta, split["eval"], split["calib"],
                                  **settings.test())
  others = other_tests(sims, meta, split, settings)
  refs = references.view_references(fps, meta, victim, split, num_uaps, num_classes,
                                    **settings.test())
  refs.update(sample_references or {})
  folds = leave_kind_out(fps, meta, victim, encoder.config, settings)
  zoo_rows = {m["name"]: m for m in meta}
  for row in random["suspects"]:
    src = zoo_rows[row["name"]]
    row.update(arch=src.get("arch"), test_accuracy=src.get("test_accuracy"),
               agreement=src.get("agreement"))
  victim_self = tests.verify_suspect(sims[victim], sims[split["calib"]],
                                     num_views=settings.num_views,
                                     method=settings.method, alpha=settings.alpha)
  return {"protocols": {"random": random, "leave_kind_out": folds},
          "other_tests": others, "references": refs, "victim_self": victim_self}, sims


def judge(encoder: Any, suspect_fps: np.ndarray, fps: np.ndarray, victim: int,
          calib: Sequence[int], settings: Settings) -> list[dict[str, Any]]:
  """Verdicts on suspects from outside the zoo.

  Args:
    encoder: the trained encoder.
    suspect_fps: ``(S, V, D)`` the suspects' fingerprints.
    fps: ``(M, V, D)`` the zoo's fingerprints.
    victim: the victim's index in ``fps``.
    calib: the calibration independents (the reference).
    settings: the run's settings.

  Returns:
    Per suspect its :func:`~uap_jax.verify.tests.verify_suspect` dict.
  """
  reference = similarity.similarities(encoder, fps[calib], fps[victim])
  sims = similarity.similarities(encoder, suspect_fps, fps[victim])
  return [tests.verify_suspect(s, reference, num_views=settings.num_views,
                               method=settings.method, alpha=settings.alpha)
          for s in sims]
