"""Garbage and noisy-but-real black-box answers: what uap-jax says of each.

    python experiments/garbage_answers.py WORKDIR [--labels_workdir DIR] \
        [--seeds 5] [--out experiments/results/garbage_answers]

WORKDIR is a finished run (any flags; it is copied, never written). Its
export is redone in the copy when it has no control queries. Two parts:

1. **Verdicts.** From the victim's own answers to the exported queries
   (and one independent model's), answer files as a recording slip or a
   broken API would make them: shifted by one row, shuffled without
   ``query_id``, under wrong query ids, uniform rows, one label for
   everything, random labels, random probabilities; and as a real but
   noisy API would: rounded to 1 or 2 decimals (renormalised, as the
   README says to record them; raw, they are refused by the
   probability rule), labels or top-1 only, Gaussian noise on the logits, a
   softmax temperature. Each goes through ``--stages=verify --suspect=FILE``
   in the run (label answers in ``--labels_workdir``, a run with
   ``--fp_mode=labels``, when given); the table gives the verdict now, with
   the reason, and the verdict the test gives when the answer check is
   skipped (what it was before the check).
2. **Rates over the zoo.** Every model of the run (victim and zoo) answers
   the queries; each noisy-but-real transform and each garbage transform,
   over ``--seeds`` seeds, goes through the answer check alone
   (:func:`uap_jax.fingerprint.controls.check_answers`): false refusals
   (real answers found invalid) and false acceptances (garbage found valid).

Prints Markdown; writes ``OUT.md`` and ``OUT.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Callable

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax import config as config_lib
from uap_jax import pipeline
from uap_jax.fingerprint import blackbox
from uap_jax.fingerprint import controls
from uap_jax.runtime import stack as stack_lib
from uap_jax.runtime.artifacts import Artifacts
from uap_jax.runtime.workdir import Workdir

# An answers file: key -> array, as np.savez takes it.
Answers = dict[str, np.ndarray]
# A transform: (the model's (Q, C) logits, rng) -> an answers file.
Transform = Callable[[np.ndarray, np.random.Generator], Answers]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
  z = logits / temperature
  e = np.exp(z - z.max(-1, keepdims=True))
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def rounded(logits: np.ndarray, decimals: int, renormalise: bool) -> np.ndarray:
  p = np.round(softmax(logits), decimals)
  return (p / p.sum(-1, keepdims=True)).astype(np.float32) if renormalise else p


def noisy(logits: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
  """Probabilities after Gaussian noise of sd ``scale`` x the logits' std (a
  model's logit scale varies widely, so noise is relative to it)."""
  return softmax(logits + rng.normal(0, scale * logits.std(), logits.shape))


# What a real classifier's API can do to its answers (all must be judged).
REAL: dict[str, tuple[str, Transform]] = {
    "probabilities": ("the model's probabilities", lambda l, r: {
        "outputs": softmax(l)}),
    "rounded_1_decimal": ("rounded to 1 decimal, renormalised", lambda l, r: {
        "outputs": rounded(l, 1, True)}),
    "rounded_2_decimals": ("rounded to 2 decimals, renormalised", lambda l, r: {
        "outputs": rounded(l, 2, True)}),
    "labels_only": ("labels only (also: top-1 only, recorded as labels)",
                    lambda l, r: {"outputs": l.argmax(-1)}),
    "logit_noise_0.1": ("Gaussian noise on the logits, sd 0.1 x their std; "
                        "probabilities", lambda l, r: {"outputs": noisy(l, 0.1, r)}),
    "logit_noise_0.25": ("Gaussian noise on the logits, sd 0.25 x their std; "
                         "probabilities", lambda l, r: {"outputs": noisy(l, 0.25, r)}),
    "logit_noise_0.5": ("Gaussian noise on the logits, sd 0.5 x their std; "
                        "probabilities", lambda l, r: {"outputs": noisy(l, 0.5, r)}),
    "logit_noise_1": ("Gaussian noise on the logits, sd 1 x their std; "
                      "probabilities", lambda l, r: {"outputs": noisy(l, 1.0, r)}),
    "temperature_5": ("softmax temperature 5", lambda l, r: {
        "outputs": softmax(l, 5.0)}),
    "noisy_logits_as_labels": ("noise sd 0.25 x std on the logits, labels only",
                               lambda l, r: {"outputs": noisy(
                                   l, 0.25, r).argmax(-1)}),
}


# Noise that changes a quarter to a half of the top-1 answers: the answers
# are largely destroyed, and refusing them is not a false refusal of a usable
# API (on the quickstart its accuracy falls 13 and 34 points); reported apart.
HEAVY_NOISE = ("logit_noise_0.5", "logit_noise_1")


def _uniform(l, r):
  return {"outputs": np.full(l.shape, 1.0 / l.shape[1], np.float32)}


def _shuffled(l, r):
  return {"outputs": softmax(l)[r.permutation(len(l))]}


def _wrong_ids(l, r):
  return {"outputs": softmax(l), "query_id": r.permutation(len(l))}


# Answers that are not a classifier's in query order (none may be judged).
GARBAGE: dict[str, tuple[str, Transform]] = {
    "shifted_by_one": ("the rows shifted by one (an off-by-one recording)",
                       lambda l, r: {"outputs": np.roll(softmax(l), 1, axis=0)}),
    "shifted_by_one_labels": ("labels, shifted by one row", lambda l, r: {
        "outputs": np.roll(l.argmax(-1), 1)}),
    "shuffled_no_query_id": ("the rows in a random order, no query_id",
                             _shuffled),
    "wrong_query_ids": ("the rows in order, under a random query_id",
                        _wrong_ids),
    "uniform_rows": ("every row uniform", _uniform),
    "constant_label": ("one label for every query", lambda l, r: {
        "outputs": np.full(len(l), int(r.integers(l.shape[1])))}),
    "random_labels": ("uniformly random labels", lambda l, r: {
        "outputs": r.integers(0, l.shape[1], len(l))}),
    "random_probabilities": ("random probability rows (Dirichlet)",
                             lambda l, r: {"outputs": r.dirichlet(
                                 np.ones(l.shape[1]), len(l)).astype(np.float32)}),
    "reversed": ("the rows in reverse order", lambda l, r: {
        "outputs": softmax(l)[::-1]}),
}


def copy_run(workdir: str, scratch: str) -> tuple[str, config_lib.Config]:
  """A copy of the run, with a control-query export; its settings."""
  copy = os.path.join(scratch, os.path.basename(os.path.normpath(workdir)))
  shutil.copytree(workdir, copy, symlinks=True,
                  ignore=shutil.ignore_patterns("lock", "verdicts"))
  with open(os.path.join(copy, "config.json")) as f:
    cfg = config_lib.Config(**json.load(f))
  cfg = dataclasses.replace(cfg, workdir=copy, suspect="")
  manifest = blackbox.load_manifest(os.path.join(copy, "queries.json")) if (
      os.path.exists(os.path.join(copy, "queries.json"))) else {"controls": None}
  if manifest["controls"] is None:
    pipeline.run(dataclasses.replace(cfg, stages=["export_queries"], overwrite=True))
  return copy, cfg


def model_logits(workdir: str) -> tuple[list[dict], np.ndarray, np.ndarray]:
  """Every model of the run, its ``(Q, C)`` logits on the queries, and the
  queries."""
  art = Artifacts(Workdir(workdir, writer=False))
  queries = blackbox.load_queries(art.queries_path)
  metas, logits = [], []
  for stack in art.all_stacks():
    metas += stack.meta
    logits.append(np.asarray(stack_lib.predict(stack, queries, output="logits"),
                             np.float32))
  return metas, np.concatenate(logits), queries


@contextlib.contextmanager
def check_skipped():
  """The answer check always passes: the verdict as it was without it."""
  saved = controls.check_answers
  controls.check_answers = lambda rows, ctrl: controls.AnswerCheck(True, (), {})
  try:
    yield
  finally:
    controls.check_answers = saved


def verdict(cfg: config_lib.Config, path: str) -> dict:
  """``--stages=verify --suspect=path`` in the run: the verdict or refusal."""
  try:
    pipeline.run(dataclasses.replace(cfg, stages=["verify"], suspect=path,
                                     overwrite=False))
  except (ValueError, FileNotFoundError) as e:
    reason = str(e).split("\n")[0].replace(os.path.dirname(path) + os.sep, "")
    return {"verdict": "refused", "reason": reason}
  name = os.path.splitext(os.path.basename(path))[0]
  with open(os.path.join(cfg.workdir, "verdicts", f"{name}.json")) as f:
    v = json.load(f)["verdicts"][0]
  return {k: v.get(k) for k in ("verdict", "p_value", "confidence", "reason")}


def verdict_table(cfg, labels_cfg, logits, metas, scratch) -> list[dict]:
  """Part 1: each case of the victim's (and an independent's) answers."""
  victim = [i for i, m in enumerate(metas) if m.get("kind") == "victim"][0]
  independent = [i for i, m in enumerate(metas)
                 if str(m.get("kind", "")).startswith("independent")][0]
  rows = []
  cases = [(victim, _group("real", n), n, d, t) for n, (d, t) in REAL.items()]
  cases += [(independent, "real", n, d, t) for n, (d, t) in REAL.items()
            if n in ("probabilities", "rounded_1_decimal", "labels_only",
                     "logit_noise_0.25")]
  cases += [(victim, "garbage", n, d, t) for n, (d, t) in GARBAGE.items()]
  for model, group, name, what, transform in cases:
    answers = transform(logits[model], np.random.default_rng(0))
    who = metas[model]["name"]
    path = os.path.join(scratch, f"{who}__{name}.npz")
    np.savez(path, **answers)
    labels = answers["outputs"].ndim == 1
    run_cfg = labels_cfg if labels and labels_cfg is not None else cfg
    now = verdict(run_cfg, path)
    with check_skipped():
      before = verdict(run_cfg, path)
    row = {"model": who, "group": group, "case": name, "what": what,
           "run_fp_mode": run_cfg.fp_mode, "now": now, "without_check": before}
    if name == "rounded_1_decimal":  # as the API sends them, unrenormalised
      raw = os.path.join(scratch, f"{who}__{name}_raw.npz")
      np.savez(raw, outputs=rounded(logits[model], 1, False))
      row["raw_refused"] = verdict(cfg, raw)
    rows.append(row)
    print(f"{who} {name}: {_short(now)} | without check: {_short(before)}",
          flush=True)
  return rows


def rates(logits, metas, manifest_path, seeds, scratch) -> list[dict]:
  """Part 2: the answer check over every model, transform and seed."""
  out = []
  path = os.path.join(scratch, "rate.npz")
  for kind, table in (("real", REAL), ("garbage", GARBAGE)):
    for name, (what, transform) in table.items():
      group = _group(kind, name)
      counts = {"valid": 0, "invalid": 0, "refused": 0}
      failed_by = {"repeats": 0, "holdout": 0, "constant": 0}
      worst, changed, accuracies = {}, [], []
      for m in range(len(logits)):
        for seed in range(seeds):
          np.savez(path, **transform(logits[m], np.random.default_rng(seed)))
          try:
            answers = blackbox.load_answers(path, manifest_path)
          except ValueError:
            counts["refused"] += 1
            continue
          check = answers.check()
          changed.append(float(np.mean(
              answers.rows.argmax(-1) != logits[m].argmax(-1))))
          counts["valid" if check.valid else "invalid"] += 1
          for reason in check.reasons:
            key = ("repeats" if "repeated" in reason else
                   "holdout" if "held-out" in reason else "constant")
            failed_by[key] += 1
          s = check.stats
          dis = s.get("repeats_disagreeing", 0) / max(1, s.get("repeats", 1))
          worst["max_repeat_disagreement"] = max(
              worst.get("max_repeat_disagreement", 0.0), dis)
          worst["min_repeat_disagreement"] = min(
              worst.get("min_repeat_disagreement", 1.0), dis)
          acc = s.get("holdout_accuracy", 0.0)
          accuracies.append(acc)
          worst["min_holdout_accuracy"] = min(
              worst.get("min_holdout_accuracy", 1.0), acc)
          worst["max_holdout_accuracy"] = max(
              worst.get("max_holdout_accuracy", 0.0), acc)
      out.append({"group": group, "case": name, "what": what,
                  "trials": len(logits) * seeds, **counts,
                  "top1_changed_mean": float(np.mean(changed)) if changed else None,
                  "top1_changed_max": float(np.max(changed)) if changed else None,
                  "holdout_accuracy_mean": (float(np.mean(accuracies))
                                            if accuracies else None),
                  "failed_by": failed_by, **worst})
      print(f"rates {group} {name}: {counts}", flush=True)
  return out


def _group(kind: str, name: str) -> str:
  return "heavy_noise" if name in HEAVY_NOISE else kind


def _short(v: dict) -> str:
  if v["verdict"] == "refused":
    return f"refused: {v['reason'][:90]}"
  if v.get("p_value") is None:
    return f"{v['verdict']}: {(v.get('reason') or '')[:90]}"
  return f"{v['verdict']} (p = {v['p_value']:.2g})"


def _cell(v: dict, limit: int = 260) -> str:
  if v["verdict"] == "refused":
    text = f"refused: {v['reason']}"
  elif v.get("p_value") is None:
    text = f"**{v['verdict']}**: {v.get('reason') or ''}"
  else:
    text = f"{v['verdict']} (p = {v['p_value']:.2g})"
  text = text.replace("|", "/").replace("\n", " ")
  return text if len(text) <= limit else text[:limit - 1] + "…"


def markdown(verdicts: list[dict], rate_rows: list[dict], header: str) -> str:
  lines = [header, "", "## Verdicts", "",
           "| model | case | answers | run's --fp_mode | verdict now | "
           "verdict without the answer check |", "|---|---|---|---|---|---|"]
  for r in verdicts:
    now = _cell(r["now"])
    if "raw_refused" in r:
      now += f" (unrenormalised: {_cell(r['raw_refused'], 120)})"
    lines.append(f"| {r['model']} | {r['group']}: `{r['case']}` | {r['what']} | "
                 f"{r['run_fp_mode']} | {now} | {_cell(r['without_check'], 80)} |")
  lines += ["", "## The answer check over every model of the run", "",
            "*top-1 changed*: the share of queries whose top-1 class differs "
            "from the model's own (what the API's noise does; for garbage, what "
            "the misordering does), mean and max over the trials.", "",
            "| group | case | trials (models x seeds) | valid | invalid | "
            "refused by the loader | failed: repeats / held-out / constant | "
            "top-1 changed mean (max) | repeat disagreement min–max | "
            "held-out accuracy min–max |",
            "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rate_rows:
    f = r["failed_by"]
    rd = (f"{r.get('min_repeat_disagreement', 0):.2f}–"
          f"{r.get('max_repeat_disagreement', 0):.2f}")
    ha = (f"{r['holdout_accuracy_mean'] or 0:.2f} "
          f"({r.get('min_holdout_accuracy', 0):.2f}–"
          f"{r.get('max_holdout_accuracy', 0):.2f})")
    ch = ("–" if r["top1_changed_mean"] is None else
          f"{r['top1_changed_mean']:.2f} ({r['top1_changed_max']:.2f})")
    lines.append(f"| {r['group']} | `{r['case']}` | {r['trials']} | {r['valid']} | "
                 f"{r['invalid']} | {r['refused']} | {f['repeats']} / "
                 f"{f['holdout']} / {f['constant']} | {ch} | {rd} | {ha} |")
  def count(group, key):
    rows = [r for r in rate_rows if r["group"] == group]
    return (sum(r[key] for r in rows),
            sum(r["trials"] - r["refused"] for r in rows))
  lines += ["", "False refusals (real answers, through the API changes above "
            "the heavy noise, found invalid): {} of {}; heavy noise refused: "
            "{} of {}; false acceptances (garbage found valid): {} of {}.".format(
                *count("real", "invalid"), *count("heavy_noise", "invalid"),
                *count("garbage", "valid"))]
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdir", help="a finished run (copied, not written)")
  parser.add_argument("--labels_workdir", default="",
                      help="a finished run with --fp_mode=labels, for label answers")
  parser.add_argument("--seeds", type=int, default=5, help="seeds per model in part 2")
  parser.add_argument("--out", default=os.path.join(REPO, "experiments", "results",
                                                    "garbage_answers"))
  args = parser.parse_args(argv)
  start = time.time()
  scratch = tempfile.mkdtemp(prefix="garbage_answers.")
  try:
    workdir, cfg = copy_run(args.workdir, scratch)
    labels_cfg = None
    if args.labels_workdir:
      os.makedirs(os.path.join(scratch, "labels"))
      _, labels_cfg = copy_run(args.labels_workdir, os.path.join(scratch, "labels"))
    metas, logits, queries = model_logits(workdir)
    files = os.path.join(scratch, "answers")
    os.makedirs(files)
    verdicts = verdict_table(cfg, labels_cfg, logits, metas, files)
    manifest_path = os.path.join(workdir, "queries.json")
    with open(manifest_path) as f:
      manifest = json.load(f)
    rate_rows = rates(logits, metas, manifest_path, args.seeds, files)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  c = manifest["controls"]
  header = (
      f"# Garbage and noisy-but-real answers\n\n"
      f"Made by `experiments/garbage_answers.py {args.workdir}"
      f"{' --labels_workdir ' + args.labels_workdir if args.labels_workdir else ''}"
      f" --seeds {args.seeds}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
      f"{time.time() - start:.0f} s). Run: `{cfg.dataset}`, victim "
      f"`{cfg.victim_arch}`, {len(metas)} models; export: "
      f"{manifest['num_grid_queries']} fingerprint queries, "
      f"{len(c['repeat_positions'])} repeats, {len(c['holdout_positions'])} "
      f"held-out labelled images ({len(queries)} queries). Check thresholds: "
      f"repeats answered differently at most "
      f"{controls.REPEAT_SHARE_OF_CHANCE:g} x what rows out of order give; "
      f"held-out accuracy above an image-blind answerer at p <= "
      f"{controls.HOLDOUT_ALPHA:g}.")
  text = markdown(verdicts, rate_rows, header)
  print(text)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out + ".md", "w") as f:
    f.write(text)
  with open(args.out + ".json", "w") as f:
    json.dump({"workdir": args.workdir, "labels_workdir": args.labels_workdir,
               "seeds": args.seeds, "verdicts": verdicts, "rates": rate_rows,
               "repeat_share_of_chance": controls.REPEAT_SHARE_OF_CHANCE,
               "holdout_alpha": controls.HOLDOUT_ALPHA}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
