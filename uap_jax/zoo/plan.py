"""The zoo's plan: kinds, architectures, seeds and every hyper-parameter.

:func:`plan_zoo` turns the run's settings into one :class:`StackPlan` per
kind and architecture. A plan's ``hparams`` are the ONLY source of the
settings a zoo model trains with (:mod:`uap_jax.zoo.training` reads nothing
else but the run seed), and a saved stack is reused only when they match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Callable, Sequence

import numpy as np

from uap_jax import models
from uap_jax.adapters.base import ADAPTER_ARCH
from uap_jax import train
from uap_jax.config import Config, KINDS, PIRACY_KINDS

EXTRACTION_KINDS = ("extract_soft", "extract_hard", "extract_adv", "extract_mixup")
# Kinds that start from the victim's parameters.
DERIVED_KINDS = ("finetune_last", "finetune_all", "prune", "adv_train", "finetune_uat",
                 "fine_prune", "distill_removal")
# Training-data part of each kind (keys of RunContext.parts).
PART_OF_KIND = {
    **{k: "attacker" for k in PIRACY_KINDS},
    "independent_seed": "victim",
    "independent_arch": "victim",
    "independent_data": "independent",
}
# The attacker's augmented query copies: at most this many per image.
MAX_QUERY_COPIES = 8
# PGD steps of the attacker's substitute attack in extract_adv.
EXTRACT_ADV_PGD_STEPS = 5
# extract_adv: share of a later phase's queries spent on adversarial examples.
EXTRACT_ADV_QUERY_SHARE = 0.5


def family_of(kind: str) -> str:
  """The family of a zoo kind.

  Args:
    kind: a zoo kind (see ``uap_jax.config.KINDS``).

  Returns:
    ``piracy`` or ``independent``.
  """
  _check_kind(kind)
  return "piracy" if kind in PIRACY_KINDS else "independent"


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"Unknown kind {kind!r} (--zoo_kinds); choose from "
                     f"{', '.join(KINDS)}.")


def model_seed(run_seed: int, kind: str, arch: str, index: int) -> int:
  """A stable 31-bit seed for model ``index`` of a kind and architecture.

  Args:
    run_seed: the run's ``--seed``.
    kind: zoo kind.
    arch: architecture of the model.
    index: the model's index within its kind.

  Returns:
    An int in ``[0, 2**31)``, the same in every process (unlike ``hash``).
  """
  digest = hashlib.sha256(f"{run_seed}/{kind}/{arch}/{index}".encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def archs_of_kind(kind: str, victim_arch: str, zoo_archs: Sequence[str],
                  fresh_arch: str | None = None) -> list[str]:
  """Architectures that models of ``kind`` are spread over (round-robin).

  Extraction tries the victim's architecture and the others of
  ``zoo_archs``; distillation and ``independent_arch`` use ``zoo_archs``;
  every other kind keeps the victim's architecture.

  Args:
    kind: zoo kind.
    victim_arch: the victim's architecture.
    zoo_archs: ``--zoo_archs``.
    fresh_arch: the architecture of freshly initialised models that would
      otherwise have the victim's (extraction, independent_seed /
      independent_data); default ``victim_arch``. A given victim
      (``--victim``) cannot be initialised afresh: its run uses
      ``--victim_arch`` here.

  Returns:
    The architectures, without repeats, in round-robin order.
  """
  _check_kind(kind)
  fresh_arch = fresh_arch or victim_arch
  others = [a for a in dict.fromkeys(zoo_archs)]
  if kind in EXTRACTION_KINDS:
    return [fresh_arch] + [a for a in others if a != fresh_arch]
  if kind in ("distill", "independent_arch"):
    return others or [fresh_arch]
  if kind in DERIVED_KINDS:
    return [victim_arch]
  return [fresh_arch]


@dataclasses.dataclass(frozen=True)
class StackPlan:
  """The models of one kind and architecture, trained as one stack.

  Attributes:
    kind: zoo kind.
    arch: architecture of every model of the stack.
    names: unique model names (``{kind}_{index}``).
    seeds: per-model seeds (initialisation, batch order, augmentation).
    hparams: per-model hyper-parameters (JSON-native values): every setting
      the models train with.
    run_seed: the run's ``--seed``; with each model's seed it draws batch
      orders, the attacker's query copies and its adversarial phases.
  """
  kind: str
  arch: str
  names: tuple[str, ...]
  seeds: tuple[int, ...]
  hparams: tuple[dict, ...]
  run_seed: int = 0

  @property
  def family(self) -> str:
    return family_of(self.kind)

  @property
  def parent(self) -> str | None:
    return "victim" if self.family == "piracy" else None

  @property
  def part(self) -> str:
    return PART_OF_KIND[self.kind]

  @property
  def key(self) -> str:
    return f"{self.kind}__{self.arch}"

  @property
  def checkpoint_name(self) -> str:
    """Checkpoint directory name under ``WORKDIR/checkpoints``."""
    return f"zoo/{self.key}"

  def shared(self, name: str):
    """A hyper-parameter that every model of the stack shares.

    Args:
      name: its key in ``hparams``.

    Returns:
      Its value (raises ValueError when the models disagree, since one
      stack trains with one value).
    """
    values = {repr(h[name]) for h in self.hparams}
    if len(values) != 1:
      raise ValueError(f"{self.key}: models disagree on {name!r}: {sorted(values)}.")
    return self.hparams[0][name]

  def meta(self) -> list[dict]:
    """The stack's per-model metadata before training."""
    return [{"name": n, "kind": self.kind, "family": self.family,
             "parent": self.parent, "arch": self.arch, "part": self.part,
             "seed": int(s), "hparams": dict(h)}
            for n, s, h in zip(self.names, self.seeds, self.hparams)]


def training_cost(plan: StackPlan, part_sizes: dict[str, int],
                  flops_per_example: Callable[[float | None], float]) -> float:
  """Estimated cost of training a stack: FLOPs over all its epochs.

  Forward FLOPs per example times the examples a model trains on (the
  query budget of an extraction or distillation, else epochs over its data
  part), with every PGD step of adversarial training counted as another
  pass. An estimate for dividing stacks among processes, not a measurement.

  Args:
    plan: the stack.
    part_sizes: examples per data part.
    flops_per_example: forward FLOPs of one image for a width (``None``:
      the run's ``--width``).

  Returns:
    The cost (> 0).
  """
  total = 0.0
  for h in plan.hparams:
    part = h["part"] if "part" in h else plan.part
    examples = (int(h.get("query_budget") or 0)
                or float(h.get("epochs", 1.0)) * part_sizes.get(part, 1))
    passes = 1 + int(h.get("pgd_steps", 0)) if plan.kind == "adv_train" else 1
    total += max(examples, 1) * passes * flops_per_example(h.get("width"))
  return max(total, 1.0)


def _hparams(cfg: Config, kind: str, index: int) -> dict:
  """Hyper-parameters of model ``index`` of ``kind``: every setting that
  changes how it trains (a saved stack is reused only when they match)."""
  shared = {"batch_size": int(cfg.batch_size), "optimizer": cfg.optimizer,
            "weight_decay": float(cfg.weight_decay), "augment": cfg.augment}
  return {**_kind_hparams(cfg, kind, index), **shared}


def _kind_hparams(cfg: Config, kind: str, index: int) -> dict:
  lrs = [float(v) for v in cfg.finetune_lrs]
  if kind in ("finetune_last", "finetune_all"):
    return {"lr": lrs[index % len(lrs)], "epochs": float(cfg.finetune_epochs)}
  if kind == "prune":
    ratios = [float(v) for v in cfg.prune_ratios]
    return {"ratio": ratios[index % len(ratios)], "lr": lrs[0],
            "epochs": float(cfg.finetune_epochs)}
  if kind == "adv_train":
    return {"eps": float(cfg.adv_eps), "pgd_steps": train.TrainConfig.adv_steps,
            "lr": lrs[0], "epochs": float(cfg.finetune_epochs)}
  if kind in ("finetune_uat", "fine_prune", "distill_removal"):
    return _removal_hparams(cfg, kind, index)
  if kind in EXTRACTION_KINDS:
    h = {"lr": float(cfg.lr), "query_budget": int(cfg.query_budget),
         "epochs": float(cfg.zoo_epochs)}
    if kind == "extract_adv":
      h.update(rounds=int(cfg.extract_rounds), eps=float(cfg.adv_eps),
               pgd_steps=EXTRACT_ADV_PGD_STEPS, adv_query_share=EXTRACT_ADV_QUERY_SHARE)
    return h
  if kind == "distill":
    # The T^2-scaled soft loss has gradients up to T times those of cross-
    # entropy; at the run's lr a LeNet-5 distilled from a CIFAR-10 CNN
    # diverged (agreement 0.25 at T=4), at lr / sqrt(T) it reached 0.52
    # (MNIST MLP: 0.93 -> 0.92).
    return {"T": float(cfg.distill_temperature),
            "lr": float(cfg.lr) / math.sqrt(float(cfg.distill_temperature)),
            "query_budget": int(cfg.query_budget), "epochs": float(cfg.zoo_epochs)}
  if kind == "independent_seed":
    return {"lr": float(cfg.lr), "epochs": twin_epochs(cfg)}
  return {"lr": float(cfg.lr), "epochs": float(cfg.zoo_epochs)}


def twin_epochs(cfg: Config) -> float:
  """How long an innocent twin of the victim trains (``independent_seed``,
  the bank's ``twin`` recipe): as long as the victim, ``--epochs``.

  Trained for ``--zoo_epochs`` instead, twins never taught the encoder what
  an equally trained independent looks like, and a bank model trained about
  as long as the victim was accused (fresh CIFAR-10 and Fashion-MNIST,
  2026-12-07). A given victim (``--victim``) was not trained by this run, so
  its ``--epochs`` say nothing of it: its twins train for ``--zoo_epochs``.
  """
  return float(cfg.zoo_epochs if cfg.victim else cfg.epochs)


def _removal_hparams(cfg: Config, kind: str, index: int) -> dict:
  """A removal attack on a copy of the victim (:mod:`uap_jax.zoo.removal`):
  fine-tuning's rate and epochs, and the attack's own settings."""
  h = {"lr": float(cfg.finetune_lrs[0]), "epochs": float(cfg.finetune_epochs)}
  if kind == "fine_prune":
    ratios = [float(v) for v in cfg.prune_ratios]
    return {**h, "ratio": ratios[index % len(ratios)]}
  h.update(rounds=int(cfg.removal_rounds), xi=float(cfg.removal_xi or cfg.uap_xi))
  if kind == "distill_removal":
    h.update(samples=int(cfg.removal_samples), repel=float(cfg.removal_repel))
  return h


def check_config(cfg: Config) -> None:
  """Checks every zoo setting; raises ValueError naming the flag and the fix.

  Args:
    cfg: the run's settings.
  """
  for kind in cfg.zoo_kinds:
    _check_kind(kind)
  for arch in [cfg.victim_arch, *cfg.zoo_archs]:
    models.check_arch(arch)
  if cfg.zoo_count < 0:
    raise ValueError(f"--zoo_count must be >= 0, got {cfg.zoo_count}.")
  counts = cfg.kind_counts()  # also checks --zoo_counts
  if not cfg.prune_ratios and (counts.get("prune", 0) or counts.get("fine_prune", 0)):
    raise ValueError("--prune_ratios is empty but prune / fine_prune models are asked for: "
                     "give ratios such as 0.2,0.5,0.8.")
  for r in cfg.prune_ratios:
    if not 0.0 <= float(r) < 1.0:
      raise ValueError(f"--prune_ratios: {r} is outside [0, 1); a ratio is the "
                       "fraction of weights set to zero.")
  if not cfg.finetune_lrs:
    raise ValueError("--finetune_lrs is empty: give at least one learning rate.")
  for lr in cfg.finetune_lrs:
    if not float(lr) > 0:
      raise ValueError(f"--finetune_lrs: {lr} must be > 0.")
  for name in ("zoo_epochs", "finetune_epochs", "distill_temperature"):
    if not getattr(cfg, name) > 0:
      raise ValueError(f"--{name} must be > 0, got {getattr(cfg, name)}.")
  if cfg.query_budget < 0:
    raise ValueError(f"--query_budget must be >= 0 (0: all attacker data x "
                     f"--zoo_epochs), got {cfg.query_budget}.")
  if cfg.extract_rounds < 0:
    raise ValueError(f"--extract_rounds must be >= 0, got {cfg.extract_rounds}.")
  removal = [k for k in ("finetune_uat", "distill_removal") if counts.get(k, 0)]
  if removal and cfg.removal_rounds < 1:
    raise ValueError(f"--removal_rounds must be >= 1 for {', '.join(removal)}, got "
                     f"{cfg.removal_rounds}.")
  if removal and cfg.removal_xi < 0:
    raise ValueError(f"--removal_xi must be >= 0 (0: --uap_xi), got {cfg.removal_xi}.")
  if counts.get("distill_removal", 0) and not 0.0 <= cfg.removal_repel <= 1.0:
    raise ValueError(f"--removal_repel must be in [0, 1], got {cfg.removal_repel}.")
  if counts.get("distill_removal", 0) and cfg.removal_samples < 10:
    raise ValueError(f"--removal_samples must be >= 10 for distill_removal, got "
                     f"{cfg.removal_samples}.")
  if cfg.adv_eps <= 0 and (counts.get("adv_train", 0) or counts.get("extract_adv", 0)):
    raise ValueError(f"--adv_eps must be > 0 for adv_train / extract_adv, got "
                     f"{cfg.adv_eps}.")


def plan_zoo(cfg: Config, victim_arch: str | None = None,
             skip_kinds: Sequence[str] = (), *,
             victim_reinit: bool = False) -> list[StackPlan]:
  """Plans the zoo: one :class:`StackPlan` per kind and architecture.

  Args:
    cfg: the run's settings (checked here).
    victim_arch: the victim's architecture (default ``cfg.victim_arch``);
      for a given victim (``adapter``), fresh models have its architecture
      when ``victim_reinit``, else ``cfg.victim_arch``.
    skip_kinds: kinds not planned (white-box kinds of a victim that cannot
      be trained, see :func:`untrainable_kinds`).
    victim_reinit: whether a given victim's architecture can be initialised
      afresh (its adapter has an ``init_fn``).

  Returns:
    Plans in kind order (``--zoo_kinds``), skipping kinds with no models.
  """
  check_config(cfg)
  victim_arch = victim_arch or cfg.victim_arch
  fresh_arch = (cfg.victim_arch if victim_arch == ADAPTER_ARCH and not victim_reinit
                else victim_arch)
  plans = []
  for kind, count in cfg.kind_counts().items():
    if kind in skip_kinds:
      continue
    archs = archs_of_kind(kind, victim_arch, cfg.zoo_archs, fresh_arch)
    for arch in archs:
      index = [i for i in range(count) if archs[i % len(archs)] == arch]
      if not index:
        continue
      plans.append(StackPlan(
          kind=kind, arch=arch, names=tuple(f"{kind}_{i}" for i in index),
          seeds=tuple(model_seed(cfg.seed, kind, arch, i) for i in index),
          hparams=tuple(_hparams(cfg, kind, i) for i in index), run_seed=int(cfg.seed)))
  return plans


def untrainable_kinds(params, *, has_head: bool) -> dict[str, str]:
  """The white-box kinds a victim cannot be made into, and why.

  Args:
    params: the victim's trainable parameters with the leading model axis
      (any pytree; no leaves: it cannot be trained).
    has_head: whether its final layer is known.

  Returns:
    ``{kind: reason}`` for each of :data:`DERIVED_KINDS` that must be
    skipped (empty for every built-in architecture).
  """
  import jax
  if not jax.tree.leaves(params):
    reason = ("the given victim has no trainable parameters (its adapter's "
              "trainable is None)")
    return {k: reason for k in DERIVED_KINDS}
  if not has_head:
    reason = "the given victim's final layer is unknown (its adapter's head is None)"
    return {"finetune_last": reason, "fine_prune": reason}
  from uap_jax.zoo import removal  # pylint: disable=g-import-not-at-top
  try:
    removal.head_kernel(params, batch_dims=1)
  except ValueError:
    return {"fine_prune": "the given victim's final layer is not one dense "
                          "`head` kernel (F, C), whose input units fine-pruning cuts"}
  return {}


def extraction_steps(hparams: dict, n_images: int) -> int:
  """Training steps (each one batch of fresh queries) of an extraction.

  Args:
    hparams: the model's hyper-parameters (``query_budget``, ``epochs``,
      ``batch_size``).
    n_images: size of the attacker's image set.

  Returns:
    ``query_budget // batch_size`` steps, or ``epochs`` epochs over the
    attacker's images when the budget is 0.
  """
  batch_size = hparams["batch_size"]
  if hparams["query_budget"] > 0:
    return max(1, hparams["query_budget"] // batch_size)
  return max(1, int(round(hparams["epochs"] * train.steps_per_epoch(n_images, batch_size))))


def query_copies(hparams: dict, n_images: int) -> int:
  """Augmented copies per attacker image: enough that few queries repeat.

  Args:
    hparams: the model's hyper-parameters (``augment``, ``query_budget``,
      ``epochs``, ``batch_size``).
    n_images: the attacker's image count.

  Returns:
    ``0`` with ``--augment=false``; otherwise one copy per planned pass over
    the images beyond the first, at most ``MAX_QUERY_COPIES``.
  """
  if hparams["augment"] == "false":
    return 0
  passes = extraction_steps(hparams, n_images) * hparams["batch_size"] / max(1, n_images)
  return int(np.clip(math.ceil(passes) - 1, 0, MAX_QUERY_COPIES))
