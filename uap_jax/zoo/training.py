"""Training one plan of the zoo: its kind's function, evaluation, timing."""

from __future__ import annotations

import time

import numpy as np

from uap_jax.config import INDEPENDENT_KINDS
from uap_jax.runtime import stack as stack_lib
from uap_jax.zoo import kinds
from uap_jax.zoo import removal
from uap_jax.zoo.plan import DERIVED_KINDS, EXTRACTION_KINDS, StackPlan
from uap_jax.zoo.summary import agreement

# The function that trains each kind.
TRAINERS = {
    **{k: kinds.derived_copy for k in DERIVED_KINDS},
    **{k: kinds.extraction for k in EXTRACTION_KINDS},
    "distill": kinds.distillation,
    **{k: kinds.independent for k in INDEPENDENT_KINDS},
    **removal.TRAINERS,
}


def train_plan(plan: StackPlan, victim: stack_lib.Stack, x_pool: np.ndarray,
               y_pool: np.ndarray, parts: dict[str, np.ndarray], *,
               augment: bool, arch_kwargs: dict,
               eval_data: tuple[np.ndarray, np.ndarray] | None = None,
               strategy: str = "auto") -> tuple[stack_lib.Stack, dict]:
  """Trains the models of one plan as a stack.

  Every setting comes from the plan (its ``hparams`` and ``run_seed``).

  Args:
    plan: what to train.
    victim: stack holding the victim (model 0).
    x_pool: uint8 training images ``(N, H, W, C)`` that ``parts`` index.
    y_pool: ``(N,)`` integer labels of ``x_pool``.
    parts: ``victim`` / ``attacker`` / ``independent`` index arrays.
    augment: random crop + flip for label training (fine-tuning,
      independents); extraction and distillation query translated copies of
      the attacker's images (:func:`~uap_jax.zoo.plan.query_copies`),
      mirrored too when ``augment``.
    arch_kwargs: build arguments of fresh models.
    eval_data: ``(x_test, y_test)``: sets ``test_accuracy`` and ``agreement``
      (with the victim's top-1) in each model's meta.
    strategy: model-axis strategy.

  Returns:
    The trained stack (meta completed with ``train_examples``, ``queries``
    for teacher kinds, ``test_accuracy``, ``agreement``) and an info dict
    (``seconds``, ``cpu_seconds``, ``steps``).
  """
  idx = np.asarray(parts[plan.part])
  if len(idx) == 0:
    raise ValueError(f"The {plan.part!r} data part is empty; {plan.kind} needs it: "
                     f"raise --{plan.part}_frac.")
  meta = plan.meta()
  for m in meta:
    m["train_examples"] = int(len(idx))
  start, cpu_start = time.time(), time.process_time()
  job = kinds.Job(plan=plan, victim=victim, x_pool=x_pool, y_pool=y_pool, idx=idx,
                  meta=meta, augment=augment, arch_kwargs=arch_kwargs, strategy=strategy)
  student, steps = TRAINERS[plan.kind](job)
  if eval_data is not None:
    evaluate(student, victim, eval_data, strategy=strategy)
  # Wall and CPU time of the whole stack: training and evaluation.
  seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
  for m in student.meta:
    m["train_seconds"] = seconds
    m["train_cpu_seconds"] = cpu_seconds
  return student, {"seconds": seconds, "cpu_seconds": cpu_seconds, "steps": steps}


def evaluate(student: stack_lib.Stack, victim: stack_lib.Stack,
             eval_data: tuple[np.ndarray, np.ndarray], *, strategy: str = "auto") -> None:
  """Sets ``test_accuracy`` and ``agreement`` (with the victim's top-1) in
  every model's meta.

  Args:
    student: the trained models (meta updated in place).
    victim: stack holding the victim (model 0).
    eval_data: ``(x_test, y_test)``.
    strategy: model-axis strategy.
  """
  x_test, y_test = eval_data
  victim_top1 = stack_lib.predict(victim.select([0]), x_test,
                                  strategy=strategy)[0].argmax(-1)
  acc = stack_lib.accuracy(student, x_test, y_test, strategy=strategy)
  agree = agreement(student, victim_top1, x_test, strategy=strategy)
  for m, a, g in zip(student.meta, acc, agree):
    m["test_accuracy"] = float(a)
    m["agreement"] = float(g)
