"""The report of a run: results.json, report.md and the plots.

* :mod:`.results`: the results dict (results.json) from the saved artefacts;
* :mod:`.tables`: report.md, the Markdown tables of a results dict;
* :mod:`.plots`: one function per figure (ROC, similarities, AUC per kind,
  confidence against views), each returning a matplotlib Figure.

The report stage (:mod:`uap_jax.stages.report`) loads the artefacts, calls
these and saves what they return.
"""
