"""What the zoo reports: agreement, sparsity, the victim's digest, reuse of
saved stacks, ``zoo.json`` entries, the table, per-kind summaries and the
faithfulness of extraction."""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np

from uap_jax import train
from uap_jax.runtime import stack as stack_lib
from uap_jax.zoo.plan import EXTRACTION_KINDS, StackPlan
from uap_jax.zoo.queries import single_variables

PyTree = Any


def agreement(stack: stack_lib.Stack, reference_labels: np.ndarray, x: np.ndarray,
              strategy: str = "auto") -> np.ndarray:
  """Top-1 agreement of every model of ``stack`` with reference labels.

  Args:
    stack: the models.
    reference_labels: ``(N,)`` top-1 labels of the reference (the victim).
    x: ``(N, H, W, C)`` images.
    strategy: model-axis strategy.

  Returns:
    ``(K,)`` fractions of ``x`` on which each model's top-1 equals the reference.
  """
  pred = stack_lib.predict(stack, x, strategy=strategy).argmax(-1)
  return (pred == np.asarray(reference_labels)[None]).mean(-1)


def zero_fraction(params: PyTree) -> float:
  """Sparsity of one model.

  Args:
    params: parameters of ONE model (no model axis).

  Returns:
    The fraction of exact zeros among its prunable weights (conv and linear
    kernels, as in ``train.magnitude_mask``).
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  weights = [np.asarray(v).ravel() for p, v in flat if train.prunable(p)]
  w = np.concatenate(weights)
  return float(np.mean(w == 0))


def victim_digest(victim: stack_lib.Stack) -> str:
  """A short hash of the victim's variables.

  A zoo stack records the victim it was made from, so a retrained victim
  invalidates it.

  Args:
    victim: stack holding the victim as model 0.

  Returns:
    16 hex digits of the SHA-256 of its parameters and statistics.
  """
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(single_variables(victim)):
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()[:16]


def plan_matches(plan: StackPlan, saved_models: list[dict], digest: str) -> bool:
  """Whether a saved stack can be reused for a plan.

  Args:
    plan: what the zoo wants now.
    saved_models: the per-model metadata of the saved stack.
    digest: :func:`victim_digest` of the current victim.

  Returns:
    True when the saved stack holds exactly the planned models (names,
    seeds, architecture, data part, hyper-parameters), made from this victim.
  """
  want = [(m["name"], m["seed"], m["arch"], m["part"], m["hparams"]) for m in plan.meta()]
  have = [(m.get("name"), m.get("seed"), m.get("arch"), m.get("part"), m.get("hparams"))
          for m in saved_models]
  return want == have and all(m.get("victim_digest") == digest for m in saved_models)


def zoo_entry(meta: dict) -> dict:
  """The ``zoo.json`` entry of one model.

  Args:
    meta: the model's metadata in its stack.

  Returns:
    Its identity, hyper-parameters, data, accuracy, agreement and timing.
  """
  keys = ("name", "kind", "family", "parent", "arch", "part", "seed", "hparams",
          "train_examples", "queries", "query_images", "adversarial_images_added", "test_accuracy",
          "agreement", "train_seconds", "train_cpu_seconds", "checkpoint")
  return {k: meta[k] for k in keys if k in meta}


def format_table(entries: list[dict]) -> str:
  """A plain-text table of zoo entries.

  Args:
    entries: ``zoo.json`` model entries.

  Returns:
    Aligned columns: name, kind, family, arch, test accuracy, agreement.
  """
  rows = [("name", "kind", "family", "arch", "test_acc", "agreement")]
  for e in entries:
    rows.append((e["name"], e["kind"], e["family"], e["arch"],
                 f"{e.get('test_accuracy', float('nan')):.4f}",
                 f"{e.get('agreement', float('nan')):.4f}"))
  widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
  lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def kind_summary(entries: list[dict]) -> dict[str, dict]:
  """Accuracy and agreement per kind.

  Args:
    entries: ``zoo.json`` model entries.

  Returns:
    Per kind: count, mean test accuracy, mean / min / max agreement.
  """
  out = {}
  for kind in dict.fromkeys(e["kind"] for e in entries):
    acc = [e["test_accuracy"] for e in entries if e["kind"] == kind]
    agr = [e["agreement"] for e in entries if e["kind"] == kind]
    out[kind] = {"count": len(acc), "test_accuracy": float(np.mean(acc)),
                 "agreement": float(np.mean(agr)), "agreement_min": float(np.min(agr)),
                 "agreement_max": float(np.max(agr))}
  return out


def extraction_faithfulness(entries: list[dict]) -> dict | None:
  """Agreement of extracted models next to that of same-data independents.

  Extraction only threatens the owner when the copies agree with the victim
  more than models trained independently on the victim's own data do.

  Args:
    entries: ``zoo.json`` entries.

  Returns:
    ``None`` without extracted or same-data independent models; otherwise
    per extraction kind and architecture its mean agreement, the
    independents' mean and max, and ``faithful`` (extracted mean above the
    independents' max).
  """
  same_data = [e["agreement"] for e in entries
               if e["family"] == "independent" and e["part"] == "victim"]
  extracted = [e for e in entries if e["kind"] in EXTRACTION_KINDS]
  if not same_data or not extracted:
    return None
  out = {"same_data_independents": {"mean": float(np.mean(same_data)),
                                    "max": float(np.max(same_data)),
                                    "count": len(same_data)}}
  for key in dict.fromkeys((e["kind"], e["arch"]) for e in extracted):
    agr = [e["agreement"] for e in extracted if (e["kind"], e["arch"]) == key]
    out[f"{key[0]}__{key[1]}"] = {"mean": float(np.mean(agr)),
                                  "faithful": bool(np.mean(agr) > np.max(same_data))}
  return out
