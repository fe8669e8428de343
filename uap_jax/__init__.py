"""uap-jax: fingerprint image classifiers with universal adversarial perturbations.

The owner of a classifier (the *victim*) tells stolen copies of it from
independent models. A run is a pipeline of stages, in the order the data
flows::

  victim -> zoo -> reference -> uap -> fingerprint -> encoder -> verify -> report

Where things are:

* ``main.py``, ``config.py``: the command line and every setting of a run
  (fields and choices only); ``pipeline.py`` runs the stages in order and
  resumes from the finished ones.
* ``stages/``: one module per stage; each loads artefacts, calls the library
  and saves what it made. The order is :mod:`uap_jax.stages`.
* ``runtime/``: the model axis (engine, stack), devices and processes
  (sharding, distributed), checkpoints, the work directory and the one owner
  of every artefact (artifacts), the shared run context.
* ``data/``, ``models/``: data sets and their partition; the classifier
  architectures.
* ``attacks/``: PGD, DeepFool and the UAP algorithms (victim -> UAP).
* ``zoo/``, ``train/``: the suspects, pirated and independent (victim ->
  zoo), and how stacks of models train.
* ``fingerprint/``: fingerprint points, fingerprints and their layout, the
  black-box queries (UAP + zoo -> fingerprints).
* ``verify/``: the contrastive encoder, similarities, piracy tests, splits,
  summaries and reference methods (fingerprints -> verdicts).
* ``report/``: results.json, report.md and plots of a finished run.
* ``api.py``: :class:`Verifier`, suspects judged from Python against a
  finished run (``uap_jax.Verifier.from_workdir(path)``).
"""

from __future__ import annotations

import importlib.metadata

__all__ = ["Verifier", "__version__"]


def __getattr__(name: str):
  # Lazily, so that importing uap_jax.config (the command line's flags)
  # does not start JAX.
  if name == "Verifier":
    from uap_jax.api import Verifier  # pylint: disable=g-import-not-at-top
    return Verifier
  raise AttributeError(f"module 'uap_jax' has no attribute {name!r}")


try:
  __version__ = importlib.metadata.version("uap-jax")
except importlib.metadata.PackageNotFoundError:
  __version__ = "0.1.0"
