"""The reference bank: independent models of many architectures and recipes.

A verdict is only as honest as the population it compares a suspect with.
The zoo's own independents come in three kinds (the victim's architecture
with other seeds or other data, and ``--zoo_archs``); a real suspect is
none of them. The bank widens that population: for every architecture in
``--reference_archs`` plus the victim's and ``--zoo_archs`` (so that an
architecture is never evidence by itself), one stack per training recipe
(:data:`RECIPES`), its models spread over the three data parts (the
victim's, the independent one and the attacker's, all with true labels).

A given victim (``--victim``) whose adapter can initialise its architecture
afresh adds stacks of that architecture (``adapter``) under every recipe
that keeps the architecture (not ``narrow``): without them the only models
of its architecture would be the zoo's pirates and a few independents, and
an unrelated model of the same architecture would read as piracy. These
stacks are keyed by the architecture (:func:`architecture_digest`), never
by the victim's weights.

Nothing in the bank depends on the victim's weights, so a bank directory
(``--reference_bank=DIR``) is shared by every victim trained on the same
data and partition: stacks live under ``DIR/<data key>/`` and a stack is
reused whenever its plan matches (:func:`bank_key`, :func:`plan_matches`).
The ``twin`` recipe trains as long as the victim, so its stacks are kept per
training length (:func:`checkpoint_name`).
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import jax
import numpy as np

from uap_jax import models
from uap_jax.adapters.base import ADAPTER_ARCH
from uap_jax.config import Config
from uap_jax.runtime import stack as stack_lib
from uap_jax.zoo import kinds
from uap_jax.zoo.plan import StackPlan, model_seed, twin_epochs

REFERENCE_KIND = "reference"
# The parts a reference model may train on, cycled over a stack's models.
REFERENCE_PARTS = ("victim", "independent", "attacker")

# Recipe -> how it departs from the run's own training settings. Keys:
# optimizer/lr (absolute), epochs_scale (of --zoo_epochs), epochs_of
# ("victim": the victim's --epochs), width_scale, augment ("flip":
# the opposite of the run's), label_smoothing, part (every model on that
# data part instead of the parts cycled).
RECIPES: dict[str, dict] = {
    "base": {},
    # The closest an innocent model comes to the victim: its data, trained
    # as long as the victim (--epochs, not --zoo_epochs), another seed (the
    # victim's architecture among the bank's). Base cycles the data parts,
    # so without it the bank may hold one such model per architecture, or
    # none once an unfit one is left out (the quickstart's, seed 0,
    # 2026-12-04). The victim's training length matters: an independent
    # trained as long as the victim scores closer to it than the bank's
    # zoo-length models, and with the long recipe left out such a model was
    # accused on the fresh CIFAR-10 and Fashion-MNIST zoos (2026-12-07).
    "twin": {"part": "victim", "epochs_of": "victim"},
    "adam": {"optimizer": "adam", "lr": 1e-3},
    "augment": {"augment": "flip"},
    "smooth": {"label_smoothing": 0.1},
    "short": {"epochs_scale": 0.5},
    "long": {"epochs_scale": 2.0},
    "narrow": {"width_scale": 0.5},
}


def check_config(cfg: Config) -> None:
  """Checks the bank's settings; raises ValueError naming the flag and the fix.

  Args:
    cfg: the run's settings.
  """
  if cfg.reference_per_recipe < 0:
    raise ValueError(f"--reference_per_recipe must be >= 0 (0: no reference bank), "
                     f"got {cfg.reference_per_recipe}.")
  for arch in cfg.reference_archs:
    models.check_arch(arch)
  unknown = [r for r in cfg.reference_recipes if r not in RECIPES]
  if unknown:
    raise ValueError(f"--reference_recipes: unknown recipe(s) {', '.join(unknown)}; "
                     f"choose from {', '.join(RECIPES)}.")
  if cfg.reference_per_recipe and not cfg.reference_recipes:
    raise ValueError("--reference_recipes is empty: name at least one recipe "
                     f"({', '.join(RECIPES)}) or set --reference_per_recipe=0.")


def bank_archs(cfg: Config, victim_arch: str | None = None) -> list[str]:
  """The bank's architectures: the victim's, ``--zoo_archs``, then the rest.

  Args:
    cfg: the run's settings.
    victim_arch: the victim's architecture (default ``cfg.victim_arch``).

  Returns:
    Architecture names without repeats.
  """
  return list(dict.fromkeys([victim_arch or cfg.victim_arch, *cfg.zoo_archs,
                             *cfg.reference_archs]))


def _recipe_epochs(cfg: Config, recipe: dict) -> float:
  """A recipe's training epochs: the zoo's (scaled), or a twin's."""
  if recipe.get("epochs_of") == "victim":
    return twin_epochs(cfg)
  return float(cfg.zoo_epochs) * recipe.get("epochs_scale", 1.0)


def _recipe_hparams(cfg: Config, recipe: str) -> dict:
  r = RECIPES[recipe]
  augment = cfg.augment
  if r.get("augment") == "flip":
    augment = "flip"  # resolved against the data's default when training
  return {"recipe": recipe, "optimizer": r.get("optimizer", cfg.optimizer),
          "lr": float(r.get("lr", cfg.lr)),
          "epochs": _recipe_epochs(cfg, r),
          "width": float(cfg.width) * r.get("width_scale", 1.0),
          "label_smoothing": float(r.get("label_smoothing", 0.0)),
          "augment": augment, "batch_size": int(cfg.batch_size),
          "weight_decay": float(cfg.weight_decay)}


def plan_bank(cfg: Config, victim_arch: str | None = None) -> list[StackPlan]:
  """One stack per architecture and recipe; parts cycled over its models.

  Args:
    cfg: the run's settings (checked here).
    victim_arch: the victim's architecture (default ``cfg.victim_arch``);
      :data:`ADAPTER_ARCH` for a given victim that can be initialised afresh.

  Returns:
    The plans (empty with ``--reference_per_recipe=0``). Model names are
    ``reference_{arch}_{recipe}_{i}``; seeds derive from the run seed.
  """
  check_config(cfg)
  plans = []
  count = int(cfg.reference_per_recipe)
  for arch in bank_archs(cfg, victim_arch) if count else []:
    for recipe in cfg.reference_recipes:
      if arch == ADAPTER_ARCH and "width_scale" in RECIPES[recipe]:
        continue  # a given model's architecture has no width to scale
      h = _recipe_hparams(cfg, recipe)
      names = tuple(f"reference_{arch}_{recipe}_{i}" for i in range(count))
      plans.append(StackPlan(
          kind=REFERENCE_KIND, arch=arch, names=names,
          seeds=tuple(model_seed(cfg.seed, f"{REFERENCE_KIND}/{recipe}", arch, i)
                      for i in range(count)),
          hparams=tuple({**h, "part": RECIPES[recipe].get(
              "part", REFERENCE_PARTS[i % len(REFERENCE_PARTS)])} for i in range(count)),
          run_seed=int(cfg.seed)))
  return plans


def checkpoint_name(plan: StackPlan, arch_digest: str | None = None) -> str:
  """The stack's directory under the bank's data key.

  Args:
    plan: the stack's plan.
    arch_digest: for a given victim's architecture (:data:`ADAPTER_ARCH`),
      its :func:`architecture_digest`, so that victims of other
      architectures sharing the bank get stacks of their own.

  Returns:
    ``ARCH__RECIPE``, or ``adapter-DIGEST__RECIPE``; a recipe that trains as
    long as the victim (``twin``) adds its epochs, ``ARCH__twin-e15``, so
    that victims trained for different lengths sharing the bank keep a twin
    stack each instead of retraining one in turn.
  """
  arch = plan.arch
  if arch == ADAPTER_ARCH:
    if not arch_digest:
      raise ValueError("A bank stack of a given victim's architecture needs its "
                       "architecture digest.")
    arch = f"{arch}-{arch_digest}"
  recipe = plan.shared("recipe")
  if RECIPES.get(recipe, {}).get("epochs_of") == "victim":
    recipe += f"-e{plan.shared('epochs'):g}"
  return f"{arch}__{recipe}"


def architecture_digest(victim: stack_lib.Stack) -> str:
  """What identifies a given victim's architecture, not its weights.

  Args:
    victim: the victim stack.

  Returns:
    12 hex digits over the model's spec, its variables' tree structure, and
    every leaf's per-model shape and dtype.
  """
  h = hashlib.sha256(str(victim.arch_kwargs.get("spec", victim.arch)).encode())
  variables = (victim.params, victim.rest)
  h.update(str(jax.tree.structure(variables)).encode())
  for leaf in jax.tree.leaves(variables):
    h.update(f"{tuple(np.shape(leaf)[1:])}/{np.asarray(leaf).dtype}".encode())
  return h.hexdigest()[:12]


def bank_key(dataset: str, image_shape: Sequence[int], num_classes: int,
             parts: dict[str, np.ndarray]) -> str:
  """The data a bank is valid for: data set, shape, classes and partition.

  Args:
    dataset: the ``--dataset`` spec.
    image_shape: ``(H, W, C)``.
    num_classes: C.
    parts: the run's data parts (index arrays).

  Returns:
    16 hex digits; banks of runs with the same key are interchangeable.
  """
  h = hashlib.sha256(f"{dataset}/{tuple(image_shape)}/{num_classes}".encode())
  for name in REFERENCE_PARTS:
    h.update(name.encode())
    h.update(np.ascontiguousarray(np.asarray(parts[name], np.int64)).tobytes())
  return h.hexdigest()[:16]


def plan_matches(plan: StackPlan, saved_models: list[dict]) -> bool:
  """Whether a saved bank stack holds exactly the planned models.

  Args:
    plan: the bank's plan of the stack.
    saved_models: the saved stack's per-model metadata.

  Returns:
    True when names, seeds, architecture and hyper-parameters match.
  """
  want = [(m["name"], m["seed"], m["arch"], m["hparams"]) for m in plan_meta(plan)]
  have = [(m.get("name"), m.get("seed"), m.get("arch"), m.get("hparams"))
          for m in saved_models]
  return want == have


def plan_meta(plan: StackPlan) -> list[dict]:
  """The stack's per-model metadata before training (family independent)."""
  return [{"name": n, "kind": REFERENCE_KIND, "family": "independent", "parent": None,
           "arch": plan.arch, "part": h["part"], "recipe": h["recipe"],
           "seed": int(s), "hparams": dict(h)}
          for n, s, h in zip(plan.names, plan.seeds, plan.hparams)]


def _targets(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
  """Integer labels, or label-smoothed distributions (trained as ``soft``)."""
  if smoothing <= 0:
    return labels
  one_hot = np.eye(num_classes, dtype=np.float32)[labels]
  return one_hot * (1.0 - smoothing) + smoothing / num_classes


def train_bank_stack(plan: StackPlan, x_pool: np.ndarray, y_pool: np.ndarray,
                     parts: dict[str, np.ndarray], *, data_augment: bool,
                     arch_kwargs: dict, strategy: str = "auto",
                     victim: stack_lib.Stack | None = None) -> tuple[stack_lib.Stack, int]:
  """Trains one bank stack from scratch on true labels.

  Args:
    plan: a plan of :func:`plan_bank`.
    x_pool: uint8 training images that ``parts`` index.
    y_pool: their integer labels.
    parts: the run's data parts.
    data_augment: the data's own augmentation default (what ``augment``
      recipes flip).
    arch_kwargs: the run's build arguments (the recipe may scale ``width``).
    strategy: model-axis strategy.
    victim: the victim stack, needed (only) for :data:`ADAPTER_ARCH` plans,
      whose models are its architecture initialised afresh.

  Returns:
    The trained stack (meta from :func:`plan_meta`, ``train_examples`` set)
    and its step count.
  """
  augment = {"true": True, "false": False, "auto": data_augment,
             "flip": not data_augment}[plan.shared("augment")]
  smoothing = plan.shared("label_smoothing")
  meta = plan_meta(plan)
  index = [np.asarray(parts[h["part"]]) for h in plan.hparams]
  for m, ix in zip(meta, index):
    m["train_examples"] = int(len(ix))
  build = {**arch_kwargs, "width": plan.shared("width")}
  job = kinds.Job(plan=plan, victim=victim, x_pool=x_pool,
                  y_pool=y_pool, idx=index[0], meta=meta, augment=augment,
                  arch_kwargs=build, strategy=strategy)
  tc = kinds.train_config(plan, augment=augment,
                          target="soft" if smoothing > 0 else "labels")
  labels = [_targets(y_pool[ix], build["num_classes"], smoothing) for ix in index]
  return job.fit(job.fresh(), x_pool, index, tc, lrs=job.lrs, labels=labels,
                 seed=plan.run_seed)
