"""An encoder that learns from the reference bank without grading its own pupils.

The zoo's few training independents teach the encoder little about what an
independent model looks like, so the reference models' similarities spread
wide and a pirate must sit far above them to be accused. The reference
bank's independents make the encoder's negatives many and varied; but a bank
model scored by an encoder that trained on it scores lower than an unseen
independent would, and a reference that flatters the null accuses innocents.

Cross-fitting keeps the reference honest. The bank is cut into groups by
architecture (``--enc_crossfit=arch``; or by recipe): encoder f trains on
the zoo's training part and every bank group but f. A bank model of group f
is scored by encoder f, which never saw a model of its architecture in the
bank, so each reference score is what an independent of an unseen
architecture gets; every other model (the zoo, any outside suspect) is
scored by the mean of the encoders, none of which saw it (the mean of F
encoders' scores spreads no wider under the null than one encoder's).
``cell`` cuts by architecture and recipe and trains each group's encoder
on the bank models that share neither. A key with a single value in the
bank cuts nothing (:func:`bank_groups` falls back to the recipe, then to
two halves); with no bank, or ``--enc_crossfit=none``, one encoder trains
on the zoo's training part alone (the paper's setting). ``auto`` (the
default) is ``arch`` for a bank of at least three architectures and
``none`` below.

What it does, measured (README, "Should the bank also train the
encoder?"): the reference tightens and more pirates are detected, but it
vouches only for the kinds of independent the bank holds. With a bank of
three architectures (the Fashion-MNIST and CIFAR-10 presets) ``arch``
detected more and accused no more held-out independents than ``none``; with
two (the quickstart) it accused bank models of the victim's architecture
judged with that architecture left out, where ``none`` accused none.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from absl import logging
import numpy as np

from uap_jax import config
from uap_jax.verify import encoder as encoder_lib
from uap_jax.verify import similarity
from uap_jax.verify import splits

MODES = config.CROSSFIT_MODES
# ``auto`` cross-fits by architecture from this many bank architectures on.
# With two, each encoder's bank negatives are all of the one other
# architecture, and it learns that architecture as the mark of innocence:
# on the quickstart (LeNet-5 and MLP) ``arch`` accused bank LeNet-5s, the
# victim's architecture, judged with every LeNet-5 left out (README).
AUTO_MIN_ARCHS = 3


def resolve(mode: str, meta: Sequence[dict], bank: Sequence[int]) -> str:
  """The cross-fitting ``mode`` comes to for this bank (``auto``: ``arch``
  with at least :data:`AUTO_MIN_ARCHS` architectures in it, else ``none``).

  Args:
    mode: :data:`MODES` (``--enc_crossfit``).
    meta: per model its metadata (``arch``).
    bank: the bank models' indices.

  Returns:
    The mode, never ``auto``.
  """
  if mode not in MODES:
    raise ValueError(f"Unknown cross-fitting {mode!r} (--enc_crossfit); choose from "
                     f"{', '.join(MODES)}.")
  if mode != "auto":
    return mode
  archs = {str(meta[i].get("arch")) for i in bank}
  return "arch" if len(archs) >= AUTO_MIN_ARCHS else "none"


@dataclasses.dataclass(frozen=True)
class CrossFitted:
  """Encoders cross-fitted over the reference bank.

  Attributes:
    encoders: one trained encoder per bank group (one in all without a bank).
    groups: per encoder the model indices (into the run's fingerprints) it
      scores alone: the bank group it never saw. Empty without a bank.
    by: what cut the bank (``arch``, ``recipe``, ``arch+recipe``,
      ``halves``; ``none`` without cross-fitting).
    mode: the cross-fitting done (``--enc_crossfit``, ``auto`` resolved), which the
      protocols' folds repeat.
  """
  encoders: list[encoder_lib.TrainedEncoder]
  groups: list[list[int]]
  by: str = "none"
  mode: str = "none"

  def __post_init__(self):
    if not self.encoders:
      raise ValueError("A cross-fitted encoder needs at least one encoder.")
    if self.groups and len(self.groups) != len(self.encoders):
      raise ValueError(f"{len(self.encoders)} encoders but {len(self.groups)} bank "
                       "groups: each encoder scores one group.")

  @property
  def config(self) -> dict:
    """The encoders' config (the same for every one)."""
    return self.encoders[0].config

  def similarities(self, fingerprints: np.ndarray, victim_fingerprints: np.ndarray,
                   rows: Sequence[int] | None = None) -> np.ndarray:
    """Every view's similarity to the victim, each model by encoders that never saw it.

    Args:
      fingerprints: ``(N, V, D)`` views of N models.
      victim_fingerprints: ``(V_victim, D)`` the victim's views.
      rows: the run's model index of each of the N models (bank models are
        then scored by their group's encoder); None for suspects from
        outside the run, scored by the mean of every encoder.

    Returns:
      ``(N, V)`` similarities in [-1, 1].
    """
    fingerprints = np.asarray(fingerprints)
    if rows is not None and len(rows) != fingerprints.shape[0]:
      raise ValueError(f"{len(rows)} row indices for {fingerprints.shape[0]} models.")
    per_encoder = np.stack([similarity.similarities(e, fingerprints, victim_fingerprints)
                            for e in self.encoders])
    out = per_encoder.mean(0)
    if rows is not None:
      position = {int(r): n for n, r in enumerate(rows)}
      for f, group in enumerate(self.groups):
        for model in group:
          if model in position:
            out[position[model]] = per_encoder[f, position[model]]
    return out.astype(np.float32)

  def describe(self, meta: Sequence[dict]) -> dict:
    """JSON-able: how the bank was cut and which models each encoder scores alone."""
    return {"mode": self.mode, "by": self.by, "encoders": len(self.encoders),
            "groups": [{"group": _group_name(meta, g, self.by), "models": len(g)}
                       for g in self.groups]}


def _group_name(meta: Sequence[dict], group: Sequence[int], by: str) -> str:
  if by == "halves":
    return f"{len(group)} models"
  return "/".join(",".join(sorted({str(meta[i].get(k)) for i in group}))
                  for k in by.split("+"))


def bank_groups(meta: Sequence[dict], bank: Sequence[int], mode: str
                ) -> tuple[list[list[int]], list[list[int]], str]:
  """The bank cut into groups, and what each group's encoder trains on.

  ``arch`` (``recipe``): a group per architecture (recipe), its encoder
  trained on every other. ``cell``: a group per architecture and recipe,
  its encoder trained on the bank models that share neither. A key with a
  single value in the bank (a held-out protocol may leave one architecture)
  cuts nothing and is dropped (``arch`` then falls back to ``recipe``); with
  no key left, two alternate halves.

  Args:
    meta: per model its metadata (``arch``, ``recipe``).
    bank: the bank models' indices.
    mode: :data:`MODES`.

  Returns:
    ``(groups, training, by)``: the groups (sorted), for each the bank models
    its encoder trains on, and what cut them (``arch``, ``recipe``,
    ``arch+recipe``, ``halves``); ``([], [], "none")`` for ``mode="none"``
    or a bank of fewer than 2 models.
  """
  mode = resolve(mode, meta, bank)
  if mode == "none" or len(bank) < 2:
    return [], [], "none"
  bank = sorted(int(i) for i in bank)
  wanted = {"arch": ("arch", "recipe"), "recipe": ("recipe",),
            "cell": ("arch", "recipe")}[mode]
  varied = [k for k in wanted if len({str(meta[i].get(k)) for i in bank}) >= 2]
  if mode == "arch" and "arch" in varied:
    varied = ["arch"]
  if not varied:
    return [bank[0::2], bank[1::2]], [bank[1::2], bank[0::2]], "halves"
  key = lambda i: tuple(str(meta[i].get(k)) for k in varied)
  cells: dict[tuple, list[int]] = {}
  for i in bank:
    cells.setdefault(key(i), []).append(i)
  groups = [cells[c] for c in sorted(cells)]
  training = [[i for i in bank if all(a != b for a, b in zip(key(i), c))]
              for c in sorted(cells)]
  return groups, training, "+".join(varied)


def train(fingerprints: np.ndarray, meta: Sequence[dict], train_idx: Sequence[int],
          bank: Sequence[int], encoder_config: dict, mode: str = "arch", *,
          verbose: bool = True) -> CrossFitted:
  """Encoders cross-fitted over the bank (one on ``train_idx`` alone without one).

  Args:
    fingerprints: ``(M, V, D)`` fingerprints of every model.
    meta: per model its metadata (``family``, ``arch``, ``recipe``).
    train_idx: the zoo models that train every encoder.
    bank: the bank models that may train them (as independents).
    encoder_config: the encoders' config.
    mode: how the bank is cut (:func:`bank_groups`).
    verbose: log each encoder (the protocols' many folds do not).

  Returns:
    The :class:`CrossFitted` encoders.
  """
  mode = resolve(mode, meta, bank)
  groups, training, by = bank_groups(meta, bank, mode)
  if not groups:
    return CrossFitted([splits.train_encoder(fingerprints, meta, train_idx, encoder_config,
                                             verbose=verbose)], [], "none", mode)
  encoders = []
  for f, (group, others) in enumerate(zip(groups, training)):
    logging.log(logging.INFO if verbose else logging.DEBUG,
                "Encoder %d/%d: the zoo's %d training models and %d bank models "
                "(none of %s %s).", f + 1, len(groups), len(train_idx), len(others),
                by, _group_name(meta, group, by))
    encoders.append(splits.train_encoder(fingerprints, meta, list(train_idx) + others,
                                         encoder_config, verbose=verbose))
  return CrossFitted(encoders, groups, by, mode)


def to_arrays(model: CrossFitted) -> tuple[dict, dict]:
  """``(tree, meta)`` to save: the encoders' states and histories, and the groups."""
  tree = {"states": [e.state for e in model.encoders],
          "histories": [np.asarray(e.history) for e in model.encoders]}
  return tree, {"config": model.config, "groups": model.groups, "by": model.by,
                "mode": model.mode}


def from_arrays(tree: dict, meta: dict) -> CrossFitted:
  """The :class:`CrossFitted` encoders saved by :func:`to_arrays`."""
  encoders = [encoder_lib.TrainedEncoder(state=s, config=meta["config"], history=np.asarray(h))
              for s, h in zip(tree["states"], tree["histories"])]
  return CrossFitted(encoders, [[int(i) for i in g] for g in meta.get("groups", [])],
                     str(meta.get("by", "none")), str(meta.get("mode", "none")))
