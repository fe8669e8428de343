"""What every stage runs on, and nothing of the method.

* :mod:`~uap_jax.runtime.engine`: how a stack's model axis runs (vmap, map,
  loop, shard).
* :mod:`~uap_jax.runtime.stack`: models of one architecture as one pytree
  with a leading model axis.
* :mod:`~uap_jax.runtime.sharding`, :mod:`~uap_jax.runtime.distributed`:
  device meshes, and several processes.
* :mod:`~uap_jax.runtime.checkpoint`: orbax saving and loading of stacks and
  array pytrees.
* :mod:`~uap_jax.runtime.workdir`: the run directory; every write of a run
  goes through it, and only the main process writes.
* :mod:`~uap_jax.runtime.artifacts`: the one owner that saves and loads each
  artefact of a run.
* :mod:`~uap_jax.runtime.context`: what the stages of one run share (config,
  work directory, data, artefacts).
"""
