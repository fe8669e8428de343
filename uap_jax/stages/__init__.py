"""The stages of a run, in the order the data flows through them::

  victim -> zoo -> reference -> uap -> fingerprint -> encoder -> verify -> export_queries -> report

Each stage is a module of this package with ``run(ctx) -> dict`` (a summary
for the log and the stage's done-marker): it loads what earlier stages made
from ``ctx.artifacts`` (:mod:`uap_jax.runtime.artifacts`), calls the library
and hands what it made back to ``ctx.artifacts``. No stage imports another.
:mod:`uap_jax.pipeline` runs them in this order and resumes from the
finished ones.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from uap_jax import config

if TYPE_CHECKING:
  from uap_jax.runtime.context import RunContext

# Stage -> what it makes, in pipeline order (the order of config.STAGES).
FLOW: dict[str, str] = {
    "victim": "the owner's model, trained on its data part",
    "zoo": "the suspects: pirated copies and independent models",
    "reference": "the reference bank: independents of many architectures and recipes",
    "uap": "the victim's universal adversarial perturbation(s)",
    "fingerprint": "fingerprint points and the fingerprints of every model",
    "encoder": "the split of the zoo and the contrastive encoder",
    "verify": "similarities, p-values and verdicts of the evaluation suspects",
    "export_queries": "the query images a black-box suspect must answer",
    "report": "results.json, report.md and plots",
}
if tuple(FLOW) != config.STAGES:
  raise ImportError(f"uap_jax.stages.FLOW {tuple(FLOW)} is not config.STAGES "
                    f"{config.STAGES}; keep them in the same order.")

# The stages whose artefacts each stage reads (the rest follow from these).
NEEDS: dict[str, tuple[str, ...]] = {
    "victim": (), "zoo": ("victim",), "reference": (), "uap": ("victim",),
    "fingerprint": ("zoo", "reference", "uap"), "encoder": ("fingerprint",),
    "verify": ("encoder",), "export_queries": ("fingerprint",),
    "report": ("verify",),
}

StageRun = Callable[["RunContext"], dict]


def needs(stage: str) -> list[str]:
  """Every stage whose artefacts ``stage`` builds on, in pipeline order.

  Args:
    stage: a name of :data:`uap_jax.config.STAGES`.

  Returns:
    The stages it reads from, directly or through others.
  """
  out, todo = set(), list(NEEDS[stage])
  while todo:
    s = todo.pop()
    if s not in out:
      out.add(s)
      todo.extend(NEEDS[s])
  return [s for s in FLOW if s in out]


def runs() -> dict[str, StageRun]:
  """The ``run`` function of every stage module, in pipeline order.

  Imported on call (not with this package), so that importing one stage does
  not import them all.

  Returns:
    ``{stage name: run}`` for every name of :data:`uap_jax.config.STAGES`.
  """
  return {name: importlib.import_module(f"{__name__}.{name}").run for name in FLOW}
