"""The artefacts of a run: each saved and loaded here, and only here.

Stages receive what earlier stages made from :class:`Artifacts` and hand
what they make back to it; no stage reads another stage's files, so the
file layout of a work directory is written down once, below.

======================  ===============================================  ==============
artefact                files under ``--workdir``                        made by stage
======================  ===============================================  ==============
victim                  ``checkpoints/victim``, ``victim.json``          victim
zoo                     ``checkpoints/zoo/KIND__ARCH``, ``zoo.json``     zoo
reference bank          ``reference.json``; stacks in the bank           reference
                        (``BANK/KEY/checkpoints/ARCH__RECIPE``)
UAPs                    ``checkpoints/uap``, ``uap.json``                uap
fingerprints + points   ``checkpoints/fingerprints``,                    fingerprint
                        ``fingerprints.json``
split + encoder         ``split.json``, ``checkpoints/encoder``,         encoder
                        ``encoder.json``
verification            ``verify.json``, ``checkpoints/similarities``    verify
suspect verdicts        ``verdicts/NAME.json``                           verify
                                                                         (--suspect)
queries                 ``queries.npz``, ``queries.json``                export_queries
======================  ===============================================  ==============

Not artefacts of a stage, so not here: ``config.json`` (the pipeline),
``partition.json`` (:class:`~uap_jax.runtime.context.RunContext`, with the
data), ``stages/STAGE.json`` (the pipeline's done-markers) and the report's
``report/`` files, which nothing reads back.

The victim, the zoo, the UAPs and the fingerprints are cached after their
first load (and the cache is dropped when they are saved again); the small
JSON and array artefacts are read on each call. Every write goes through the
:class:`~uap_jax.runtime.workdir.Workdir`, which is where "only the main
process writes" is enforced.

:meth:`Artifacts.complete` tells whether a stage's artefacts are whole
(cheaply: checkpoints hold a complete step with readable metadata, JSON
files parse); the pipeline reruns a finished stage whose artefacts are not.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import zipfile

import numpy as np

from uap_jax.runtime import checkpoint
from uap_jax.runtime import stack as stack_lib
from uap_jax.runtime.workdir import Workdir
from uap_jax.verify import commitment
from uap_jax.verify import crossfit


@dataclasses.dataclass(frozen=True)
class Fingerprints:
  """What the fingerprint stage saves.

  Attributes:
    fps: ``(M, V, D)`` fingerprints of the victim and every zoo model.
    models: per model its metadata (name, kind, family, arch, ...).
    points: ``(K, V)`` indices into the training images of the points.
    mode: the outputs used (``probs``, ``logits``, ``labels``).
  """
  fps: np.ndarray
  models: list[dict]
  points: np.ndarray
  mode: str

  @property
  def victim_index(self) -> int:
    """Index of the victim among :attr:`models`."""
    for i, m in enumerate(self.models):
      if m.get("family") == "victim" or m.get("kind") == "victim":
        return i
    raise ValueError("The fingerprints hold no victim; rerun the fingerprint stage.")


# Per stage, the JSON files and the checkpoints it leaves (the table above;
# the zoo's stacks are named in zoo.json, the report's files are its own).
# The checkpoint of the label judge, an encoder trained on top-1 labels (stage encoder).
LABEL_JUDGE = "encoder_labels"

_STAGE_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "victim": (("victim.json",), ("victim",)),
    "zoo": (("zoo.json",), ()),
    "reference": (("reference.json",), ()),
    "uap": (("uap.json",), ("uap",)),
    "fingerprint": (("fingerprints.json",), ("fingerprints",)),
    "encoder": (("split.json", "encoder.json"), ("encoder",)),
    "verify": (("verify.json",), ("similarities",)),
    "export_queries": (("queries.json",), ()),
    "report": ((os.path.join("report", "results.json"),), ()),
}


class Artifacts:
  """Loads and saves the artefacts of one work directory (cached loads)."""

  def __init__(self, workdir: Workdir):
    self.workdir = workdir

  def complete(self, stage: str) -> str | None:
    """Why the artefacts of a finished ``stage`` are not whole, if they are not.

    Cheap checks, no arrays read: each JSON file of the stage parses, each
    checkpoint holds a complete step whose metadata reads; for the zoo, every
    stack ``zoo.json`` names; for export_queries, ``queries.npz`` opens.

    Args:
      stage: a stage name (:data:`uap_jax.config.STAGES`).

    Returns:
      None when complete, else the reason (one line, naming the file).
    """
    files, checkpoints = _STAGE_FILES.get(stage, ((), ()))
    for name in files:
      problem = self._json_problem(name)
      if problem:
        return problem
    if stage == "zoo":
      stacks = self.workdir.read_json("zoo.json").get("stacks")
      if not isinstance(stacks, list):
        return f"{self.workdir.path('zoo.json')} lists no stacks"
      checkpoints = tuple(str(s.get("checkpoint")) if isinstance(s, dict) else ""
                          for s in stacks)
    for name in checkpoints:
      problem = _checkpoint_problem(self.workdir.checkpoint_dir(name))
      if problem:
        return problem
    if stage == "reference":
      for s in self.workdir.read_json("reference.json").get("stacks", []):
        problem = _checkpoint_problem(str(s.get("checkpoint")))
        if problem:
          return problem
    if stage == "export_queries":
      return _npz_problem(self.queries_path)
    return None

  def _json_problem(self, name: str) -> str | None:
    if not self.workdir.exists(name):
      return f"{self.workdir.path(name)} is missing"
    try:
      self.workdir.read_json(name)
    except ValueError:
      return f"{self.workdir.path(name)} is not valid JSON"
    return None

  # Victim.

  @functools.cached_property
  def victim(self) -> stack_lib.Stack:
    """The victim as a stack of one model."""
    return checkpoint.load_stack(self.workdir.checkpoint_dir("victim"))

  def has_victim(self) -> bool:
    return checkpoint.exists(self.workdir.checkpoint_dir("victim"))

  def save_victim(self, victim: stack_lib.Stack, summary: dict) -> None:
    self.workdir.save_stack("victim", victim)
    self.workdir.write_json("victim.json", summary)
    self.__dict__.pop("victim", None)

  def victim_summary(self) -> dict:
    return self.workdir.read_json("victim.json")

  def saved_victim_summary(self) -> dict | None:
    """``victim.json`` when a victim is saved, else None.

    Forgets a victim loaded before: another process may just have saved a
    new one.
    """
    self.__dict__.pop("victim", None)
    return self.victim_summary() if self.has_victim() else None

  # Zoo.

  def zoo_stack_meta(self, name: str) -> list[dict] | None:
    """Per-model metadata of a saved zoo stack, None when there is none.

    Raises:
      ValueError: the stack's checkpoint is unreadable.
    """
    directory = self.workdir.checkpoint_dir(name)
    if not checkpoint.exists(directory):
      return None
    return checkpoint.load_meta(directory)["models"]

  def save_zoo_stack(self, name: str, stack: stack_lib.Stack) -> None:
    """Saves a zoo stack as ``checkpoints/NAME``, from the process that
    trained it (its only builder, see :mod:`uap_jax.runtime.divide`)."""
    here = self.workdir.writing_here()
    # A stale stack (other plan, other victim, --overwrite) is replaced:
    # orbax does not write over an existing step.
    here.remove(os.path.join("checkpoints", name))
    here.save_stack(name, stack)

  def save_zoo(self, summary: dict) -> None:
    self.workdir.write_json("zoo.json", summary)
    self.__dict__.pop("zoo", None)

  @functools.cached_property
  def zoo(self) -> list[stack_lib.Stack]:
    """Every zoo stack, in ``zoo.json`` order."""
    if not self.workdir.exists("zoo.json"):
      raise FileNotFoundError(
          f"{self.workdir.path('zoo.json')} is missing: run the zoo stage first "
          "(--stages=zoo) in this --workdir.")
    info = self.workdir.read_json("zoo.json")
    return [checkpoint.load_stack(self.workdir.checkpoint_dir(s["checkpoint"]))
            for s in info["stacks"]]

  # Reference bank (stacks live in the bank directory, which runs share).

  def bank_stack_meta(self, directory: str) -> list[dict] | None:
    """Per-model metadata of a saved bank stack, None when there is none.

    Raises:
      ValueError: the stack's checkpoint is unreadable.
    """
    if not checkpoint.exists(directory):
      return None
    return checkpoint.load_meta(directory)["models"]

  def save_bank_stack(self, bank: Workdir, name: str, stack: stack_lib.Stack) -> str:
    """Saves a bank stack as ``BANK/checkpoints/NAME``, from the process that
    trained it; returns its directory."""
    here = bank.writing_here()
    here.remove(os.path.join("checkpoints", name))
    return here.save_stack(name, stack)

  def save_reference(self, summary: dict) -> None:
    self.workdir.write_json("reference.json", summary)
    self.__dict__.pop("reference", None)

  def has_reference(self) -> bool:
    return self.workdir.exists("reference.json")

  @functools.cached_property
  def reference(self) -> list[stack_lib.Stack]:
    """Every bank stack of this run, in ``reference.json`` order."""
    info = self.workdir.read_json("reference.json")
    return [checkpoint.load_stack(s["checkpoint"]) for s in info["stacks"]]

  def all_stacks(self) -> list[stack_lib.Stack]:
    """The victim (first), every zoo stack, then the reference bank's: the
    models fingerprinted."""
    bank = list(self.reference) if self.has_reference() else []
    return [self.victim] + list(self.zoo) + bank

  # UAPs.

  @functools.cached_property
  def uaps(self) -> np.ndarray:
    """The saved UAPs, ``(U, H, W, C)`` in pixel units of [0, 1] (U may be 0)."""
    tree, meta = checkpoint.load_arrays(self.workdir.checkpoint_dir("uap"))
    uaps = np.asarray(tree["uaps"], np.float32)
    # orbax cannot save a zero-size array: no UAP is saved as one zero
    # placeholder with num_uaps = 0.
    return uaps[:int(meta.get("num_uaps", len(uaps)))]

  def save_uaps(self, uaps: np.ndarray, summary: dict) -> None:
    uaps = np.asarray(uaps, np.float32)
    stored = uaps if len(uaps) else np.zeros((1,) + uaps.shape[1:], np.float32)
    self.workdir.save_arrays("uap", {"uaps": stored},
                             {k: v for k, v in summary.items() if k != "uaps"})
    self.workdir.write_json("uap.json", summary)
    self.__dict__.pop("uaps", None)

  def uap_summary(self) -> dict:
    return self.workdir.read_json("uap.json")

  # Fingerprints.

  @functools.cached_property
  def fingerprints(self) -> Fingerprints:
    tree, meta = checkpoint.load_arrays(self.workdir.checkpoint_dir("fingerprints"))
    return Fingerprints(fps=np.asarray(tree["fingerprints"]), models=meta["models"],
                        points=np.asarray(tree["points"]), mode=meta["mode"])

  def save_fingerprints(self, fp: Fingerprints, info: dict, summary: dict) -> None:
    self.workdir.save_arrays("fingerprints", {"fingerprints": fp.fps, "points": fp.points},
                             {"models": fp.models, "mode": fp.mode, **info})
    self.workdir.write_json("fingerprints.json", summary)
    self.__dict__.pop("fingerprints", None)

  # The commitment to the fingerprint (uap_jax.verify.commitment).

  def save_commitment(self, record: dict) -> None:
    self.workdir.write_json(commitment.FILE, record)

  def commitment(self) -> dict | None:
    """The saved commitment, or None for a run made before commitments."""
    return self.workdir.read_json(commitment.FILE) if self.workdir.exists(commitment.FILE) else None

  # Split and encoder.

  def split(self) -> dict:
    return self.workdir.read_json("split.json")

  def save_split(self, split: dict) -> None:
    self.workdir.write_json("split.json", split)

  def encoder(self) -> crossfit.CrossFitted:
    """The saved (cross-fitted) encoders (read once)."""
    return self._saved_encoders

  @functools.cached_property
  def _saved_encoders(self) -> crossfit.CrossFitted:
    tree, meta = checkpoint.load_arrays(self.workdir.checkpoint_dir("encoder"))
    return crossfit.from_arrays(tree, meta)

  def label_judge(self) -> crossfit.CrossFitted | None:
    """The label judge, an encoder trained on top-1 labels (read once); None in a run of
    labels (its encoder is the label judge) or one made before there was one."""
    return self._saved_label_judge

  @functools.cached_property
  def _saved_label_judge(self) -> crossfit.CrossFitted | None:
    directory = self.workdir.checkpoint_dir(LABEL_JUDGE)
    if not os.path.isdir(directory):
      return None
    return crossfit.from_arrays(*checkpoint.load_arrays(directory))

  def save_encoder(self, encoders: crossfit.CrossFitted, summary: dict,
                   label_judge: crossfit.CrossFitted | None = None) -> None:
    self.workdir.save_arrays("encoder", *crossfit.to_arrays(encoders))
    if label_judge is None:  # a run of labels: a judge of an earlier run must not stay
      self.workdir.remove(os.path.join("checkpoints", LABEL_JUDGE))
    else:
      self.workdir.save_arrays(LABEL_JUDGE, *crossfit.to_arrays(label_judge))
    self.workdir.write_json("encoder.json", summary)
    self.__dict__.pop("_saved_encoders", None)
    self.__dict__.pop("_saved_label_judge", None)

  # Verification.

  def verification(self) -> dict:
    return self.workdir.read_json("verify.json")

  def similarities(self) -> np.ndarray:
    """``(M, V)`` encoder similarities of every fingerprinted model to the victim."""
    tree, _ = checkpoint.load_arrays(self.workdir.checkpoint_dir("similarities"))
    return np.asarray(tree["similarities"])

  def save_verification(self, result: dict, similarities: np.ndarray) -> None:
    self.workdir.save_arrays("similarities", {"similarities": np.asarray(similarities)})
    self.workdir.write_json("verify.json", result)

  def save_verdicts(self, name: str, verdicts: dict) -> str:
    return self.workdir.write_json(os.path.join("verdicts", f"{name}.json"), verdicts)

  # Black-box queries.

  @property
  def queries_path(self) -> str:
    return self.workdir.path("queries.npz")

  @property
  def queries_manifest_path(self) -> str:
    return self.workdir.path("queries.json")

  def save_queries(self, queries: np.ndarray, manifest: dict) -> str:
    """Saves the query images (``(Q, H, W, C)`` uint8) and their manifest.

    Args:
      queries: the images, in query order.
      manifest: the JSON manifest describing them.

    Returns:
      The path of ``queries.npz``.
    """
    queries = np.asarray(queries)
    path = self.workdir.write_npz("queries.npz", queries=queries,
                                  query_id=np.arange(len(queries), dtype=np.int32))
    self.workdir.write_json("queries.json", manifest)
    return path


def _checkpoint_problem(directory: str) -> str | None:
  """Why ``directory`` holds no whole checkpoint step, None when it does."""
  try:
    step = checkpoint.latest_step(directory)
  except Exception as e:  # orbax raises many types for damaged folders
    return f"{directory} cannot be read ({type(e).__name__})"
  if step is None:
    return f"{directory} holds no complete checkpoint"
  # The arrays' item must be there too: a step that holds only its commit
  # marker has readable metadata in nothing.
  state = os.path.join(directory, str(step), "state")
  if not os.path.isdir(state) or not os.listdir(state):
    return f"{directory} step {step} has no arrays"
  try:
    checkpoint.load_meta(directory)
  except (ValueError, FileNotFoundError) as e:
    return f"{directory} step {step} has unreadable metadata ({type(e.__cause__ or e).__name__})"
  return None


def _npz_problem(path: str) -> str | None:
  """Why the ``.npz`` at ``path`` does not open, None when it does."""
  if not os.path.exists(path):
    return f"{path} is missing"
  try:
    with zipfile.ZipFile(path) as z:
      z.namelist()
  except (zipfile.BadZipFile, OSError):
    return f"{path} is not a readable .npz"
  return None
