"""Pirates who know the method: model-side attacks that try to remove the
fingerprint from a stolen copy (the adaptive-attack issue).

A pirate who has read the paper knows that the owner's fingerprint lives in
the victim's universal adversarial perturbation and in the outputs near its
data. Each kind here is a copy of the victim (or an extraction of it)
changed with that knowledge, at a cost in test accuracy that the zoo records:

* :func:`universal_adversarial_finetune` (``finetune_uat``): universal
  adversarial training (after Shafahi et al. 2020): in each of ``rounds``
  rounds the pirate computes its copy's own SGD-UAP of radius ``xi`` on its
  images and fine-tunes on the clean and the perturbed images with their
  true labels, so that the copy stops being fooled the way the victim is;
* :func:`fine_pruning` (``fine_prune``, after Liu et al. 2018): the units
  feeding the final layer that are least active on the pirate's clean
  images are cut (``ratio`` of them, kept at zero), then the copy is
  fine-tuned;
* :func:`removal_distillation` (``distill_removal``, in the manner of
  RemovalNet, Yao et al. 2023): few-sample distillation (``samples``
  images) of the victim into its own copy, with a term that pushes the
  copy's answers on its own UAP-perturbed images away from the victim's
  (towards the complement of the victim's answer, by ``repel`` in [0, 1]),
  recomputed each round;
* :func:`mixup_extraction` (``extract_mixup``): extraction whose queries
  are mixup and CutMix blends of the attacker's images, far from the data
  points the fingerprint is read at.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from uap_jax import attacks
from uap_jax import train
from uap_jax.runtime import stack as stack_lib
from uap_jax.train import masks as masks_lib
from uap_jax.zoo import kinds

# Images on which the pirate computes its copy's UAP (a random subset of its
# data): as many as the owner's default --uap_samples.
UAP_IMAGES = 1000
# SGD-UAP passes of the pirate's UAP.
UAP_PASSES = 5


def own_uaps(student: stack_lib.Stack, x: np.ndarray, xi: float,
             key: jax.Array, *, strategy: str = "auto") -> np.ndarray:
  """Each copy's own L-inf SGD-UAP on the pirate's images.

  Args:
    student: the pirate's copies.
    x: uint8 ``(N, H, W, C)`` images.
    xi: L-inf radius, pixel units of [0, 1].
    key: PRNG key (model ``i`` uses ``split(key, K)[i]``).
    strategy: model-axis strategy.

  Returns:
    float32 ``(K, H, W, C)`` perturbations, each within ``xi``.
  """
  result = attacks.sgd_uap_stack(student.logits_fn, student.variables,
                                 stack_lib.to_float(x), key=key, xi=xi, p="inf",
                                 max_passes=UAP_PASSES, strategy=strategy)
  return np.asarray(result.v)


def perturbed_images(x: np.ndarray, uaps: np.ndarray) -> np.ndarray:
  """``clip(x + v)`` per copy, as images an API would accept.

  Args:
    x: uint8 ``(N, H, W, C)`` images.
    uaps: float ``(K, H, W, C)`` perturbations in pixel units of [0, 1].

  Returns:
    uint8 ``(K, N, H, W, C)``.
  """
  x = x.astype(np.float32)[None] / 255.0
  return np.round(np.clip(x + uaps[:, None], 0.0, 1.0) * 255.0).astype(np.uint8)


def _uap_subset(job: kinds.Job, n: int, draw: int) -> np.ndarray:
  """``n`` of the attacker's images (sorted indices), drawn afresh per ``draw``."""
  rng = np.random.default_rng([job.plan.run_seed, job.plan.seeds[0], draw])
  return np.sort(rng.choice(job.idx, min(n, len(job.idx)), replace=False))


def _round_key(job: kinds.Job, round_: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(job.plan.run_seed), job.plan.seeds[0] + round_)


def _with_copies(x_pool: np.ndarray, own: np.ndarray, adv: np.ndarray
                 ) -> tuple[np.ndarray, list[np.ndarray]]:
  """The pool with every copy's ``(K, n, ...)`` images appended, and per
  copy the indices of its own images followed by its perturbed ones."""
  k, n = adv.shape[:2]
  pool = np.concatenate([x_pool, adv.reshape((-1,) + adv.shape[2:])])
  index = [np.concatenate([own, len(x_pool) + i * n + np.arange(n)]) for i in range(k)]
  return pool, index


def universal_adversarial_finetune(job: kinds.Job) -> tuple[stack_lib.Stack, int]:
  """``finetune_uat``: copies fine-tuned against their own UAPs, round by round.

  Args:
    job: the plan and its data.

  Returns:
    The trained stack and its step count.
  """
  plan = job.plan
  rounds, xi = plan.shared("rounds"), plan.shared("xi")
  student, steps = kinds.broadcast_victim(job.victim, job.meta), 0
  tc = kinds.train_config(plan, augment=job.augment, epochs=plan.shared("epochs") / rounds)
  y = job.y_pool[job.idx]
  for r in range(rounds):
    uaps = own_uaps(student, job.x_pool[_uap_subset(job, UAP_IMAGES, r)], xi,
                    _round_key(job, r), strategy=job.strategy)
    pool, index = _with_copies(job.x_pool, job.idx, perturbed_images(job.x_pool[job.idx], uaps))
    student, n = job.fit(student, pool, index, tc, lrs=job.lrs,
                         labels=[np.concatenate([y, y])] * len(job.meta),
                         seed=plan.run_seed + r)
    steps += n
  return student, steps


def head_input_activity(student: stack_lib.Stack, x: np.ndarray) -> np.ndarray:
  """Mean activation of each unit that feeds the final ``head`` layer.

  The gradient of the summed first logit with respect to the head's kernel
  is, in its first column, the sum of the head's inputs over the batch, so
  no architecture needs to expose its features.

  Args:
    student: the models.
    x: uint8 ``(N, H, W, C)`` images.

  Returns:
    ``(K, F)`` mean input of the head per model.
  """
  eval_fn = stack_lib.eval_logits_fn(student.graphdef)
  xf = stack_lib.to_float(x)

  def one(params, rest):
    grads = jax.grad(lambda p: eval_fn((p, rest), xf)[:, 0].sum())(params)
    head = head_kernel(grads)
    return head[:, 0] / xf.shape[0]
  return np.asarray(jax.jit(jax.vmap(one))(student.params, student.rest))


def _is_head_kernel(path) -> bool:
  return any(getattr(k, "key", None) == "head" for k in path) and masks_lib.prunable(path)


def head_kernel(params, batch_dims: int = 0) -> jax.Array:
  """The final layer's dense kernel ``(..., F, C)`` of a parameter tree.

  Args:
    params: one model's parameters, or a stack's (``batch_dims=1``).
    batch_dims: leading axes before ``(F, C)``.

  Returns:
    The kernel (raises ValueError where the model has no such layer).
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  kernels = [v for p, v in flat if _is_head_kernel(p)]
  if len(kernels) != 1 or kernels[0].ndim != 2 + batch_dims:
    raise ValueError("fine_prune needs a model whose final layer is one dense "
                     "`head` kernel (F, C); this architecture has none.")
  return kernels[0]


def _unit_masks(params, activity: np.ndarray, ratios: list[float]):
  """Masks that zero, per model, the head rows of its least active units."""
  def mask_of(i):
    keep = np.ones(activity.shape[1], np.float32)
    keep[np.argsort(activity[i], kind="stable")[:int(ratios[i] * activity.shape[1])]] = 0.0
    one = jax.tree.map(lambda a: a[i], params)
    return jax.tree_util.tree_map_with_path(
        lambda p, v: (jnp.broadcast_to(jnp.asarray(keep)[:, None], v.shape)
                      if _is_head_kernel(p) else jnp.ones_like(v)), one)
  return jax.tree.map(lambda *m: jnp.stack(m), *[mask_of(i) for i in range(len(ratios))])


def fine_pruning(job: kinds.Job) -> tuple[stack_lib.Stack, int]:
  """``fine_prune``: the least active units before the head cut, then
  fine-tuning of the whole copy on the attacker's labels.

  Args:
    job: the plan and its data.

  Returns:
    The trained stack and its step count.
  """
  plan = job.plan
  student = kinds.broadcast_victim(job.victim, job.meta)
  ratios = [h["ratio"] for h in plan.hparams]
  activity = head_input_activity(student, job.x_pool[job.idx[:UAP_IMAGES]])
  masks = _unit_masks(student.params, activity, ratios)
  student = dataclasses.replace(
      student, params=jax.tree.map(lambda p, m: p * m, student.params, masks))
  for m, r in zip(student.meta, ratios):
    m["units_cut"] = int(r * activity.shape[1])
  tc = kinds.train_config(plan, augment=job.augment)
  k = len(job.meta)
  return job.fit(student, job.x_pool, [job.idx] * k, tc, lrs=job.lrs,
                 labels=[job.y_pool[job.idx]] * k, masks=masks, seed=plan.run_seed)


def away_from(probs: np.ndarray) -> np.ndarray:
  """The complement of an answer: ``(1 - p) / (C - 1)``, a distribution
  whose mass lies where the victim's does not.

  Args:
    probs: ``(N, C)`` probabilities.

  Returns:
    ``(N, C)`` probabilities; cross-entropy to it is lowest far from ``p``.
  """
  c = probs.shape[-1]
  return ((1.0 - probs) / (c - 1)).astype(np.float32)


def _victim_probs(job: kinds.Job, x: np.ndarray) -> np.ndarray:
  """The victim's API answers (probabilities) to uint8 images ``(..., H, W, C)``."""
  flat = x.reshape((-1,) + x.shape[-3:])
  probs = stack_lib.predict(job.victim, flat, strategy=job.strategy, output="probs")[0]
  return probs.reshape(x.shape[:-3] + probs.shape[-1:])


def removal_distillation(job: kinds.Job) -> tuple[stack_lib.Stack, int]:
  """``distill_removal``: few-sample distillation of the victim into its own
  copy, pushed away from the victim on the copy's UAP-perturbed images.

  The pirate asks the victim's probability API once per image: its
  ``samples`` clean images (targets: the answers) and, each round, their
  copies under the student's own UAP (targets: ``repel`` of the way from
  the answers to :func:`away_from` them; 0 is plain distillation on those
  images too). Each round trains the steps a fine-tuning of ``epochs`` over
  the whole attacker part would take, divided by ``rounds``.

  Args:
    job: the plan and its data.

  Returns:
    The trained stack and its step count.
  """
  plan = job.plan
  rounds, xi, repel = plan.shared("rounds"), plan.shared("xi"), plan.shared("repel")
  chosen = _uap_subset(job, plan.shared("samples"), rounds)
  clean = job.x_pool[chosen]
  answers = _victim_probs(job, clean)
  steps_per_round = max(1, round(plan.shared("epochs") / rounds * train.steps_per_epoch(
      len(job.idx), plan.shared("batch_size"))))
  tc = kinds.train_config(plan, augment=False, target="soft", steps=steps_per_round)
  student, steps, queried = kinds.broadcast_victim(job.victim, job.meta), 0, len(chosen)
  for r in range(rounds):
    adv = perturbed_images(clean, own_uaps(student, clean, xi, _round_key(job, r),
                                           strategy=job.strategy))
    asked = _victim_probs(job, adv)
    targets = [np.concatenate([answers, (1 - repel) * a + repel * away_from(a)])
               for a in asked]
    queried += len(chosen)
    pool, index = _with_copies(job.x_pool, chosen, adv)
    student, n = job.fit(student, pool, index, tc, lrs=job.lrs, labels=targets,
                         seed=plan.run_seed + r)
    steps += n
  for m in student.meta:
    m["queries"] = int(queried)
  return student, steps


def mixed_queries(x: np.ndarray, copies: int, rng: np.random.Generator) -> np.ndarray:
  """Mixup and CutMix blends of random pairs of the attacker's images.

  Half of the blends are mixup (``l x_i + (1 - l) x_j``), half CutMix (a
  box of ``x_j`` pasted into ``x_i``), with ``l`` uniform in [0, 1]
  (Beta(1, 1), the usual choice).

  Args:
    x: uint8 ``(N, H, W, C)`` images.
    copies: blends per image (at least 1).
    rng: numpy generator.

  Returns:
    uint8 ``(copies * N, H, W, C)``.
  """
  n, h, w, _ = x.shape
  out = np.empty((max(1, copies) * n,) + x.shape[1:], x.dtype)
  for j in range(max(1, copies)):
    partner = x[rng.permutation(n)]
    lam = rng.random(n)
    cutmix = rng.random(n) < 0.5
    for i in range(n):
      if cutmix[i]:
        bh, bw = int(h * np.sqrt(1 - lam[i])), int(w * np.sqrt(1 - lam[i]))
        top, left = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        img = x[i].copy()
        img[top:top + bh, left:left + bw] = partner[i, top:top + bh, left:left + bw]
      else:
        img = np.round(lam[i] * x[i] + (1 - lam[i]) * partner[i].astype(np.float32))
      out[j * n + i] = img
  return out


def mixup_extraction(job: kinds.Job) -> tuple[stack_lib.Stack, int]:
  """``extract_mixup``: extraction through the probability API whose queries
  are the attacker's images and their mixup / CutMix blends.

  Args:
    job: the plan and its data.

  Returns:
    The trained stack and its step count.
  """
  return kinds.learn_from_api(job, "teacher_soft", copies_fn=mixed_queries)


# The function that trains each removal kind.
TRAINERS = {
    "finetune_uat": universal_adversarial_finetune,
    "fine_prune": fine_pruning,
    "distill_removal": removal_distillation,
    "extract_mixup": mixup_extraction,
}
