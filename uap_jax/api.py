"""The Python API: judge suspects against a finished run, without the CLI.

    import uap_jax
    verifier = uap_jax.Verifier.from_workdir("runs/quickstart")
    verifier.export_queries("queries.npz")            # what a black-box API must answer
    verdict = verifier.verify_outputs("answers.npz")  # its recorded answers
    verdict = verifier.verify(logits_fn, variables)   # a white-box model, any framework

A :class:`Verifier` reads the run's settings (``config.json``), data set,
fingerprint points, UAPs, reference models and encoder from the work
directory, and judges a suspect exactly as ``--stages=verify --suspect=...``
does (the same functions: :func:`uap_jax.verify.protocols.judge` and the
answer check of :mod:`uap_jax.fingerprint.controls`). ``logits_fn(variables,
x)`` is any pure JAX function of float32 ``[0, 1]`` NHWC images to logits
(normalisation inside), so Flax, Haiku, Equinox or a converted PyTorch model
all work; the attacks of :mod:`uap_jax.attacks` take the same convention.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np

from uap_jax import config as config_lib
from uap_jax import fingerprint as fp_lib
from uap_jax.runtime.context import RunContext
from uap_jax.runtime.workdir import Workdir

LogitsFn = Callable[[Any, jax.Array], jax.Array]


def saved_config(workdir: Workdir, **overrides: Any) -> config_lib.Config:
  """The settings a run was made with (its ``config.json``), with overrides.

  Args:
    workdir: the run's work directory.
    **overrides: fields of :class:`uap_jax.config.Config` to change.

  Returns:
    The checked settings, ``workdir`` set to the run's.

  Raises:
    ValueError: an override is not a setting, or out of range.
  """
  saved = workdir.read_json("config.json")
  fields = {f.name for f in dataclasses.fields(config_lib.Config)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"Unknown setting(s) {', '.join(unknown)}; see uap-jax --help.")
  cfg = config_lib.Config(**{**{k: v for k, v in saved.items() if k in fields},
                             **overrides, "workdir": workdir.root})
  cfg.validate()
  return cfg


@dataclasses.dataclass
class Verifier:
  """Judges suspects against one finished run.

  Attributes:
    ctx: the run's context (settings, work directory, data, artefacts).
  """
  ctx: RunContext

  @classmethod
  def from_workdir(cls, path: str, **overrides: Any) -> "Verifier":
    """The verifier of the run in ``path``.

    Args:
      path: a work directory whose run finished at least the ``verify``
        stage (its encoder and fingerprints are needed).
      **overrides: settings to change for these verdicts only, e.g.
        ``alpha=1e-3`` or ``test="welch"`` (fields of
        :class:`uap_jax.config.Config` that the verify stage reads).

    Returns:
      The verifier.

    Raises:
      FileNotFoundError: ``path`` holds no finished run.
      ValueError: an override is not a setting, or out of range.
    """
    workdir = Workdir(path)
    for stage in ("fingerprint", "encoder"):
      if not workdir.stage_done(stage):
        raise FileNotFoundError(
            f"{workdir.root} has not finished the {stage} stage: run the pipeline "
            f"there first (uap-jax --workdir={path} ...).")
    return cls(RunContext(saved_config(workdir, **overrides), workdir))

  def export_queries(self, path: str) -> str:
    """Writes the query images a black-box suspect must answer.

    Args:
      path: where to write them (an ``.npz``; the manifest, which the owner
        keeps, is the run's ``queries.json``).

    Returns:
      ``path``.
    """
    from uap_jax.stages import export_queries  # pylint: disable=g-import-not-at-top
    if not self.ctx.workdir.stage_done("export_queries"):
      export_queries.run(self.ctx)
    with np.load(self.ctx.artifacts.queries_path) as q:
      np.savez(path, **{k: q[k] for k in q.files})
    return path

  def verify_outputs(self, answers: str | dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Verdicts on a black-box suspect's recorded answers.

    Args:
      answers: an ``.npz`` path, or the dict it would hold (``outputs``,
        optional ``kind``, ``query_id``, ``queries_sha256``), answering the
        run's ``queries.npz``.

    Returns:
      The verdicts (one dict per suspect, as in ``verdicts/NAME.json``);
      also written there, exactly as the command line writes them.
    """
    from uap_jax.stages import verify as verify_stage  # pylint: disable=g-import-not-at-top
    path = answers
    if isinstance(answers, dict):
      path = self.ctx.workdir.path("verdicts", "api_answers.npz")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      np.savez(path, **answers)
    return verify_stage.verify_external(self.ctx, str(path))["verdicts"]

  def verify(self, logits_fn: LogitsFn, variables: Any, *, name: str = "suspect"
             ) -> dict[str, Any]:
    """The verdict on a white-box suspect given as a pure function.

    Args:
      logits_fn: ``(variables, x) -> logits`` of ONE model, on float32
        ``[0, 1]`` NHWC images.
      variables: its parameters (any pytree).
      name: the suspect's name in the verdict.

    Returns:
      The verdict dict (``verdict``, ``p_value``, ``confidence``,
      ``statement``, ``reference_population``, ``commitment``, ...); not
      written to disk.
    """
    from uap_jax.stages import verify as verify_stage  # pylint: disable=g-import-not-at-top
    ctx = self.ctx
    cited = verify_stage.committed(ctx)  # before any work on the suspect
    fp, uaps = ctx.artifacts.fingerprints, ctx.artifacts.uaps
    x_points = ctx.data.x_train[fp.points]
    _check_logits_fn(logits_fn, variables, x_points[:, 0], ctx.data.num_classes)
    stacked = jax.tree.map(lambda v: np.asarray(v)[None], variables)
    suspect_fps = np.asarray(fp_lib.fingerprints(
        (logits_fn, stacked), x_points, uaps, mode=fp.mode, strategy=ctx.cfg.strategy))
    verdict, = verify_stage.judge(ctx, suspect_fps)
    return dict(suspect=name, **verdict, commitment=cited)


def _check_logits_fn(logits_fn: LogitsFn, variables: Any, images: np.ndarray,
                     num_classes: int) -> None:
  """Refuses a model whose outputs cannot be this task's logits."""
  x = np.asarray(images)
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  out = np.asarray(logits_fn(variables, x))
  if out.shape != (len(x), num_classes):
    raise ValueError(
        f"logits_fn returns shape {out.shape} for {len(x)} images; the run's task has "
        f"{num_classes} classes, so it must return ({len(x)}, {num_classes}) logits.")
  if not np.all(np.isfinite(out)):
    raise ValueError("logits_fn returns NaN or inf on the fingerprint points.")
  if np.all(out >= 0) and np.allclose(out.sum(-1), 1.0, atol=1e-4):
    raise ValueError(
        "logits_fn returns probabilities (non-negative rows that sum to 1), not "
        "logits: return the model's pre-softmax outputs (e.g. drop its final softmax).")
