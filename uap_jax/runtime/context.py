"""What the stages of one run share: config, work directory, data, artefacts.

Loaded lazily and cached, so a stage asks for ``ctx.data`` or
``ctx.artifacts.victim`` and gets it from memory, from the work directory,
or (data) from its source.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from absl import logging

from uap_jax import data as data_lib
from uap_jax.config import Config
from uap_jax.runtime.artifacts import Artifacts
from uap_jax.runtime.workdir import Workdir


class RunContext:
  """Shared state of the stages of one run."""

  def __init__(self, cfg: Config, workdir: Workdir):
    self.cfg = cfg
    self.workdir = workdir
    self.artifacts = Artifacts(workdir)

  @functools.cached_property
  def data(self) -> data_lib.Dataset:
    logging.info("Loading data set %s", self.cfg.dataset)
    return data_lib.load_dataset(self.cfg.dataset, data_dir=self.cfg.data_dir or None,
                                 seed=self.cfg.seed)

  @functools.cached_property
  def parts(self) -> dict[str, np.ndarray]:
    """Disjoint, seeded training-index parts; made once, saved with the run."""
    path = self.workdir.path("partition.json")
    if os.path.exists(path):
      parts = data_lib.load_partition(path)
      n = len(self.data.y_train)
      if max(int(p.max()) for p in parts.values() if len(p)) >= n:
        raise ValueError(
            f"{path} indexes past the {n} training images of {self.cfg.dataset}: the "
            "work directory belongs to another data set. Use a new --workdir or --overwrite.")
      return parts
    fractions = {"victim": self.cfg.victim_frac, "attacker": self.cfg.attacker_frac,
                 "independent": self.cfg.independent_frac}
    parts = data_lib.partition(self.data.y_train, fractions, self.cfg.seed)
    if self.workdir.is_writer:  # the one write of a run outside Workdir's methods
      data_lib.save_partition(path, parts)
    logging.info("Partition: %s", {k: len(v) for k, v in parts.items()})
    return parts

  @property
  def augment(self) -> bool:
    if self.cfg.augment == "auto":
      return self.data.image_shape[-1] == 3
    return self.cfg.augment == "true"

  def arch_kwargs(self) -> dict:
    """Build arguments shared by every model of the run."""
    mean, std = self.data.channel_mean_std()
    return dict(num_classes=self.data.num_classes, image_shape=tuple(self.data.image_shape),
                width=self.cfg.width, mean=tuple(map(float, mean)),
                std=tuple(map(float, std)))
