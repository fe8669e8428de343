"""How each kind family of the zoo trains: one short function per family.

* :func:`derived_copy`: the victim's parameters fine-tuned (last layer or
  all), pruned then fine-tuned, or adversarially trained;
* :func:`extraction`: a fresh model learns the victim's API answers
  (probabilities or labels) on the attacker's queries; ``extract_adv`` adds
  PGD examples of its own substitute in later phases;
* :func:`distillation`: the same at temperature T, into another architecture;
* :func:`independent`: a fresh model trained on labels.

Each takes a :class:`Job` and returns the trained stack and its step count;
every setting comes from the plan's ``hparams`` (:mod:`uap_jax.zoo.plan`).
Training goes through ``train.train_stack`` looked up on the package at call
time, so tests can record or stub it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from uap_jax import train
from uap_jax.adapters.base import ADAPTER_ARCH
from uap_jax.runtime import engine
from uap_jax.runtime import stack as stack_lib
from uap_jax.zoo import queries
from uap_jax.zoo.plan import StackPlan, extraction_steps, query_copies

# Progress lines of zoo training are off: a stack logs its own summary.
_NO_LOG = 10 ** 9


@dataclasses.dataclass(frozen=True)
class Job:
  """One plan to train, with its data and where it runs.

  Attributes:
    plan: what to train.
    victim: stack holding the victim (model 0).
    x_pool: uint8 training images that ``idx`` indexes.
    y_pool: their integer labels.
    idx: the plan's data part (indices into ``x_pool``).
    meta: the models' metadata before training.
    augment: random crop + flip for label training; mirrored query copies
      for extraction and distillation.
    arch_kwargs: build arguments of fresh models.
    strategy: model-axis strategy.
  """
  plan: StackPlan
  victim: stack_lib.Stack
  x_pool: np.ndarray
  y_pool: np.ndarray
  idx: np.ndarray
  meta: list
  augment: bool
  arch_kwargs: dict
  strategy: str

  @property
  def lrs(self) -> list[float]:
    """Each model's peak learning rate."""
    return [h["lr"] for h in self.plan.hparams]

  def fit(self, student, x_pool, index, tc, **kwargs) -> tuple[stack_lib.Stack, int]:
    """``train.train_stack`` with the plan's strategy and name; returns steps."""
    student, hist = train.train_stack(student, x_pool, index, tc, strategy=self.strategy,
                                      desc=self.plan.key, **kwargs)
    return student, hist["steps"]

  def fresh(self) -> stack_lib.Stack:
    """Freshly initialised models of the plan (one per seed)."""
    if self.plan.arch == ADAPTER_ARCH:  # the given victim's own architecture
      from uap_jax import adapters  # pylint: disable=g-import-not-at-top
      return adapters.fresh_stack(self.victim, list(self.plan.seeds), self.meta)
    return stack_lib.create(self.plan.arch, list(self.plan.seeds), meta=self.meta,
                            **self.arch_kwargs)


def train_config(plan: StackPlan, *, augment: bool, **overrides) -> train.TrainConfig:
  """The training settings of a plan's stack, from its hyper-parameters.

  Args:
    plan: the plan.
    augment: random crop + flip of the batches.
    **overrides: further ``TrainConfig`` fields.

  Returns:
    The stack's ``TrainConfig`` (peak rates are passed per model).
  """
  base = dict(epochs=plan.shared("epochs"), batch_size=plan.shared("batch_size"),
              optimizer=plan.shared("optimizer"), lr=plan.hparams[0]["lr"],
              weight_decay=plan.shared("weight_decay"), augment=augment,
              log_every=_NO_LOG)
  base.update(overrides)
  return train.TrainConfig(**base)


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


def _prune(student: stack_lib.Stack, ratios: list[float]):
  """Each copy's global magnitude mask, and the copies with it applied."""
  masks = engine.stack_trees([
      train.magnitude_mask(jax.tree.map(lambda a, i=i: a[i], student.params), r)
      for i, r in enumerate(ratios)])
  pruned = dataclasses.replace(
      student, params=jax.tree.map(lambda p, q: p * q, student.params, masks))
  return pruned, masks


def derived_copy(job: Job) -> tuple[stack_lib.Stack, int]:
  """Copies of the victim fine-tuned on the attacker's labelled data.

  ``finetune_last`` trains the head only; ``prune`` zeroes each copy's
  smallest weights first and keeps them at zero; ``adv_train`` trains on PGD
  examples.

  Args:
    job: the plan and its data.

  Returns:
    The trained stack and its step count.
  """
  plan = job.plan
  student = broadcast_victim(job.victim, job.meta)
  masks = None
  if plan.kind == "prune":
    student, masks = _prune(student, [h["ratio"] for h in plan.hparams])
  adversary = {}
  if plan.kind == "adv_train":
    adversary = dict(adv_eps=plan.shared("eps"), adv_steps=plan.shared("pgd_steps"))
  tc = train_config(plan, augment=job.augment,
                    train_last_only=plan.kind == "finetune_last", **adversary)
  k = len(job.meta)
  return job.fit(student, job.x_pool, [job.idx] * k, tc, lrs=job.lrs,
                 labels=[job.y_pool[job.idx]] * k, masks=masks, seed=plan.run_seed)


def independent(job: Job) -> tuple[stack_lib.Stack, int]:
  """Fresh models trained from scratch on the labels of their data part.

  Args:
    job: the plan and its data.

  Returns:
    The trained stack and its step count.
  """
  k = len(job.meta)
  tc = train_config(job.plan, augment=job.augment)
  return job.fit(job.fresh(), job.x_pool, [job.idx] * k, tc, lrs=job.lrs,
                 labels=[job.y_pool[job.idx]] * k, seed=job.plan.run_seed)


@dataclasses.dataclass
class _Queries:
  """The attacker's query pool and, per model, what a phase queries.

  The pool is ``x_pool`` followed by the query copies and the adversarial
  examples, so that indices below ``len(x_pool)`` still name the data part.
  """
  pool: np.ndarray
  own: list           # per model: the attacker's images and their copies
  adversarial: list   # per model: its substitute's adversarial examples
  index: list         # per model: this phase's queries

  @classmethod
  def start(cls, x_pool, idx, copies, k) -> "_Queries":
    own = [np.concatenate([idx, len(x_pool) + np.arange(len(copies))]) for _ in range(k)]
    return cls(np.concatenate([x_pool, copies]), own,
               [np.zeros((0,), np.int64) for _ in range(k)], own)

  def add_adversarials(self, adv: np.ndarray, share: float) -> None:
    """Appends ``(K, n, ...)`` examples (model i's own at block i); repeated
    indices make them ``share`` of every model's next queries."""
    base, n = len(self.pool), adv.shape[1]
    self.pool = np.concatenate([self.pool, adv.reshape((-1,) + adv.shape[2:])])
    self.adversarial = [np.concatenate([a, base + i * n + np.arange(n)])
                        for i, a in enumerate(self.adversarial)]
    repeat = max(1, round(len(self.own[0]) * share / (1 - share)
                          / len(self.adversarial[0])))
    self.index = [np.concatenate([q, np.tile(a, repeat)])
                  for q, a in zip(self.own, self.adversarial)]


def _phase_steps(total: int, rounds: int) -> list[int]:
  """``total`` steps split as evenly as possible over ``1 + rounds`` phases."""
  return [total // (rounds + 1) + (1 if r < total % (rounds + 1) else 0)
          for r in range(rounds + 1)]


def _substitute_examples(job: Job, student: stack_lib.Stack, phase: int,
                         n_steps: int) -> np.ndarray:
  """``extract_adv``: PGD examples of the substitutes before a later phase.

  Around a random subset of the attacker's images, sized so that each new
  example is queried about twice in the phase.
  """
  plan = job.plan
  share, batch_size = plan.shared("adv_query_share"), plan.shared("batch_size")
  rng = np.random.default_rng([plan.run_seed, plan.seeds[0], phase])
  n_around = min(len(job.idx), max(1, int(n_steps * batch_size * share / 2)))
  around = np.sort(rng.choice(job.idx, n_around, replace=False))
  key = jax.random.fold_in(jax.random.key(plan.run_seed), plan.seeds[0] + phase)
  return queries.substitute_adversarials(student, job.x_pool[around], plan.shared("eps"),
                                         key, strategy=job.strategy)


def learn_from_api(job: Job, target: str, temperature: float = 1.0,
                   copies_fn: Callable | None = None) -> tuple[stack_lib.Stack, int]:
  """A fresh student trained on the victim's API answers to the attacker's
  queries: one batch of fresh answers per step, ``1 + rounds`` phases.

  Args:
    job: the plan and its data.
    target: the teacher target (``teacher_soft``, ``teacher_hard``,
      ``distill``).
    temperature: the distillation temperature.
    copies_fn: ``(x, copies, rng) -> uint8 images``: the attacker's query
      copies of its images (default: translated copies,
      :func:`~uap_jax.zoo.queries.augmented_queries`).

  Returns:
    The trained stack and its step count.
  """
  plan, h = job.plan, job.plan.hparams[0]
  victim_vars = queries.single_variables(job.victim)
  api = (queries.label_only_api(job.victim.graphdef) if target == "teacher_hard"
         else job.victim.logits_fn)
  copies_fn = copies_fn or functools.partial(queries.augmented_queries, flip=job.augment)
  copies = copies_fn(job.x_pool[job.idx], query_copies(h, len(job.idx)),
                     np.random.default_rng([plan.run_seed, plan.seeds[0]]))
  asked = _Queries.start(job.x_pool, job.idx, copies, len(job.meta))
  student, steps = job.fresh(), 0
  rounds = h.get("rounds", 0)
  for phase, n_steps in enumerate(_phase_steps(extraction_steps(h, len(job.idx)), rounds)):
    if phase > 0:
      adv = _substitute_examples(job, student, phase, n_steps)
      asked.add_adversarials(adv, plan.shared("adv_query_share"))
    if n_steps == 0:
      continue
    tc = train_config(plan, augment=False, target=target, steps=n_steps,
                      temperature=temperature)
    student, n = job.fit(student, asked.pool, asked.index, tc, lrs=job.lrs,
                         teacher=(api, victim_vars), seed=plan.run_seed + phase)
    steps += n
  for m in student.meta:
    m["queries"] = int(steps * plan.shared("batch_size"))
    m["query_images"] = int(len(job.idx) + len(copies))
    if rounds:
      m["adversarial_images_added"] = int(len(asked.adversarial[0]))
  return student, steps


def extraction(job: Job) -> tuple[stack_lib.Stack, int]:
  """Model extraction through the victim's probability or label-only API.

  Args:
    job: the plan (``extract_soft``, ``extract_hard`` or ``extract_adv``)
      and its data.

  Returns:
    The trained stack and its step count.
  """
  target = "teacher_hard" if job.plan.kind == "extract_hard" else "teacher_soft"
  return learn_from_api(job, target)


def distillation(job: Job) -> tuple[stack_lib.Stack, int]:
  """Knowledge distillation at temperature ``T`` on the attacker's queries.

  Args:
    job: the plan and its data.

  Returns:
    The trained stack and its step count.
  """
  return learn_from_api(job, "distill", temperature=job.plan.shared("T"))
