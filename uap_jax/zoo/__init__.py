"""The suspect zoo: how each kind of pirated or independent model is made.

A zoo is planned from the run's :class:`~uap_jax.config.Config` as a list of
:class:`StackPlan` (one per kind and architecture: the models of a plan train
as ONE stack), then each plan is trained by :func:`train_plan`.

Piracy kinds (family ``piracy``, parent ``victim``):

* ``extract_soft``: a fresh model queries the victim's probability API on the
  attacker's images and augmented copies of them (translations; flips for
  colour images), every batch answered afresh;
* ``extract_hard``: the same through a label-only API (:func:`label_only_api`:
  the student never sees a probability);
* ``extract_adv``: ``extract_soft`` in ``1 + extract_rounds`` phases (the
  same query budget); before each later phase the attacker crafts PGD
  examples of its own substitute around some of its images, which make up
  about half of the phase's queries and which the victim answers;
* ``finetune_last`` / ``finetune_all``: the victim fine-tuned on the
  attacker's labelled data (head only / all layers), lrs cycled;
* ``prune``: global magnitude pruning of the victim (ratios cycled), then
  fine-tuning with the pruned weights held at zero;
* ``adv_train``: the victim fine-tuned with PGD adversarial training;
* ``distill``: knowledge distillation at temperature T into another
  architecture on the attacker's images.

Independent kinds (family ``independent``, parent ``None``), trained from
scratch: ``independent_seed`` (victim's architecture and data part, other
seeds), ``independent_arch`` (``zoo_archs``, victim's data part),
``independent_data`` (victim's architecture, the disjoint ``independent``
part).

Extraction and distillation spend ``--query_budget`` queries (0: the
attacker's images x ``--zoo_epochs``), one batch of fresh API answers per
step, over the attacker's images plus up to ``MAX_QUERY_COPIES`` augmented
copies of each. An extraction is only a threat when it is faithful: the
``zoo`` stage logs each extracted model's agreement with the victim next to
that of independents trained on the victim's own data.

Every seed derives from the run seed by a stable hash of (seed, kind, arch,
index), so a rerun reproduces the zoo.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from uap_jax.runtime import engine
from uap_jax import models
from uap_jax.runtime import stack as stack_lib
from uap_jax import train
from uap_jax.config import Config, INDEPENDENT_KINDS, KINDS, PIRACY_KINDS

PyTree = Any

EXTRACTION_KINDS = ("extract_soft", "extract_hard", "extract_adv")
# Kinds that start from the victim's parameters.
DERIVED_KINDS = ("finetune_last", "finetune_all", "prune", "adv_train")
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


def archs_of_kind(kind: str, victim_arch: str, zoo_archs: Sequence[str]) -> list[str]:
  """Architectures that models of ``kind`` are spread over (round-robin).

  Extraction tries the victim's architecture and the others of
  ``zoo_archs``; distillation and ``independent_arch`` use ``zoo_archs``;
  every other kind keeps the victim's architecture.

  Args:
    kind: zoo kind.
    victim_arch: the victim's architecture.
    zoo_archs: ``--zoo_archs``.

  Returns:
    The architectures, without repeats, in round-robin order.
  """
  _check_kind(kind)
  others = [a for a in dict.fromkeys(zoo_archs)]
  if kind in EXTRACTION_KINDS:
    return [victim_arch] + [a for a in others if a != victim_arch]
  if kind in ("distill", "independent_arch"):
    return others or [victim_arch]
  return [victim_arch]


@dataclasses.dataclass(frozen=True)
class StackPlan:
  """The models of one kind and architecture, trained as one stack.

  Attributes:
    kind: zoo kind.
    arch: architecture of every model of the stack.
    names: unique model names (``{kind}_{index}``).
    seeds: per-model seeds (initialisation, batch order, augmentation).
    hparams: per-model hyper-parameters (JSON-native values).
  """
  kind: str
  arch: str
  names: tuple[str, ...]
  seeds: tuple[int, ...]
  hparams: tuple[dict, ...]

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

  def meta(self) -> list[dict]:
    """The stack's per-model metadata before training."""
    return [{"name": n, "kind": self.kind, "family": self.family,
             "parent": self.parent, "arch": self.arch, "part": self.part,
             "seed": int(s), "hparams": dict(h)}
            for n, s, h in zip(self.names, self.seeds, self.hparams)]


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
  return {"lr": float(cfg.lr), "epochs": float(cfg.zoo_epochs)}


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
  if not cfg.prune_ratios and counts.get("prune", 0):
    raise ValueError("--prune_ratios is empty but prune models are asked for: "
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
  if cfg.adv_eps <= 0 and (counts.get("adv_train", 0) or counts.get("extract_adv", 0)):
    raise ValueError(f"--adv_eps must be > 0 for adv_train / extract_adv, got "
                     f"{cfg.adv_eps}.")


def plan_zoo(cfg: Config, victim_arch: str | None = None) -> list[StackPlan]:
  """Plans the zoo: one :class:`StackPlan` per kind and architecture.

  Args:
    cfg: the run's settings (checked here).
    victim_arch: the victim's architecture (default ``cfg.victim_arch``).

  Returns:
    Plans in kind order (``--zoo_kinds``), skipping kinds with no models.
  """
  check_config(cfg)
  victim_arch = victim_arch or cfg.victim_arch
  plans = []
  for kind, count in cfg.kind_counts().items():
    archs = archs_of_kind(kind, victim_arch, cfg.zoo_archs)
    for arch in archs:
      index = [i for i in range(count) if archs[i % len(archs)] == arch]
      if not index:
        continue
      plans.append(StackPlan(
          kind=kind, arch=arch, names=tuple(f"{kind}_{i}" for i in index),
          seeds=tuple(model_seed(cfg.seed, kind, arch, i) for i in index),
          hparams=tuple(_hparams(cfg, kind, i) for i in index)))
  return plans


# ---------------------------------------------------------------------------
# Teacher APIs and small pieces.


@functools.lru_cache(maxsize=None)
def label_only_api(graphdef) -> stack_lib.LogitsFn:
  """A label-only API over one model: ``(variables, x) -> one-hot top-1``.

  Extraction through it sees the victim's top-1 label and nothing else.
  Cached per graphdef so jitted callers compile once.

  Args:
    graphdef: the victim's module structure.

  Returns:
    ``answer(variables, x) -> (N, C)`` one-hot float labels.
  """
  logits_fn = stack_lib.eval_logits_fn(graphdef)

  def answer(variables, x):
    logits = logits_fn(variables, x)
    return jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1])
  return answer


def single_variables(stack: stack_lib.Stack, i: int = 0) -> tuple[PyTree, PyTree]:
  """The variables of one model of a stack.

  Args:
    stack: the models.
    i: which model.

  Returns:
    ``(params, rest)`` of model ``i`` without the model axis.
  """
  return jax.tree.map(lambda a: a[i], stack.variables)


def broadcast_victim(victim: stack_lib.Stack, meta: list[dict]) -> stack_lib.Stack:
  """A stack of ``len(meta)`` copies of the victim's parameters.

  Args:
    victim: a stack holding the victim as model 0.
    meta: the copies' metadata.

  Returns:
    The stack of copies (the victim's architecture and build arguments).
  """
  k = len(meta)
  copies = lambda t: jax.tree.map(
      lambda a: jnp.broadcast_to(a[:1], (k,) + a.shape[1:]).copy(), t)
  return dataclasses.replace(victim, params=copies(victim.params),
                             rest=copies(victim.rest), meta=[dict(m) for m in meta])


def agreement(stack: stack_lib.Stack, reference_labels: np.ndarray, x: np.ndarray,
              strategy: str = "auto") -> np.ndarray:
  """Top-1 agreement of every model of ``stack`` with reference labels.

  Args:
    stack: the models.
    reference_labels: ``(N,)`` top-1 labels of the reference (the victim).
    x: ``(N, H, W, C)`` images.
    strategy: model-axis strategy.

  Returns:
    ``(K,)`` fractions of ``x`` on which each model's top-1 equals the reference.
  """
  pred = stack_lib.predict(stack, x, strategy=strategy).argmax(-1)
  return (pred == np.asarray(reference_labels)[None]).mean(-1)


def zero_fraction(params: PyTree) -> float:
  """Sparsity of one model.

  Args:
    params: parameters of ONE model (no model axis).

  Returns:
    The fraction of exact zeros among its prunable weights (conv and linear
    kernels, as in ``train.magnitude_mask``).
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  weights = [np.asarray(v).ravel() for p, v in flat if train.prunable(p)]
  w = np.concatenate(weights)
  return float(np.mean(w == 0))


def _pgd_fn(graphdef, strategy: str):
  """PGD (L-inf, random start) of every substitute of a stack on shared x,
  untargeted against each substitute's own top-1."""
  return _pgd_fn_cached(graphdef, engine.resolve(strategy))


@functools.lru_cache(maxsize=None)
def _pgd_fn_cached(graphdef, strategy: str):
  logits_fn = stack_lib.eval_logits_fn(graphdef)

  def one(variables, key, x, eps):
    y = jnp.argmax(logits_fn(variables, x), -1)
    step_size = 2.5 * eps / EXTRACT_ADV_PGD_STEPS

    def loss(xa):
      logp = jax.nn.log_softmax(logits_fn(variables, xa))
      return -jnp.sum(jnp.take_along_axis(logp, y[:, None], -1))

    def body(_, xa):
      xa = xa + step_size * jnp.sign(jax.grad(loss)(xa))
      return jnp.clip(jnp.clip(xa, x - eps, x + eps), 0.0, 1.0)

    start = jnp.clip(x + jax.random.uniform(key, x.shape, minval=-eps, maxval=eps), 0, 1)
    return jax.lax.fori_loop(0, EXTRACT_ADV_PGD_STEPS, body, start)

  return engine.over_models(one, strategy, in_axes=(0, 0, None, None))


def substitute_adversarials(stack: stack_lib.Stack, x: np.ndarray, eps: float,
                            key: jax.Array, *, batch_size: int = 500,
                            strategy: str = "auto") -> np.ndarray:
  """PGD examples of each model of a stack around the same images.

  Args:
    stack: the attacker's substitutes.
    x: uint8 ``(N, H, W, C)`` query images.
    eps: L-inf radius in pixel units of [0, 1].
    key: PRNG key of the random starts.
    batch_size: images per compiled call.
    strategy: model-axis strategy.

  Returns:
    uint8 ``(K, N, H, W, C)``: the examples as images an API would accept.
  """
  fn = _pgd_fn(stack.graphdef, strategy)
  keys = jax.random.split(key, stack.size)
  batch_size = min(batch_size, len(x))
  outs = []
  for b, start in enumerate(range(0, len(x), batch_size)):
    xb = x[start:start + batch_size]
    n = len(xb)
    # One compiled shape: the last batch is padded with copies, then cut.
    xb = np.concatenate([xb, np.repeat(xb[:1], batch_size - n, axis=0)])
    step_keys = jnp.stack([jax.random.fold_in(k, b) for k in keys])
    out = fn(stack.variables, step_keys, stack_lib.to_float(xb), jnp.float32(eps))
    outs.append(np.asarray(out)[:, :n])
  return np.round(np.concatenate(outs, axis=1) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------
# Training one plan.


def query_copies(cfg: Config, n_images: int) -> int:
  """Augmented copies per attacker image: enough that few queries repeat.

  Args:
    cfg: settings (``augment``, ``query_budget``, ``zoo_epochs``, ``batch_size``).
    n_images: the attacker's image count.

  Returns:
    ``0`` with ``--augment=false``; otherwise one copy per planned pass over
    the images beyond the first, at most ``MAX_QUERY_COPIES``.
  """
  if cfg.augment == "false":
    return 0
  passes = extraction_steps(cfg, n_images) * cfg.batch_size / max(1, n_images)
  return int(np.clip(math.ceil(passes) - 1, 0, MAX_QUERY_COPIES))


def augmented_queries(x: np.ndarray, copies: int, rng: np.random.Generator, *,
                      flip: bool) -> np.ndarray:
  """Random translations (and flips) of the attacker's images.

  Translations shift by up to an eighth of the image size (reflect-padded);
  flips only where mirror images are natural (``flip``: colour photographs,
  not digits).

  Args:
    x: uint8 ``(N, H, W, C)`` images.
    copies: augmented copies per image.
    rng: numpy generator (seeded by the caller).
    flip: also mirror half of the copies horizontally.

  Returns:
    uint8 ``(copies * N, H, W, C)``, copy ``j`` of image ``i`` at ``j * N + i``.
  """
  n, h, w, _ = x.shape
  shift = min(h, w) // 8
  if copies == 0 or n == 0:
    return x[:0]
  padded = np.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
  out = np.empty((copies * n,) + x.shape[1:], x.dtype)
  for j in range(copies):
    offsets = rng.integers(0, 2 * shift + 1, (n, 2))
    mirror = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    for i in range(n):
      img = padded[i, offsets[i, 0]:offsets[i, 0] + h, offsets[i, 1]:offsets[i, 1] + w]
      out[j * n + i] = img[:, ::-1] if mirror[i] else img
  return out


def _train_config(cfg: Config, *, augment: bool, **overrides) -> train.TrainConfig:
  base = dict(epochs=cfg.zoo_epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer,
              lr=cfg.lr, weight_decay=cfg.weight_decay, augment=augment,
              log_every=10 ** 9)
  base.update(overrides)
  return train.TrainConfig(**base)


def _steps(n: int, batch_size: int, epochs: float) -> int:
  """Training steps of ``train.train_stack`` for a part of ``n`` examples."""
  return max(1, int(round(epochs * max(1, math.ceil(n / batch_size)))))


def _epochs_for_steps(n: int, batch_size: int, steps: int) -> float:
  return steps / max(1, math.ceil(n / batch_size))


def extraction_steps(cfg: Config, n_queries_data: int) -> int:
  """Training steps (each one batch of fresh queries) of an extraction.

  Args:
    cfg: settings (``query_budget``, ``zoo_epochs``, ``batch_size``).
    n_queries_data: size of the attacker's image set.

  Returns:
    ``query_budget // batch_size`` steps, or ``zoo_epochs`` epochs over the
    attacker's images when the budget is 0.
  """
  if cfg.query_budget > 0:
    return max(1, cfg.query_budget // cfg.batch_size)
  return _steps(n_queries_data, cfg.batch_size, cfg.zoo_epochs)


def train_plan(plan: StackPlan, victim: stack_lib.Stack, x_pool: np.ndarray,
               y_pool: np.ndarray, parts: dict[str, np.ndarray], cfg: Config, *,
               augment: bool, arch_kwargs: dict,
               eval_data: tuple[np.ndarray, np.ndarray] | None = None,
               strategy: str = "auto") -> tuple[stack_lib.Stack, dict]:
  """Trains the models of one plan as a stack.

  Args:
    plan: what to train.
    victim: stack holding the victim (model 0).
    x_pool: uint8 training images ``(N, H, W, C)`` that ``parts`` index.
    y_pool: ``(N,)`` integer labels of ``x_pool``.
    parts: ``victim`` / ``attacker`` / ``independent`` index arrays.
    cfg: the run's settings.
    augment: random crop + flip for label training (fine-tuning,
      independents); extraction and distillation query translated copies of
      the attacker's images (:func:`query_copies`), mirrored too when
      ``augment``.
    arch_kwargs: build arguments of fresh models.
    eval_data: ``(x_test, y_test)``: sets ``test_accuracy`` and ``agreement``
      (with the victim's top-1) in each model's meta.
    strategy: model-axis strategy.

  Returns:
    The trained stack (meta completed with ``train_examples``, ``queries``
    for teacher kinds, ``test_accuracy``, ``agreement``) and an info dict
    (``seconds``, ``steps``).
  """
  kind = plan.kind
  idx = np.asarray(parts[plan.part])
  if len(idx) == 0:
    raise ValueError(f"The {plan.part!r} data part is empty; {kind} needs it: raise "
                     f"--{plan.part}_frac.")
  meta = plan.meta()
  for m in meta:
    m["train_examples"] = int(len(idx))
  victim_vars = single_variables(victim)
  # Batch order and augmentation follow each model's own seed (train_stack).
  seed = cfg.seed
  start, cpu_start = time.time(), time.process_time()
  steps = 0

  def fit(stack, *args, **kwargs):
    return train.train_stack(stack, *args, strategy=strategy, desc=plan.key, **kwargs)

  if kind in DERIVED_KINDS:
    student = broadcast_victim(victim, meta)
    masks = None
    if kind == "prune":
      masks = engine.stack_trees([
          train.magnitude_mask(jax.tree.map(lambda a, i=i: a[i], student.params),
                               m["hparams"]["ratio"]) for i, m in enumerate(meta)])
      student = dataclasses.replace(
          student, params=jax.tree.map(lambda p, q: p * q, student.params, masks))
    tc = _train_config(cfg, augment=augment, epochs=cfg.finetune_epochs,
                       train_last_only=kind == "finetune_last",
                       adv_eps=cfg.adv_eps if kind == "adv_train" else 0.0)
    student, hist = fit(student, x_pool, [idx] * len(meta), tc,
                        lrs=[m["hparams"]["lr"] for m in meta],
                        labels=[y_pool[idx]] * len(meta), masks=masks, seed=seed)
    steps += hist["steps"]

  elif kind in EXTRACTION_KINDS or kind == "distill":
    student = stack_lib.create(plan.arch, list(plan.seeds), meta=meta, **arch_kwargs)
    if kind == "extract_hard":
      teacher = (label_only_api(victim.graphdef), victim_vars)
      target = "teacher_hard"
    else:
      teacher = (victim.logits_fn, victim_vars)
      target = "distill" if kind == "distill" else "teacher_soft"
    total = extraction_steps(cfg, len(idx))
    rounds = cfg.extract_rounds if kind == "extract_adv" else 0
    # The query images: the attacker's own plus augmented copies, appended
    # after x_pool so that indices below len(x_pool) still name the part.
    copies = augmented_queries(
        x_pool[idx], query_copies(cfg, len(idx)),
        np.random.default_rng([cfg.seed, plan.seeds[0]]), flip=augment)
    pool = np.concatenate([x_pool, copies])
    index = [np.concatenate([idx, len(x_pool) + np.arange(len(copies))]) for _ in meta]
    # extract_adv splits the same query budget over 1 + rounds phases.
    phase_steps = [total // (rounds + 1) + (1 if r < total % (rounds + 1) else 0)
                   for r in range(rounds + 1)]
    query_index = index
    adv_index = [np.zeros((0,), np.int64) for _ in meta]
    for r, n_steps in enumerate(phase_steps):
      if r > 0:
        # Around a random subset of its images, sized so that each new
        # example is queried about twice in the phase, the attacker crafts
        # PGD examples of its own substitute; repeated indices make them
        # EXTRACT_ADV_QUERY_SHARE of the phase's queries.
        share = EXTRACT_ADV_QUERY_SHARE
        rng = np.random.default_rng([cfg.seed, plan.seeds[0], r])
        n_around = min(len(idx), max(1, int(n_steps * cfg.batch_size * share / 2)))
        around = np.sort(rng.choice(idx, n_around, replace=False))
        key = jax.random.fold_in(jax.random.key(seed), plan.seeds[0] + r)
        adv = substitute_adversarials(student, x_pool[around], cfg.adv_eps, key,
                                      strategy=strategy)
        base = len(pool)
        pool = np.concatenate([pool, adv.reshape((-1,) + adv.shape[2:])])
        adv_index = [np.concatenate([a, base + i * len(around) + np.arange(len(around))])
                     for i, a in enumerate(adv_index)]
        repeat = max(1, round(len(query_index[0]) * share / (1 - share) / len(adv_index[0])))
        index = [np.concatenate([q, np.tile(a, repeat)])
                 for q, a in zip(query_index, adv_index)]
        adversarial_added = len(adv_index[0])
      if n_steps == 0:
        continue
      tc = _train_config(cfg, augment=False, target=target, lr=meta[0]["hparams"]["lr"],
                         epochs=_epochs_for_steps(max(map(len, index)), cfg.batch_size,
                                                  n_steps),
                         temperature=cfg.distill_temperature if kind == "distill" else 1.0)
      student, hist = fit(student, pool, index, tc, teacher=teacher, seed=seed + r)
      steps += hist["steps"]
    for m in student.meta:
      m["queries"] = int(steps * cfg.batch_size)
      m["query_images"] = int(len(idx) + len(copies))
      if rounds:
        m["adversarial_images_added"] = int(adversarial_added)

  else:  # independents: from scratch on labels.
    student = stack_lib.create(plan.arch, list(plan.seeds), meta=meta, **arch_kwargs)
    tc = _train_config(cfg, augment=augment)
    student, hist = fit(student, x_pool, [idx for _ in meta], tc,
                        labels=[y_pool[idx] for _ in meta], seed=seed)
    steps += hist["steps"]

  if eval_data is not None:
    x_test, y_test = eval_data
    victim_top1 = stack_lib.predict(victim.select([0]), x_test,
                                    strategy=strategy)[0].argmax(-1)
    acc = stack_lib.accuracy(student, x_test, y_test, strategy=strategy)
    agree = agreement(student, victim_top1, x_test, strategy=strategy)
    for m, a, g in zip(student.meta, acc, agree):
      m["test_accuracy"] = float(a)
      m["agreement"] = float(g)
  # Wall and CPU time of the whole stack: training and evaluation.
  seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
  for m in student.meta:
    m["train_seconds"] = seconds
    m["train_cpu_seconds"] = cpu_seconds
  return student, {"seconds": seconds, "cpu_seconds": cpu_seconds, "steps": steps}


# ---------------------------------------------------------------------------
# Identity of the victim, resuming, loading, reporting.


def victim_digest(victim: stack_lib.Stack) -> str:
  """A short hash of the victim's variables.

  A zoo stack records the victim it was made from, so a retrained victim
  invalidates it.

  Args:
    victim: stack holding the victim as model 0.

  Returns:
    16 hex digits of the SHA-256 of its parameters and statistics.
  """
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(single_variables(victim)):
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()[:16]


def plan_matches(plan: StackPlan, saved_models: list[dict], digest: str) -> bool:
  """Whether a saved stack can be reused for a plan.

  Args:
    plan: what the zoo wants now.
    saved_models: the per-model metadata of the saved stack.
    digest: :func:`victim_digest` of the current victim.

  Returns:
    True when the saved stack holds exactly the planned models (names,
    seeds, architecture, data part, hyper-parameters), made from this victim.
  """
  want = [(m["name"], m["seed"], m["arch"], m["part"], m["hparams"]) for m in plan.meta()]
  have = [(m.get("name"), m.get("seed"), m.get("arch"), m.get("part"), m.get("hparams"))
          for m in saved_models]
  return want == have and all(m.get("victim_digest") == digest for m in saved_models)


def zoo_entry(meta: dict) -> dict:
  """The ``zoo.json`` entry of one model.

  Args:
    meta: the model's metadata in its stack.

  Returns:
    Its identity, hyper-parameters, data, accuracy, agreement and timing.
  """
  keys = ("name", "kind", "family", "parent", "arch", "part", "seed", "hparams",
          "train_examples", "queries", "query_images", "adversarial_images_added", "test_accuracy",
          "agreement", "train_seconds", "train_cpu_seconds", "checkpoint")
  return {k: meta[k] for k in keys if k in meta}


def format_table(entries: list[dict]) -> str:
  """A plain-text table of zoo entries.

  Args:
    entries: ``zoo.json`` model entries.

  Returns:
    Aligned columns: name, kind, family, arch, test accuracy, agreement.
  """
  rows = [("name", "kind", "family", "arch", "test_acc", "agreement")]
  for e in entries:
    rows.append((e["name"], e["kind"], e["family"], e["arch"],
                 f"{e.get('test_accuracy', float('nan')):.4f}",
                 f"{e.get('agreement', float('nan')):.4f}"))
  widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
  lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def kind_summary(entries: list[dict]) -> dict[str, dict]:
  """Accuracy and agreement per kind.

  Args:
    entries: ``zoo.json`` model entries.

  Returns:
    Per kind: count, mean test accuracy, mean / min / max agreement.
  """
  out = {}
  for kind in dict.fromkeys(e["kind"] for e in entries):
    acc = [e["test_accuracy"] for e in entries if e["kind"] == kind]
    agr = [e["agreement"] for e in entries if e["kind"] == kind]
    out[kind] = {"count": len(acc), "test_accuracy": float(np.mean(acc)),
                 "agreement": float(np.mean(agr)), "agreement_min": float(np.min(agr)),
                 "agreement_max": float(np.max(agr))}
  return out


def extraction_faithfulness(entries: list[dict]) -> dict | None:
  """Agreement of extracted models next to that of same-data independents.

  Extraction only threatens the owner when the copies agree with the victim
  more than models trained independently on the victim's own data do.

  Args:
    entries: ``zoo.json`` entries.

  Returns:
    ``None`` without extracted or same-data independent models; otherwise
    per extraction kind and architecture its mean agreement, the
    independents' mean and max, and ``faithful`` (extracted mean above the
    independents' max).
  """
  same_data = [e["agreement"] for e in entries
               if e["family"] == "independent" and e["part"] == "victim"]
  extracted = [e for e in entries if e["kind"] in EXTRACTION_KINDS]
  if not same_data or not extracted:
    return None
  out = {"same_data_independents": {"mean": float(np.mean(same_data)),
                                    "max": float(np.max(same_data)),
                                    "count": len(same_data)}}
  for key in dict.fromkeys((e["kind"], e["arch"]) for e in extracted):
    agr = [e["agreement"] for e in extracted if (e["kind"], e["arch"]) == key]
    out[f"{key[0]}__{key[1]}"] = {"mean": float(np.mean(agr)),
                                  "faithful": bool(np.mean(agr) > np.max(same_data))}
  return out
