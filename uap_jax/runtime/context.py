"""What the stages of one run share: config, work directory, data, artefacts.

A :class:`RunContext` is made once per run by the pipeline and handed to
every stage. The data set (``ctx.data``) and its partition (``ctx.parts``)
are loaded on first use and kept for the run; the artefacts of earlier
stages come from ``ctx.artifacts`` (:mod:`uap_jax.runtime.artifacts`), which
loads them from the work directory.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from absl import logging

from uap_jax import data as data_lib
from uap_jax.adapters.base import ADAPTER_ARCH
from uap_jax.config import Config
from uap_jax.runtime import stack as stack_lib
from uap_jax.runtime.artifacts import Artifacts
from uap_jax.runtime.workdir import Workdir
from uap_jax.zoo import plan as plan_lib


class RunContext:
  """Shared state of the stages of one run.

  Attributes:
    cfg: the run's settings.
    workdir: the run directory (all writes go through it).
    artifacts: loads and saves the artefacts of the stages.
  """

  def __init__(self, cfg: Config, workdir: Workdir):
    self.cfg = cfg
    self.workdir = workdir
    self.artifacts = Artifacts(workdir)
    self._flops: dict[tuple[str, float], float] = {}

  @functools.cached_property
  def data(self) -> data_lib.Dataset:
    """The run's data set (``--dataset``), loaded on first use."""
    logging.info("Loading data set %s", self.cfg.dataset)
    return data_lib.load_dataset(self.cfg.dataset, data_dir=self.cfg.data_dir or None,
                                 seed=self.cfg.seed)

  @functools.cached_property
  def planned_parts(self) -> dict[str, np.ndarray]:
    """The partition :attr:`parts` holds, without writing ``partition.json``.

    Read from the work directory when it has one (and checked against the
    data), else computed from the seed; for the checks before a run, which
    write nothing.
    """
    path = self.workdir.path("partition.json")
    if os.path.exists(path):
      parts = data_lib.load_partition(path)
      n = len(self.data.y_train)
      if max(int(p.max()) for p in parts.values() if len(p)) >= n:
        raise ValueError(
            f"{path} indexes past the {n} training images of {self.cfg.dataset}: the "
            "work directory belongs to another data set. Use a new --workdir, or "
            "delete that file to partition this data set (with --overwrite).")
      return parts
    fractions = {"victim": self.cfg.victim_frac, "attacker": self.cfg.attacker_frac,
                 "independent": self.cfg.independent_frac}
    return data_lib.partition(self.data.y_train, fractions, self.cfg.seed)

  @functools.cached_property
  def parts(self) -> dict[str, np.ndarray]:
    """Disjoint, seeded training-index parts; made once, saved with the run."""
    parts = self.planned_parts
    if not self.workdir.exists("partition.json"):
      self.workdir.write_with("partition.json",
                              lambda target: data_lib.save_partition(target, parts))
      logging.info("Partition: %s", {k: len(v) for k, v in parts.items()})
    return parts

  @functools.cached_property
  def given_victim(self):
    """The owner's model of ``--victim`` (a :class:`uap_jax.adapters.ModelAdapter`)."""
    from uap_jax import adapters
    return adapters.load_model(self.cfg.victim)

  @functools.cached_property
  def given_victim_digest(self) -> str:
    """Hash of the given victim's variables: a rerun notices a changed model."""
    from uap_jax import adapters
    return adapters.variables_digest(self.given_victim.variables)

  @property
  def augment(self) -> bool:
    """Whether training augments images (``--augment``; auto: colour only)."""
    if self.cfg.augment == "auto":
      return self.data.image_shape[-1] == 3
    return self.cfg.augment == "true"

  def arch_kwargs(self) -> dict:
    """Build arguments shared by every model of the run."""
    mean, std = self.data.channel_mean_std()
    return dict(num_classes=self.data.num_classes, image_shape=tuple(self.data.image_shape),
                width=self.cfg.width, mean=tuple(map(float, mean)),
                std=tuple(map(float, std)))

  def training_cost(self, plan: plan_lib.StackPlan) -> float:
    """A stack plan's estimated training cost (:func:`uap_jax.zoo.training_cost`
    over this run's data parts), for dividing stacks among processes.

    Args:
      plan: a :class:`uap_jax.zoo.StackPlan` (zoo or reference bank).

    Returns:
      The cost, in FLOPs.
    """
    parts = {name: len(idx) for name, idx in self.parts.items()}
    return plan_lib.training_cost(
        plan, parts, lambda width: self.forward_flops(plan.arch, width))

  def forward_flops(self, arch: str, width: float | None = None) -> float:
    """FLOPs of one image's forward pass through a model of ``arch``.

    Cached per architecture and width. A given victim's architecture
    (``adapter``) is measured on the victim itself.

    Args:
      arch: architecture name.
      width: width multiplier; ``None``: the run's ``--width``.

    Returns:
      FLOPs per image.
    """
    key = (arch, self.cfg.width if width is None else float(width))
    if key not in self._flops:
      if arch == ADAPTER_ARCH:
        model = self.artifacts.victim
      else:
        model = stack_lib.create(arch, [0], **{**self.arch_kwargs(), "width": key[1]})
      self._flops[key] = stack_lib.forward_flops(model)
    return self._flops[key]
