"""What every stage runs on, and nothing of the method.

* :mod:`~uap_jax.runtime.engine`: how a stack's model axis runs (vmap, map,
  loop, shard).
* :mod:`~uap_jax.runtime.stack`: models of one architecture as one pytree
  with a leading model axis.
* :mod:`~uap_jax.runtime.sharding`, :mod:`~uap_jax.runtime.distributed`:
  device meshes, and several processes.
* :mod:`~uap_jax.runtime.checkpoint`, :mod:`~uap_jax.runtime.workdir`,
  :mod:`~uap_jax.runtime.context`: saving, the run directory, and what the
  stages of one run share.
"""
