"""Which models train the encoder, calibrate the test, and are evaluated.

:func:`split_models` is the seeded random split of a zoo;
:func:`leave_kind_out_splits` the folds in which the evaluated kind is never
trained or calibrated on; :func:`train_encoder` trains an encoder on one
part.
"""

from __future__ import annotations

from typing import Any, Sequence

from absl import logging
import numpy as np

from uap_jax.verify import encoder as encoder_lib

POSITIVE_FAMILIES = ("piracy",)
NEGATIVE_FAMILY = "independent"
VICTIM_FAMILY = "victim"
# The reference bank's models (uap_jax.zoo.reference.REFERENCE_KIND).
REFERENCE_KIND = "reference"


def _family(m: dict) -> str:
  family = m.get("family")
  if family is None and m.get("kind") == VICTIM_FAMILY:
    return VICTIM_FAMILY
  if family not in POSITIVE_FAMILIES + (NEGATIVE_FAMILY, VICTIM_FAMILY):
    raise ValueError(
        f"Model {m.get('name', '?')!r} has family {family!r}; every model's "
        "meta needs family 'piracy', 'independent' or 'victim'.")
  return family


def bank_models(meta: Sequence[dict]) -> list[int]:
  """The indices of the reference bank's models."""
  return [i for i, m in enumerate(meta) if m.get("kind") == REFERENCE_KIND]


def encoder_labels(meta: Sequence[dict]) -> np.ndarray:
  """The encoder's training labels.

  Args:
    meta: per model its metadata (``family``).

  Returns:
    ``(M,)`` int32: 1 for the victim and piracy models, 0 for independents.
  """
  return np.array([0 if _family(m) == NEGATIVE_FAMILY else 1 for m in meta],
                  np.int32)


def train_encoder(fingerprints: np.ndarray, meta: Sequence[dict], train_idx,
                  config: dict, *, verbose: bool = True) -> encoder_lib.TrainedEncoder:
  """Trains an encoder on the models ``train_idx`` of a zoo only.

  Args:
    fingerprints: ``(M, V, D)`` fingerprints of every model.
    meta: per model its metadata (``family``).
    train_idx: the models that train it (victim, piracy, independents).
    config: an :func:`uap_jax.verify.encoder.make_config` config.
    verbose: log its training at INFO (else DEBUG).

  Returns:
    The trained encoder.
  """
  train_idx = np.asarray(train_idx)
  labels = encoder_labels([meta[i] for i in train_idx])
  return encoder_lib.train(np.asarray(fingerprints)[train_idx], labels, config,
                           verbose=verbose)


def _interleave(indices: list[int], meta: Sequence[dict],
                rng: np.random.Generator) -> list[int]:
  """Shuffles within each kind, then deals kinds round-robin.

  Cutting the result into parts then spreads every kind over the parts.
  """
  by_kind: dict[str, list[int]] = {}
  for i in indices:
    by_kind.setdefault(str(meta[i].get("kind")), []).append(i)
  groups = [list(rng.permutation(by_kind[k])) for k in sorted(by_kind)]
  groups = [groups[i] for i in rng.permutation(len(groups))]
  out = []
  for r in range(max((len(g) for g in groups), default=0)):
    out.extend(int(g[r]) for g in groups if r < len(g))
  return out


def _cut(order: list[int], fracs: Sequence[float], minimum: Sequence[int]
         ) -> list[list[int]]:
  """Cuts ``order`` into ``len(fracs) + 1`` consecutive parts.

  Part p gets ``round(fracs[p] * n)`` models but at least ``minimum[p]``;
  the last part gets the rest, at least ``minimum[-1]`` (taken from the
  largest part that can spare one).
  """
  n = len(order)
  sizes = [max(int(round(f * n)), lo) for f, lo in zip(fracs, minimum)]
  while sum(sizes) > n - minimum[-1]:
    spare = [s - lo for s, lo in zip(sizes, minimum)]
    if max(spare) <= 0:
      break
    sizes[int(np.argmax(spare))] -= 1
  parts, start = [], 0
  for size in sizes:
    parts.append(order[start:start + size])
    start += size
  parts.append(order[start:])
  return parts


def check_fractions(train_frac: float, calib_frac: float) -> None:
  """Raises ValueError unless 0 < train_frac, calib_frac and their sum < 1.

  Args:
    train_frac: fraction of the zoo that trains the encoder.
    calib_frac: fraction of the independents that calibrate the test.
  """
  if not (0 < train_frac < 1 and 0 < calib_frac < 1
          and train_frac + calib_frac < 1):
    raise ValueError(
        f"Need 0 < train_frac, calib_frac and train_frac + calib_frac < 1, got "
        f"train_frac={train_frac}, calib_frac={calib_frac}.")


def _base_split(meta: Sequence[dict], seed: int, train_frac: float,
                calib_frac: float):
  check_fractions(train_frac, calib_frac)
  families = [_family(m) for m in meta]
  rng = np.random.default_rng(seed)
  victims = [i for i, f in enumerate(families) if f == VICTIM_FAMILY]
  piracy = _interleave([i for i, f in enumerate(families)
                        if f in POSITIVE_FAMILIES], meta, rng)
  bank = bank_models(meta)
  independent = _interleave([i for i, f in enumerate(families)
                             if f == NEGATIVE_FAMILY and i not in bank], meta, rng)
  if len(independent) < 3:
    raise ValueError(
        f"Splitting needs >= 3 independent models (encoder training, "
        f"calibration, evaluation), got {len(independent)}; add independents "
        "to the zoo.")
  # The model-level tests estimate a between-model spread: they need >= 3
  # calibration models, so small zoos give calibration that minimum. The
  # evaluation part is cut first, then training: consecutive models of the
  # interleaved order are of different kinds, so the first parts see every
  # kind they have room for.
  min_calib = 3 if len(independent) >= 5 else 1
  eval_frac = 1.0 - train_frac - calib_frac
  ind_eval, ind_train, ind_calib = _cut(independent, (eval_frac, train_frac),
                                        (1, 1, min_calib))
  if piracy:
    pir_eval, pir_train = _cut(piracy, (1.0 - train_frac,),
                               (1, 1 if len(piracy) > 1 else 0))
  else:
    pir_train, pir_eval = [], []
  # The reference bank is never a zoo suspect: all of it calibrates (its own
  # protocol evaluates it, leave-group-out); it trains the encoder only
  # cross-fitted (uap_jax.verify.crossfit), never as part of "train".
  return victims, (pir_train, pir_eval), (ind_train, ind_calib + bank, ind_eval)


def split_models(meta: Sequence[dict], seed: int = 0, train_frac: float = 0.5,
                 calib_frac: float = 0.25) -> dict[str, Any]:
  """Seeded random split of a zoo into encoder-train, calibration, evaluation.

  Args:
    meta: one dict per model with ``family`` (``piracy``, ``independent``,
      ``victim``) and ``kind``; index i is model i of the fingerprints.
    seed: split seed.
    train_frac: fraction of the piracy models and of the independents that
      train the encoder.
    calib_frac: fraction of the independents kept for calibration (the
      reference distribution; at least 3 models when the zoo has >= 5
      independents, as the model-level tests need); piracy models are never
      needed there, so all piracy models not in training are evaluated.
    Within each family models are dealt kind by kind, so every kind is spread
    over the parts. The victim always trains (it is never a suspect).

  Returns:
    JSON-able dict: ``train``, ``calib``, ``eval`` (sorted, disjoint model
    indices; every part holds independents), ``train_names``,
    ``calib_names``, ``eval_names``, ``seed``, ``train_frac``,
    ``calib_frac``, ``protocol`` ('random').
  """
  victims, (pir_train, pir_eval), (ind_train, ind_calib, ind_eval) = (
      _base_split(meta, seed, train_frac, calib_frac))
  return _as_split(meta, victims + pir_train + ind_train, ind_calib,
                   pir_eval + ind_eval, protocol="random", seed=seed,
                   train_frac=train_frac, calib_frac=calib_frac)


def _as_split(meta, train, calib, evaluate_, **info) -> dict[str, Any]:
  parts = {"train": sorted(train), "calib": sorted(calib),
           "eval": sorted(evaluate_)}
  out = dict(parts)
  for name, idx in parts.items():
    out[f"{name}_names"] = [str(meta[i].get("name", i)) for i in idx]
  out.update(info)
  return out


def leave_kind_out_splits(meta: Sequence[dict], seed: int = 0,
                          train_frac: float = 0.5,
                          calib_frac: float = 0.25) -> list[dict[str, Any]]:
  """Leave-kind-out splits: the evaluated kind is never trained or calibrated on.

  A base random split (as :func:`split_models`) fixes a piracy train/eval and
  an independent train/calib/eval partition. Then:

  * piracy kind P: evaluate every model of kind P against the base
    evaluation independents; train on the victim, all piracy models of
    other kinds and the base training independents; calibrate on the base
    calibration independents.
  * independent kind I: evaluate every model of kind I against the base
    evaluation piracy models; train on the victim, the base training piracy
    models and the base training independents of other kinds; calibrate on
    the base calibration independents of other kinds. Skipped (logged) when
    the other kinds leave no training or calibration independent.

  Args:
    meta: as in :func:`split_models`.
    seed: base split seed.
    train_frac: as in :func:`split_models`.
    calib_frac: as in :func:`split_models`.

  Returns:
    One split dict per fold (the keys of :func:`split_models`, plus
    ``held_out_kind`` and ``held_out_family``; protocol 'leave_kind_out').
  """
  victims, (pir_train, pir_eval), (ind_train, ind_calib, ind_eval) = (
      _base_split(meta, seed, train_frac, calib_frac))
  families = [_family(m) for m in meta]
  kind = [str(m.get("kind")) for m in meta]
  info = dict(protocol="leave_kind_out", seed=seed, train_frac=train_frac,
              calib_frac=calib_frac)
  folds = []
  piracy = [i for i, f in enumerate(families) if f in POSITIVE_FAMILIES]
  for k in sorted({kind[i] for i in piracy}):
    train = victims + [i for i in piracy if kind[i] != k] + ind_train
    held = [i for i in piracy if kind[i] == k]
    folds.append(_as_split(meta, train, ind_calib, held + ind_eval,
                           held_out_kind=k, held_out_family="piracy", **info))
  independent = [i for i, f in enumerate(families)
                 if f == NEGATIVE_FAMILY and kind[i] != REFERENCE_KIND]
  for k in sorted({kind[i] for i in independent}):
    train_ind = [i for i in ind_train if kind[i] != k]
    calib = [i for i in ind_calib if kind[i] != k]
    if not train_ind or not calib or not pir_eval:
      logging.info(
          "leave-kind-out: no fold for independent kind %r (other kinds leave "
          "%d training and %d calibration independents, %d evaluation piracy "
          "models).", k, len(train_ind), len(calib), len(pir_eval))
      continue
    held = [i for i in independent if kind[i] == k]
    folds.append(_as_split(meta, victims + pir_train + train_ind, calib,
                           pir_eval + held, held_out_kind=k,
                           held_out_family="independent", **info))
  return folds
