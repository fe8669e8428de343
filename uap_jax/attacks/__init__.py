"""Adversarial attacks and universal adversarial perturbations (UAPs).

A model is a pure ``logits_fn(variables, x) -> logits`` (``x`` float32 NHWC in
[0, 1]) plus its ``variables`` pytree, e.g. ``stack.logits_fn`` and
``jax.tree.map(lambda a: a[i], stack.variables)``; a whole stack passes the
stacked ``stack.variables`` to the ``*_stack`` functions. Perturbation
budgets (``eps``, ``xi``) are in pixel units of [0, 1] images whatever the
model's normalisation, and perturbed images are clipped to [0, 1]. All
attacks are jit-compiled (``logits_fn`` static: pass the same function object
to compile once per shape), written with ``lax`` loops, and take explicit
PRNG keys.

Modules:

* ``common``: argument checks, norms, projection, losses.
* ``gradient``: :func:`fgsm`, :func:`pgd`, :func:`pgd_stack` (L-inf / L2), and
  :func:`pgd_steps`, the one PGD kernel for any loss inside jitted code.
* ``deepfool``: :func:`deepfool`, minimal perturbations, batched.
* ``uap_passes``: :class:`UAPResult` and the pass loop both UAP algorithms
  share.
* ``uap_deepfool``: :func:`uap` / :func:`uap_stack`, DeepFool-UAP
  (minibatched, pipelined or sequential).
* ``uap_sgd``: :func:`sgd_uap` / :func:`sgd_uap_stack`, optax loss ascent
  with projection.
* ``fooling``: :func:`fooling_rate`, :func:`transfer_matrix`.
* ``victim_uap``: :func:`compute_victim_uap`, the one driver of the ``uap``
  stage: a victim's UAP(s) for any of ``config.UAP_METHODS`` plus the
  ``uap.json`` summary.
"""

from uap_jax.attacks.common import check_p
from uap_jax.attacks.common import flat_norm
from uap_jax.attacks.common import project
from uap_jax.attacks.deepfool import deepfool
from uap_jax.attacks.deepfool import DeepFoolResult
from uap_jax.attacks.fooling import fooling_rate
from uap_jax.attacks.fooling import transfer_matrix
from uap_jax.attacks.gradient import fgsm
from uap_jax.attacks.gradient import pgd
from uap_jax.attacks.gradient import pgd_stack
from uap_jax.attacks.gradient import pgd_steps
from uap_jax.attacks.uap_deepfool import uap
from uap_jax.attacks.uap_deepfool import uap_stack
from uap_jax.attacks.uap_passes import UAPResult
from uap_jax.attacks.uap_sgd import sgd_uap
from uap_jax.attacks.uap_sgd import sgd_uap_stack
from uap_jax.attacks.victim_uap import compute_victim_uap

__all__ = [
    "check_p", "flat_norm", "project", "deepfool", "DeepFoolResult", "fgsm",
    "pgd", "pgd_stack", "pgd_steps", "fooling_rate", "sgd_uap", "sgd_uap_stack",
    "transfer_matrix", "uap", "uap_stack", "UAPResult", "compute_victim_uap",
]
