r"""API-side evasion: the zoo's evaluation suspects behind APIs that answer less.

For one finished run, every evaluation suspect of the random split (pirates
and independents alike: an innocent API may round too) answers through each
transform of :mod:`uap_jax.fingerprint.api_answers` (answers) or
:mod:`uap_jax.fingerprint.api_queries` (queries: the suspect's model is run
behind the API, and the pirates' test-accuracy cost of it is measured on
1,000 test images); the owner's reference
models, the victim and the encoder stay as they are (the owner computes
them white-box). Each transform is judged with the run's default test under
the encoder's score and the encoder-free ``uap_follow``, and under the
encoder once more with the owner's own models passed through the same
transform ("owner matched"). Under the encoder, answers that carry only the
top class (``labels``; ``topk:1``, which the owner records as labels, as the
README advises) and answers more or less confident than every reference
model are judged by the run's label judge, as the command line judges them.

    python experiments/api_evasion.py --workdir=runs/quickstart \
        --out=experiments/results/api_evasion_quickstart

Prints, and writes OUT.md, OUT.json and OUT.png (detection against the
pirates' accuracy cost for the query-side transforms): per transform and score, the
pirates' mean accuracy cost (query side), the pirates
detected at the run's alpha, independents accused, the ROC-AUC of the mean
similarity (pirates against independents) and per piracy kind the pirates
detected.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from uap_jax import api  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax import fingerprint as fp_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.fingerprint import api_answers  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.fingerprint import api_queries  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.runtime import stack as stack_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.runtime.context import RunContext  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.stages import verify as verify_stage  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.verify import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.verify import protocols  # pylint: disable=g-import-not-at-top,wrong-import-position

TRANSFORMS = ("none", "round:2", "round:1", "topk:3", "topk:1", "temperature:3",
              "temperature:0.3", "logit_noise:0.5", "logit_noise:2", "labels",
              "noise:0.05", "noise:0.1", "shift:2", "jpeg:75", "flag:3")
QUERY_SIDE = ("noise", "shift", "jpeg", "flag")
# Answers the owner records as labels: the label judge compares them.
TOP_CLASS_ONLY = ("labels", "topk:1")
# Test images on which a query-side API's accuracy cost is measured.
COST_IMAGES = 1000


def _is_query_side(spec: str) -> bool:
  return spec.partition(":")[0] in QUERY_SIDE


def _check_spec(spec: str) -> None:
  if spec == "none":
    return
  (api_queries if _is_query_side(spec) else api_answers).parse(spec)


def _models_by_name(ctx: RunContext) -> dict:
  """Model name -> (stack index, position in it), over every fingerprinted stack."""
  return {name: (s, i) for s, stack in enumerate(ctx.artifacts.all_stacks())
          for i, name in enumerate(stack.names)}


def _accuracies(logits_fn, variables, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Test accuracy of every model of ``variables`` (leading model axis)."""
  fn = jax.jit(jax.vmap(logits_fn, in_axes=(0, None)))
  hits = 0
  for start in range(0, len(x), 250):
    batch = stack_lib.to_float(x[start:start + 250])
    hits = hits + (np.asarray(fn(variables, batch)).argmax(-1) == y[start:start + 250]).sum(1)
  return hits / len(x)


def query_side(ctx: RunContext, spec: str, suspects: list[int]) -> tuple[np.ndarray, dict]:
  """The suspects' fingerprints through a query-side API, and its accuracy cost.

  Returns:
    ``(S, V, D)`` fingerprints and ``{name: (test accuracy without, with)}``
    of every piracy suspect.
  """
  art, data = ctx.artifacts, ctx.data
  fp = art.fingerprints
  stacks, by_name = art.all_stacks(), _models_by_name(ctx)
  x_points = data.x_train[fp.points]
  x_cost, y_cost = data.x_test[:COST_IMAGES], data.y_test[:COST_IMAGES]
  rows, cost = {}, {}
  groups: dict[int, list[int]] = {}
  for i in suspects:
    groups.setdefault(by_name[fp.models[i]["name"]][0], []).append(i)
  for s, members in groups.items():
    sub = stacks[s].select([by_name[fp.models[i]["name"]][1] for i in members])
    api_fn = api_queries.wrap(spec, sub.logits_fn)
    out = np.asarray(fp_lib.fingerprints((api_fn, sub.variables), x_points, art.uaps,
                                         mode=fp.mode))
    rows.update(zip(members, out))
    if any(fp.models[i]["family"] == "piracy" for i in members):
      plain = _accuracies(sub.logits_fn, sub.variables, x_cost, y_cost)
      behind = _accuracies(api_fn, sub.variables, x_cost, y_cost)
      cost.update({fp.models[i]["name"]: (float(a), float(b))
                   for i, a, b in zip(members, plain, behind)
                   if fp.models[i]["family"] == "piracy"})
  return np.stack([rows[i] for i in suspects]), cost


def judge_transform(ctx: RunContext, spec: str, score: str, matched: bool = False) -> dict:
  """One transform under one score: counts, AUC and per-kind detection.

  ``matched``: the owner passes its own victim and reference models through
  the same transform (it can read a deterministic one off the answers:
  their decimals, how many classes are non-zero) before scoring.
  """
  art = ctx.artifacts
  fp, split = art.fingerprints, art.split()
  num_uaps, num_classes = len(art.uaps), ctx.data.num_classes
  suspects = list(split["eval"])
  fps = np.asarray(fp.fps)
  cost = {}
  if spec == "none":
    answered = fps[suspects]
  elif _is_query_side(spec):
    answered, cost = query_side(ctx, spec, suspects)
  else:
    answered = api_answers.apply(spec, fps[suspects], num_uaps, num_classes,
                                 seed=ctx.cfg.seed)
  if matched:
    fps = api_answers.apply(spec, fps, num_uaps, num_classes, seed=ctx.cfg.seed + 1)
  settings = dataclasses.replace(verify_stage._settings(ctx), score=score)  # pylint: disable=protected-access
  verdicts = protocols.judge(art.encoder(), answered, fps, fp.models, fp.victim_index,
                             split["calib"], settings, num_uaps=num_uaps,
                             num_classes=num_classes,
                             point_labels=verify_stage.point_labels(ctx),
                             labels_only=spec in TOP_CLASS_ONLY,
                             label_judge=art.label_judge())
  meta = [fp.models[i] for i in suspects]
  piracy = np.array([m["family"] == "piracy" for m in meta])
  pirated = np.array([v["verdict"] == "pirated" for v in verdicts])
  means = np.array([v["similarity_mean"] for v in verdicts])
  kinds = sorted({m["kind"] for m, p in zip(meta, piracy) if p})
  return {"transform": spec, "score": score + (" (owner matched)" if matched else ""),
          "detected": int((pirated & piracy).sum()), "num_piracy": int(piracy.sum()),
          "accused": int((pirated & ~piracy).sum()), "num_independents": int((~piracy).sum()),
          "auc": metrics.roc_auc(means, piracy.astype(int)),
          "judged_on_labels": int(sum(v.get("judged_on") == "labels" for v in verdicts)),
          "pirate_accuracy_cost": (float(np.mean([a - b for a, b in cost.values()]))
                                   if cost else 0.0),
          "per_kind": {k: int(sum(p for m, p in zip(meta, pirated) if m["kind"] == k))
                       for k in kinds}}


def table(rows: list[dict], name: str) -> str:
  kinds = sorted({k for r in rows for k in r["per_kind"]})
  lines = [f"# API-side evasion: {name}", "",
           "| transform | score | pirates' accuracy cost | pirates detected | "
           "independents accused | AUC | judged on labels | " + " | ".join(kinds) + " |",
           "|---" * (7 + len(kinds)) + "|"]
  for r in rows:
    lines.append(f"| {r['transform']} | {r['score']} | {r['pirate_accuracy_cost']:.3f} | "
                 f"{r['detected']}/{r['num_piracy']} | "
                 f"{r['accused']}/{r['num_independents']} | {r['auc']:.3f} | "
                 f"{r.get('judged_on_labels', 0)} | "
                 + " | ".join(str(r["per_kind"].get(k, "")) for k in kinds) + " |")
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str, name: str) -> None:
  """Pirates detected against their accuracy cost, per query-side transform
  family with a strength knob (one line per family and score)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  base = {r["score"]: r for r in rows if r["transform"] == "none"}
  for family in QUERY_SIDE:
    for score, style in (("encoder", "-o"), ("uap_follow", "--s")):
      pts = sorted((r["pirate_accuracy_cost"], r["detected"] / max(1, r["num_piracy"]), r["transform"])
                   for r in rows if r["score"] == score
                   and r["transform"].partition(":")[0] == family)
      if not pts:
        continue
      if score in base:
        pts = [(0.0, base[score]["detected"] / max(1, base[score]["num_piracy"]), "none")] + pts
      line, = ax.plot([100 * c for c, _, _ in pts], [d for _, d, _ in pts], style,
                      label=f"{family} ({score})")
      for c, d, t in pts[1:]:
        ax.annotate(t.partition(":")[2], (100 * c, d), fontsize=7, color=line.get_color())
  ax.set_xlabel("pirates' test-accuracy cost behind the API (points)")
  ax.set_ylabel("pirates detected (fraction)")
  ax.set_ylim(-0.05, 1.05)
  ax.set_title(f"Query-side evasion: detection against cost ({name})")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a finished run")
  parser.add_argument("--transforms", default=",".join(TRANSFORMS))
  parser.add_argument("--out", default="", help="write OUT.md and OUT.json")
  args = parser.parse_args(argv)
  ctx = api.Verifier.from_workdir(args.workdir).ctx
  for spec in args.transforms.split(","):
    _check_spec(spec)  # every spec checked before any work
  rows = []
  for spec in args.transforms.split(","):
    matchable = spec not in ("none", *TOP_CLASS_ONLY) and not _is_query_side(spec)
    runs = [("encoder", False), ("uap_follow", False)] + ([("encoder", True)] if matchable
                                                          else [])
    for score, matched in runs:
      rows.append(judge_transform(ctx, spec, score, matched))
      print(rows[-1], flush=True)
  text = table(rows, os.path.basename(os.path.normpath(args.workdir)))
  print(text)
  if args.out:
    with open(args.out + ".md", "w") as f:
      f.write(text)
    with open(args.out + ".json", "w") as f:
      json.dump(rows, f, indent=1)
    plot(rows, args.out + ".png", os.path.basename(os.path.normpath(args.workdir)))


if __name__ == "__main__":
  main()
