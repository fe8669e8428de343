"""The settings of one training run of a stack, and their learning-rate shape."""

from __future__ import annotations

import dataclasses
import math

import optax

from uap_jax import config

TARGETS = ("labels", "soft", "teacher_soft", "teacher_hard", "distill")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Hyper-parameters of one training run (shared by a stack).

  ``steps > 0`` trains exactly that many steps (a query budget counts
  steps); otherwise ``epochs`` passes over the largest part of the stack.
  """
  epochs: float = 10
  batch_size: int = 128
  optimizer: str = "sgd"            # sgd (momentum 0.9, nesterov) | adam
  lr: float = 0.05
  schedule: str = "cosine"          # cosine | constant
  warmup_epochs: float = 0.0
  weight_decay: float = 5e-4
  augment: bool = False             # random crop (pad 4) + horizontal flip
  target: str = "labels"
  temperature: float = 1.0          # for distill
  train_last_only: bool = False     # freeze all but the `head` layer
  adv_eps: float = 0.0              # > 0: PGD (L-inf) adversarial training
  adv_steps: int = 5
  log_every: int = 50
  steps: int = 0                    # > 0: this many steps instead of epochs
  # Let each step write the new training state into the old one's buffers
  # (jit buffer donation): less memory traffic and peak memory where the
  # backend supports it. Off until measured faster (bench_train_stack).
  donate: bool = False

  def validate(self) -> None:
    """Raises ValueError on an out-of-range setting."""
    if self.epochs <= 0:
      raise ValueError(f"epochs must be > 0, got {self.epochs}.")
    if self.steps < 0:
      raise ValueError(f"steps must be >= 0 (0: from epochs), got {self.steps}.")
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
    if self.optimizer not in config.OPTIMIZERS:
      raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}.")
    if self.schedule not in ("cosine", "constant"):
      raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}.")
    if not self.lr > 0:
      raise ValueError(f"lr must be > 0, got {self.lr}.")
    if self.target not in TARGETS:
      raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}.")
    if self.temperature <= 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}.")
    if self.adv_eps < 0:
      raise ValueError(f"adv_eps must be >= 0, got {self.adv_eps}.")


def steps_per_epoch(n: int, batch_size: int) -> int:
  """Batches in one pass over ``n`` examples (at least one).

  Args:
    n: examples in the largest part of a stack.
    batch_size: examples per batch.

  Returns:
    ``ceil(n / batch_size)``, at least 1.
  """
  return max(1, math.ceil(n / batch_size))


def total_steps(cfg: TrainConfig, n: int) -> int:
  """Steps of a run over parts of at most ``n`` examples.

  Args:
    cfg: the run's settings.
    n: examples in the largest part of the stack.

  Returns:
    ``cfg.steps`` when set, else ``epochs`` passes over ``n`` examples
    (rounded, at least 1).
  """
  if cfg.steps > 0:
    return int(cfg.steps)
  return max(1, int(round(cfg.epochs * steps_per_epoch(n, cfg.batch_size))))


def lr_schedule(cfg: TrainConfig, total: int) -> optax.Schedule:
  """The learning-rate shape, peak 1: (warmup-)cosine or constant.

  The step multiplies it by each model's own peak rate, so models with other
  rates share one compiled step.

  Args:
    cfg: the run's settings (``schedule``, ``warmup_epochs`` as a fraction
      ``warmup_epochs / epochs`` of the run).
    total: steps of the run.

  Returns:
    An optax schedule over ``total`` steps.
  """
  if cfg.schedule == "constant":
    return optax.constant_schedule(1.0)
  warmup = int(cfg.warmup_epochs / cfg.epochs * total)
  if warmup:
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total)
  return optax.cosine_decay_schedule(1.0, total)
