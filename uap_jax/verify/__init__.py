"""Verification: similarity to the victim, a one-sided test, a verdict.

Similarity of a suspect view = cosine of its encoder embedding with the
victim's embedding. The victim's embedding is the normalised MEAN of the
embeddings of all its views (a prototype), not view-by-view pairing: the
prototype averages out the victim's own view-to-view noise, so the spread of a
suspect's similarities reflects the suspect alone, and a suspect may answer
any subset of the views. (``pairing='per_view'`` is available for
comparison.)

The suspect's n similarities are tested against a *reference*: the
similarities of independent models of a CALIBRATION set that the encoder
never trained on, shape ``(R, V)`` (R models, V views). Tests
(``method``):

* ``welch`` (the paper's): Welch's t-test of the suspect's n similarities
  against all R*V reference similarities. It treats the views of ONE model
  as independent draws; but views of one model are strongly correlated
  (they share the model), so p-values shrink with n without bound even for
  an independent model that merely sits above the reference average: on
  held-out independents this accuses far too many.
* ``model`` (recommended): a random-effects prediction test at the level of
  models. Under H0 the suspect is one more independent model: its n-view
  mean similarity is ``mu + b + e`` with between-model spread
  ``sigma_b^2`` and within-model spread ``sigma_w^2 / n``, both estimated
  from the reference models; ``t = (s - mean) / sqrt(sigma_b^2 +
  sigma_w^2 / n + var(means) / R)`` has R-1 degrees of freedom. More views
  shrink only the within-model part, so confidence is capped by how far the
  suspect sits from the spread of independent MODELS, which is the question
  asked.
* ``model_z``: the ``model`` test on Fisher's z = artanh(similarity).
  Cosines crowd against 1 for the victim's copies, where their spread
  shrinks, and independents' cosines spread wide below: the test's normal
  model of the reference then fits neither tail. artanh, the classic
  variance-stabilising map for correlations, stretches the end near 1, so a
  copy far from the independents in z counts as far; the reference spread is
  estimated in z as well.
* ``empirical``: rank of the suspect's n-view mean among the reference
  models' n-view means, ``p = (1 + #{ref >= s}) / (R + 1)``: no
  distributional assumption, but ``p >= 1 / (R + 1)``.

Verdict: ``pirated`` when ``p < alpha``; ``not_pirated`` when ``p >=
upper`` or the suspect's mean similarity is not above the reference mean;
else ``inconclusive``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

from absl import logging
import numpy as np
from scipy import stats

from uap_jax.verify import encoder as encoder_lib
from uap_jax.verify import metrics

METHODS = ("welch", "model", "model_z", "empirical")
# Cosines are clipped this far inside (-1, 1) before artanh.
FISHER_Z_CLIP = 1e-6
PAIRINGS = ("mean", "per_view")
POSITIVE_FAMILIES = ("piracy",)
NEGATIVE_FAMILY = "independent"
VICTIM_FAMILY = "victim"


# --------------------------------------------------------------------------
# Similarities.


def victim_embedding(encoder: Any, victim_fingerprints: np.ndarray) -> np.ndarray:
  """Unit-norm mean of the embeddings of the victim's views.

  Args:
    encoder: an Encoder, TrainedEncoder or ``(state, config)``.
    victim_fingerprints: ``(V, D)`` views of the victim.

  Returns:
    ``(E,)`` unit vector.
  """
  victim_fingerprints = np.asarray(victim_fingerprints)
  if victim_fingerprints.ndim != 2:
    raise ValueError(
        f"victim_fingerprints must be (V, D), got {victim_fingerprints.shape}; "
        "take the victim's row of the fingerprints (fps[i]).")
  mean = encoder_lib.embed(encoder, victim_fingerprints).mean(0)
  return mean / max(float(np.linalg.norm(mean)), 1e-12)


def similarities(encoder: Any, suspect_fingerprints: np.ndarray,
                 victim_fingerprints: np.ndarray, *,
                 pairing: str = "mean") -> np.ndarray:
  """Cosine similarity of every suspect view with the victim.

  Args:
    encoder: an Encoder, TrainedEncoder or ``(state, config)``.
    suspect_fingerprints: ``(..., V, D)`` views of one or more suspects.
    victim_fingerprints: ``(V_victim, D)`` views of the victim.
    pairing: ``mean`` (against the victim's prototype, see the module
      docstring) or ``per_view`` (view j against the victim's view j; needs
      the suspect's V <= V_victim).

  Returns:
    ``(..., V)`` similarities in [-1, 1].
  """
  if pairing not in PAIRINGS:
    raise ValueError(f"Unknown pairing {pairing!r}; choose one of "
                     f"{', '.join(PAIRINGS)}.")
  suspect_fingerprints = np.asarray(suspect_fingerprints)
  if suspect_fingerprints.ndim < 2:
    raise ValueError(
        f"suspect_fingerprints must be (..., V, D), got "
        f"{suspect_fingerprints.shape}.")
  emb = encoder_lib.embed(encoder, suspect_fingerprints)
  if pairing == "mean":
    return emb @ victim_embedding(encoder, victim_fingerprints)
  victim = encoder_lib.embed(encoder, np.asarray(victim_fingerprints))
  v = emb.shape[-2]
  if v > victim.shape[0]:
    raise ValueError(
        f"per_view pairing needs the victim's views for all {v} suspect views, "
        f"got {victim.shape[0]}; use pairing='mean' or fewer views.")
  return np.sum(emb * victim[:v], axis=-1)


# --------------------------------------------------------------------------
# The test.


def _check_reference(reference, method: str) -> np.ndarray:
  reference = np.asarray(reference, np.float64)
  if method not in METHODS:
    raise ValueError(f"Unknown test {method!r}; choose one of "
                     f"{', '.join(METHODS)}.")
  if method == "welch":
    if reference.ndim not in (1, 2) or reference.size < 2:
      raise ValueError(
          f"The reference must hold >= 2 similarities of independent models, "
          f"(R, V) or (N,), got shape {reference.shape}; fingerprint a "
          "calibration set of independents.")
  elif reference.ndim != 2 or reference.shape[0] < 3 or reference.shape[1] < 1:
    raise ValueError(
        f"method={method!r} needs the reference per model, shape (R, V) with "
        f"R >= 3 calibration independents, got {reference.shape}; fingerprint "
        "more calibration independents or use method='welch'.")
  if not np.all(np.isfinite(reference)):
    raise ValueError("The reference similarities contain NaN or inf.")
  return reference


def _check_sims(sims) -> np.ndarray:
  sims = np.asarray(sims, np.float64)
  if sims.ndim != 1 or sims.size < 2:
    raise ValueError(
        f"A suspect needs >= 2 similarities (one per view) as a 1-D array, got "
        f"shape {sims.shape}.")
  if not np.all(np.isfinite(sims)):
    raise ValueError("The suspect's similarities contain NaN or inf.")
  return sims


def p_value(sims, reference, method: str = "welch") -> float:
  """One-sided p-value of "the suspect is more similar than independents".

  Args:
    sims: ``(n,)`` the suspect's similarities, n >= 2.
    reference: ``(R, V)`` calibration independents' similarities (``welch``
      also takes a flat ``(N,)``).
    method: ``welch``, ``model``, ``model_z`` or ``empirical`` (module
      docstring).

  Returns:
    The p-value in [0, 1].
  """
  reference = _check_reference(reference, method)
  sims = _check_sims(sims)
  return _p_value(sims, reference, method)


def fisher_z(sims) -> np.ndarray:
  """Fisher's z = artanh(cosine), cosines clipped into (-1, 1) first."""
  bound = 1.0 - FISHER_Z_CLIP
  return np.arctanh(np.clip(np.asarray(sims, np.float64), -bound, bound))


def _p_value(sims: np.ndarray, reference: np.ndarray, method: str) -> float:
  if method == "model_z":
    sims, reference, method = fisher_z(sims), fisher_z(reference), "model"
  n = sims.size
  s = sims.mean()
  if method == "welch":
    ref = reference.ravel()
    if sims.var() == 0 and ref.var() == 0:
      # scipy answers NaN when neither sample varies; the means then decide.
      return 0.0 if s > ref.mean() else 1.0
    with warnings.catch_warnings():
      # scipy warns of precision loss when a sample is nearly constant (a
      # suspect identical to the victim); the statistic is still right.
      warnings.simplefilter("ignore", RuntimeWarning)
      return float(stats.ttest_ind(sims, ref, equal_var=False,
                                   alternative="greater").pvalue)
  num_models = reference.shape[0]
  if method == "empirical":
    ref_means = reference[:, :n].mean(1)
    return float((1 + np.sum(ref_means >= s)) / (num_models + 1))
  ref_means = reference.mean(1)
  var_means = ref_means.var(ddof=1)
  views = reference.shape[1]
  var_within = reference.var(1, ddof=1).mean() if views > 1 else 0.0
  var_between = max(var_means - var_within / views, 0.0)
  scale = math.sqrt(var_between + var_within / n + var_means / num_models)
  if scale == 0.0:
    return 0.0 if s > ref_means.mean() else 1.0
  t = (s - ref_means.mean()) / scale
  return float(stats.t.sf(t, df=num_models - 1))


def decide(p: float, mean_similarity: float, reference_mean: float, *,
           alpha: float = 0.01, upper: float = 0.5) -> str:
  """The verdict for a p-value.

  Args:
    p: the test's p-value.
    mean_similarity: the suspect's mean similarity.
    reference_mean: the reference's mean similarity.
    alpha: accuse when ``p < alpha``.
    upper: clear when ``p >= upper`` (or the mean is not above the
      reference mean).

  Returns:
    ``pirated``, ``not_pirated`` or ``inconclusive``.
  """
  if not 0.0 < alpha < upper <= 1.0:
    raise ValueError(
        f"Need 0 < alpha < upper <= 1, got alpha={alpha}, upper={upper}.")
  if p < alpha and mean_similarity > reference_mean:
    return "pirated"
  if p >= upper or mean_similarity <= reference_mean:
    return "not_pirated"
  return "inconclusive"


def views_for_confidence(sims, reference, confidence: float = 0.9999,
                         method: str = "welch") -> int | None:
  """Fewest views (first n of ``sims``) whose test reaches a confidence.

  Args:
    sims: ``(V,)`` the suspect's similarities in view order.
    reference: as in :func:`p_value`.
    confidence: the target ``1 - p``.
    method: the test.

  Returns:
    The smallest n >= 2 with ``1 - p >= confidence``, or None if even all
    views fall short.
  """
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
  reference = _check_reference(reference, method)
  sims = _check_sims(sims)
  for n in range(2, sims.size + 1):
    if 1.0 - _p_value(sims[:n], reference, method) >= confidence:
      return n
  return None


def verify_suspect(sims, reference, *, num_views: int = 20,
                   method: str = "welch", alpha: float = 0.01,
                   upper: float = 0.5,
                   target_confidence: float = 0.9999) -> dict[str, Any]:
  """The verdict on one suspect from its similarities.

  Args:
    sims: ``(V,)`` similarities of the suspect's views, in view order.
    reference: ``(R, V_ref)`` calibration independents' similarities.
    num_views: n, the first n views are tested (all if fewer).
    method: the test (module docstring).
    alpha: accuse when ``p < alpha``.
    upper: clear when ``p >= upper``.
    target_confidence: for ``views_for_target`` (0.9999 by default).

  Returns:
    JSON-able dict: views_used, similarity_mean / std / min / max,
    reference_mean, reference_std, method, p_value, confidence, verdict,
    alpha, views_for_target, target_confidence.
  """
  if num_views < 2:
    raise ValueError(f"num_views must be >= 2, got {num_views}.")
  reference = _check_reference(reference, method)
  all_sims = _check_sims(sims)
  used = all_sims[:num_views]
  p = _p_value(used, reference, method)
  ref_mean = float(reference.mean())
  return {
      "views_used": int(used.size),
      "similarity_mean": float(used.mean()),
      "similarity_std": float(used.std(ddof=1)),
      "similarity_min": float(used.min()),
      "similarity_max": float(used.max()),
      "reference_mean": ref_mean,
      "reference_std": float(reference.std()),
      "reference_models": int(reference.shape[0]) if reference.ndim == 2 else None,
      "method": method,
      "p_value": p,
      "confidence": 1.0 - p,
      "verdict": decide(p, float(used.mean()), ref_mean, alpha=alpha,
                        upper=upper),
      "alpha": alpha,
      "target_confidence": target_confidence,
      "views_for_target": views_for_confidence(
          all_sims, reference, target_confidence, method),
  }


# --------------------------------------------------------------------------
# Which models train the encoder, calibrate, and are evaluated.


def _family(m: dict) -> str:
  family = m.get("family")
  if family is None and m.get("kind") == VICTIM_FAMILY:
    return VICTIM_FAMILY
  if family not in POSITIVE_FAMILIES + (NEGATIVE_FAMILY, VICTIM_FAMILY):
    raise ValueError(
        f"Model {m.get('name', '?')!r} has family {family!r}; every model's "
        "meta needs family 'piracy', 'independent' or 'victim'.")
  return family


def encoder_labels(meta: Sequence[dict]) -> np.ndarray:
  """1 for the victim and piracy models, 0 for independents, ``(M,)``."""
  return np.array([0 if _family(m) == NEGATIVE_FAMILY else 1 for m in meta],
                  np.int32)


def train_encoder(fingerprints: np.ndarray, meta: Sequence[dict], train_idx,
                  config: dict) -> encoder_lib.TrainedEncoder:
  """Trains an encoder on the models ``train_idx`` of a zoo only.

  Args:
    fingerprints: ``(M, V, D)`` fingerprints of every model.
    meta: per model its metadata (``family``).
    train_idx: the models that train it (victim, piracy, independents).
    config: an :func:`uap_jax.verify.encoder.make_config` config.

  Returns:
    The trained encoder.
  """
  train_idx = np.asarray(train_idx)
  labels = encoder_labels([meta[i] for i in train_idx])
  return encoder_lib.train(np.asarray(fingerprints)[train_idx], labels, config)


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


def _check_fracs(train_frac: float, calib_frac: float) -> None:
  if not (0 < train_frac < 1 and 0 < calib_frac < 1
          and train_frac + calib_frac < 1):
    raise ValueError(
        f"Need 0 < train_frac, calib_frac and train_frac + calib_frac < 1, got "
        f"train_frac={train_frac}, calib_frac={calib_frac}.")


def _base_split(meta: Sequence[dict], seed: int, train_frac: float,
                calib_frac: float):
  _check_fracs(train_frac, calib_frac)
  families = [_family(m) for m in meta]
  rng = np.random.default_rng(seed)
  victims = [i for i, f in enumerate(families) if f == VICTIM_FAMILY]
  piracy = _interleave([i for i, f in enumerate(families)
                        if f in POSITIVE_FAMILIES], meta, rng)
  independent = _interleave([i for i, f in enumerate(families)
                             if f == NEGATIVE_FAMILY], meta, rng)
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
  return victims, (pir_train, pir_eval), (ind_train, ind_calib, ind_eval)


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
  independent = [i for i, f in enumerate(families) if f == NEGATIVE_FAMILY]
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


# --------------------------------------------------------------------------
# Evaluation over a zoo.


def evaluate(suspect_similarities: Sequence[np.ndarray] | np.ndarray,
             families: Sequence[str], kinds: Sequence[str],
             reference: np.ndarray, *, names: Sequence[str] | None = None,
             num_views: int = 20, method: str = "welch", alpha: float = 0.01,
             upper: float = 0.5,
             target_confidence: float = 0.9999) -> dict[str, Any]:
  """Detection quality over evaluated suspects.

  Args:
    suspect_similarities: per suspect its ``(V,)`` similarities (an ``(S, V)``
      array or a list).
    families: per suspect ``piracy`` or ``independent`` (others, e.g. the
      victim, get a row but no part in the metrics).
    kinds: per suspect its kind.
    reference: ``(R, V_ref)`` calibration independents' similarities.
    names: per suspect a name (default its index).
    num_views: n views tested per suspect.
    method: the test.
    alpha: accusation level.
    upper: clearing level.
    target_confidence: for ``views_for_target`` (0.9999).

  Returns:
    JSON-able dict: ``suspects`` (one :func:`verify_suspect` row each, with
    name, family, kind), ``score`` ('similarity_mean': the ROC score),
    ``auc`` per piracy kind and ``all`` (None where undefined),
    ``tpr_at_1pct_fpr``, ``tpr_at_5pct_fpr``, ``accused_independents``,
    ``num_independents``, ``accusation_rate``, ``detected_piracy``,
    ``num_piracy``, ``verdicts`` (counts per family), method, alpha,
    num_views.
  """
  sims = list(suspect_similarities)
  if not (len(sims) == len(families) == len(kinds)):
    raise ValueError(
        f"Got {len(sims)} similarity rows, {len(families)} families and "
        f"{len(kinds)} kinds; pass one of each per suspect.")
  names = list(names) if names is not None else [str(i) for i in range(len(sims))]
  if len(names) != len(sims):
    raise ValueError(f"Got {len(names)} names for {len(sims)} suspects.")
  rows = []
  for s, family, kind, name in zip(sims, families, kinds, names):
    row = verify_suspect(s, reference, num_views=num_views, method=method,
                         alpha=alpha, upper=upper,
                         target_confidence=target_confidence)
    rows.append(dict(name=str(name), family=str(family), kind=str(kind), **row))
  score = np.array([r["similarity_mean"] for r in rows])
  fam = np.array([str(f) for f in families], dtype=object)
  kinds_arr = np.array([str(k) for k in kinds], dtype=object)
  positive = np.isin(fam, POSITIVE_FAMILIES)
  negative = fam == NEGATIVE_FAMILY
  auc: dict[str, float | None] = {}

  def auc_of(mask_pos):
    if not mask_pos.any() or not negative.any():
      return None
    keep = mask_pos | negative
    return metrics.roc_auc(score[keep], mask_pos[keep].astype(int))

  for k in sorted(set(kinds_arr[positive])):
    auc[k] = auc_of(positive & (kinds_arr == k))
  auc["all"] = auc_of(positive)
  both = positive.any() and negative.any()
  keep = positive | negative
  tpr = {f: (metrics.tpr_at_fpr(score[keep], positive[keep].astype(int), f)
             if both else None) for f in (0.01, 0.05)}
  pirated = np.array([r["verdict"] == "pirated" for r in rows])
  verdicts = {}
  for f in sorted(set(fam)):
    verdicts[f] = {v: int(sum(1 for r in rows if r["family"] == f
                              and r["verdict"] == v))
                   for v in ("pirated", "inconclusive", "not_pirated")}
  return {
      "method": method,
      "alpha": alpha,
      "num_views": num_views,
      "score": "similarity_mean",
      "auc": auc,
      "tpr_at_1pct_fpr": tpr[0.01],
      "tpr_at_5pct_fpr": tpr[0.05],
      "num_independents": int(negative.sum()),
      "accused_independents": int((pirated & negative).sum()),
      "accusation_rate": (float((pirated & negative).sum() / negative.sum())
                          if negative.any() else None),
      "num_piracy": int(positive.sum()),
      "detected_piracy": int((pirated & positive).sum()),
      "verdicts": verdicts,
      "suspects": rows,
  }
