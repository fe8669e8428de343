"""Pipeline stages: each is ``run(ctx) -> dict`` (a summary for the log).

A stage reads what earlier stages saved in the work directory (through
:class:`uap_jax.runtime.context.RunContext`) and saves its own artefacts there.
"""
