"""Training a whole stack: one jitted step per batch for all K models.

Each model of a stack has its own seed, its own data part (indices into one
shared image pool) and its own targets. The per-model step is a pure function
``step(state, x, y, key, teacher) -> (state, metrics)``; the engine lifts it
over the model axis (vmap / lax.map / loop / shard, see :mod:`uap_jax.runtime.engine`).

Targets (``TrainConfig.target``):

* ``labels``: integer labels from the data set (or given per model);
* ``soft``: a probability vector per example, given (e.g. recorded answers);
* ``teacher_soft``: the teacher's probabilities on the (augmented) batch, as
  an API returning probabilities answers each query afresh;
* ``teacher_hard``: one-hot of the teacher's top-1 on the batch (label-only
  API; the student never sees probabilities);
* ``distill``: the teacher's probabilities at temperature T, loss scaled T^2.

Options: a trainable mask (fine-tune the last layer only), a pruning mask
kept at zero, and PGD adversarial training (the PGD of
:func:`uap_jax.attacks.pgd_steps`).

Modules: :mod:`~uap_jax.train.config` (``TrainConfig``, step count, learning-
rate shape), :mod:`~uap_jax.train.masks` (head and pruning masks),
:mod:`~uap_jax.train.step` (the pure per-model step and its lift over the
model axis), :mod:`~uap_jax.train.loop` (``train_stack``: batches, logging,
evaluation).
"""

from uap_jax.train.config import lr_schedule
from uap_jax.train.config import steps_per_epoch
from uap_jax.train.config import TARGETS
from uap_jax.train.config import total_steps
from uap_jax.train.config import TrainConfig
from uap_jax.train.loop import train_stack
from uap_jax.train.masks import head_mask
from uap_jax.train.masks import magnitude_mask
from uap_jax.train.masks import prunable
from uap_jax.train.step import adversarial_batch
from uap_jax.train.step import augment_batch
from uap_jax.train.step import make_step
from uap_jax.train.step import StepKind
from uap_jax.train.step import teacher_targets
from uap_jax.train.step import update_direction

__all__ = [
    "lr_schedule", "steps_per_epoch", "TARGETS", "total_steps", "TrainConfig",
    "train_stack", "head_mask", "magnitude_mask", "prunable", "adversarial_batch",
    "augment_batch", "make_step", "StepKind", "teacher_targets", "update_direction",
]
