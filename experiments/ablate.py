r"""Ablations of the detection recipe on one finished run's victim and zoo.

Every variant is a set of flag overrides of the base run. For each, a new
work directory reuses the base's victim and zoo (and every later artefact the
variant does not change: the UAP, the fingerprints, the encoder) and runs the
remaining stages in-process with ``uap_jax.pipeline.run``. The table gives,
per variant, on the random model split: ROC-AUC per piracy kind and overall,
TPR at 1 % FPR, independents accused at the run's alpha (1e-4), piracy
models detected, median views for 99.99 % confidence over the evaluated
piracy models, and seconds (stages uap..verify, reused ones counted with
the base's time); a second table gives the leave-kind-out AUC of every held
out kind; reference rows (encoder-free raw cosine with and without the UAP
half, SAC-m) come from the base recipe's verify.

  python experiments/ablate.py --base_workdir=runs/cifar10_cpu \
      --out_dir=/tmp/ablate_cifar10 \
      --results=experiments/results/ablate_cifar10_cpu

``--variants`` picks from :data:`VARIANTS` (default: all); ``--extra``
adds named variants: ``--extra="best:--test=model --num_uaps=3"``.
The base work directory is only read.

experiments/results/ablate_cifar10_cpu.{md,json} came from the command above
(base: experiments/cifar10_cpu.flags) with these combinations added, chosen
after the single-flag rows:
  --extra="noUAP+temp0.05:--num_uaps=0 --enc_temperature=0.05"
  --extra="xi_half+temp0.05:--uap_xi=0.0196 --enc_temperature=0.05"
  --extra="noUAP+K40:--num_uaps=0 --fp_k=40"
  --extra="noUAP+model_test:--num_uaps=0 --test=model"
experiments/results/ablate_quickstart_mnist5k.{md,json}: base = a run of
experiments/quickstart.flags, all single-flag variants.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Callable

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from uap_jax import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.runtime.workdir import Workdir  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.verify import summary  # pylint: disable=g-import-not-at-top,wrong-import-position

# The first stage each overridable flag changes (from the Config fields'
# stage metadata); everything before it is reused from the base run.
RUN_STAGES = ("uap", "fingerprint", "encoder", "verify")
FIRST_STAGE = {k: v for k, v in config_lib.FIRST_STAGE.items() if v in RUN_STAGES}
FLAGS_IGNORED = ("strategy",)
REUSABLE = ("victim", "zoo", "uap", "fingerprint", "encoder")

# Files and checkpoints each stage leaves in a work directory.
ARTEFACTS = {
    "victim": (["victim.json"], ["victim"]),
    "uap": (["uap.json"], ["uap"]),
    "fingerprint": (["fingerprints.json"], ["fingerprints"]),
    "encoder": (["encoder.json", "split.json"], ["encoder"]),
}

Overrides = Callable[[dict], list[str]]


def _const(*args: str) -> Overrides:
  return lambda base: list(args)


VARIANTS: dict[str, Overrides] = {
    "paper": _const(),
    "rule_margin": _const("--fp_rule=margin"),
    "rule_random": _const("--fp_rule=random"),
    "rule_kmeans": _const("--fp_rule=kmeans"),
    "K_half": lambda b: [f"--fp_k={max(2, b['fp_k'] // 2)}"],
    "K_double": lambda b: [f"--fp_k={2 * b['fp_k']}"],
    "V_half": lambda b: [f"--fp_v={max(b['n_views'], b['fp_v'] // 2)}"],
    "V_double": lambda b: [f"--fp_v={2 * b['fp_v']}"],
    "mode_probs": _const("--fp_mode=probs"),
    "mode_logits": _const("--fp_mode=logits"),
    "mode_labels": _const("--fp_mode=labels"),
    "uap_deepfool": _const("--uap_method=deepfool"),
    "uap_sgd": _const("--uap_method=sgd"),
    "xi_half": lambda b: [f"--uap_xi={b['uap_xi'] / 2:g}"],
    "xi_double": lambda b: [f"--uap_xi={b['uap_xi'] * 2:g}"],
    "uaps_1": _const("--num_uaps=1"),
    "uaps_3": _const("--num_uaps=3"),
    "no_uap": _const("--num_uaps=0"),
    "enc_hidden_small": lambda b: [f"--enc_hidden={max(4, b['enc_hidden'] // 4)}"],
    "enc_hidden_large": lambda b: [f"--enc_hidden={b['enc_hidden'] * 4}"],
    "enc_temp_0.05": _const("--enc_temperature=0.05"),
    "enc_temp_0.5": _const("--enc_temperature=0.5"),
    "test_welch": _const("--test=welch"),
    "test_model": _const("--test=model"),
    "test_model_z": _const("--test=model_z"),
    "test_empirical": _const("--test=empirical"),
}

_FLAGS = flags.FLAGS
flags.DEFINE_string("base_workdir", None, "A finished run (victim, zoo, uap, ...).")
flags.DEFINE_string("out_dir", None, "Where the variants' work directories go "
                    "(default: BASE_WORKDIR + '_ablate').")
flags.DEFINE_list("variants", list(VARIANTS), f"Variants to run: {', '.join(VARIANTS)}.")
flags.DEFINE_multi_string("extra", [], "Extra variant 'NAME:--flag=v --flag2=w'.")
flags.DEFINE_string("results", None, "Output prefix: writes PREFIX.md and PREFIX.json "
                    "(default: OUT_DIR/ablate).")
flags.DEFINE_bool("redo", False, "Rerun variants whose verify.json already exists.")
flags.DEFINE_string("title", "", "Heading of the Markdown table.")


# --------------------------------------------------------------------------
# Configs.


def base_config(base_workdir: str) -> dict:
  """The base run's settings (config.json), restricted to known fields."""
  path = os.path.join(base_workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: --base_workdir must be a run's work directory.")
  with open(path) as f:
    saved = json.load(f)
  known = {fl.name for fl in dataclasses.fields(config_lib.Config)}
  return {k: v for k, v in saved.items() if k in known}


def _flag_value(value) -> str:
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, list):
    return ",".join(str(v) for v in value)
  return str(value)


def parse_overrides(overrides: list[str]) -> dict[str, str]:
  """``["--flag=value", ...]`` -> ``{flag: value}``; checks every flag is ablatable."""
  out = {}
  for item in overrides:
    if not item.startswith("--") or "=" not in item:
      raise ValueError(f"Override {item!r}: write it as --flag=value.")
    name, _, value = item[2:].partition("=")
    if name not in FIRST_STAGE and name not in FLAGS_IGNORED:
      raise ValueError(
          f"Override --{name} changes the victim or the zoo (or is unknown); an "
          "ablation reuses both. Ablatable flags: " + ", ".join(sorted(FIRST_STAGE)) + ".")
    out[name] = value
  return out


def variant_args(base: dict, overrides: dict[str, str], workdir: str,
                 stages: list[str]) -> list[str]:
  """Command-line arguments of the base run with the overrides applied."""
  values = {k: _flag_value(v) for k, v in base.items()}
  values.update(overrides)
  values.update(workdir=workdir, stages=",".join(stages), overwrite="false", suspect="")
  return [f"--{k}={v}" for k, v in sorted(values.items())]


def changed(base: dict, overrides: dict[str, str]) -> dict[str, str]:
  """The overrides whose value differs from the base run's."""
  parsed = config_lib.parse(variant_args(base, {}, "/tmp/unused", ["verify"]))
  new = config_lib.parse(variant_args(base, overrides, "/tmp/unused", ["verify"]))
  return {k: v for k, v in overrides.items() if getattr(parsed, k) != getattr(new, k)}


def first_stage(overrides: dict[str, str]) -> str:
  """The earliest stage an override set changes (``verify`` if none)."""
  stages = [FIRST_STAGE[k] for k in overrides if k in FIRST_STAGE] or ["verify"]
  return min(stages, key=RUN_STAGES.index)


# --------------------------------------------------------------------------
# Work directories.


def _link(src: str, dst: str) -> None:
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  if os.path.lexists(dst):
    if os.path.isdir(dst) and not os.path.islink(dst):
      shutil.rmtree(dst)
    else:
      os.remove(dst)
  os.symlink(os.path.abspath(src), dst)


def prepare_workdir(base_workdir: str, workdir: str, reuse: list[str]) -> None:
  """Links the base's artefacts of the ``reuse`` stages into ``workdir``.

  Checkpoints and result files are symlinked (only read by later stages);
  config.json, partition.json and the stage markers are copied.
  """
  if os.path.exists(workdir):
    shutil.rmtree(workdir)
  os.makedirs(os.path.join(workdir, "stages"))
  for name in ("config.json", "partition.json"):
    shutil.copy2(os.path.join(base_workdir, name), os.path.join(workdir, name))
  for stage in reuse:
    marker = os.path.join(base_workdir, "stages", f"{stage}.json")
    if not os.path.exists(marker):
      raise FileNotFoundError(f"{marker} is missing: the base run has not finished {stage}.")
    shutil.copy2(marker, os.path.join(workdir, "stages", f"{stage}.json"))
    if stage == "zoo":
      with open(os.path.join(base_workdir, "zoo.json")) as f:
        checkpoints = [s["checkpoint"] for s in json.load(f)["stacks"]]
      files = ["zoo.json"]
    else:
      files, checkpoints = ARTEFACTS[stage]
    for name in files:
      _link(os.path.join(base_workdir, name), os.path.join(workdir, name))
    for name in checkpoints:
      _link(os.path.join(base_workdir, "checkpoints", name),
            os.path.join(workdir, "checkpoints", name))


def _reused_stages(base_workdir: str, start: str) -> list[str]:
  """Stages before ``start`` (always victim and zoo), if the base finished them."""
  out = ["victim", "zoo"]
  for stage in REUSABLE[2:]:
    if RUN_STAGES.index(stage) >= RUN_STAGES.index(start):
      break
    if not os.path.exists(os.path.join(base_workdir, "stages", f"{stage}.json")):
      break
    out.append(stage)
  return out


# --------------------------------------------------------------------------
# Results.


def summarise(verify_json: dict) -> dict:
  """One table row from a verify.json."""
  rnd = verify_json["protocols"]["random"]
  piracy = [r for r in rnd["suspects"] if r["family"] == "piracy"]
  views = [r.get("views_for_target") for r in piracy]
  reached = [v for v in views if v is not None]
  # Suspects that never reach the target count as beyond every view count.
  ranked = sorted(views, key=lambda v: float("inf") if v is None else v)
  median = ranked[(len(ranked) - 1) // 2] if ranked else None
  lko = {k: f.get("auc_held_out") for k, f in verify_json["protocols"]["leave_kind_out"].items()}
  return {
      **summary.headline(rnd),
      "median_views_for_9999": median,
      "piracy_reaching_9999": len(reached),
      "leave_kind_out_auc": lko,
      "leave_kind_out_accused": {
          k: f["held_out_verdicts"]["pirated"]
          for k, f in verify_json["protocols"]["leave_kind_out"].items()
          if f.get("family") == "independent" and "held_out_verdicts" in f},
      "other_tests": verify_json.get("other_tests", {}),
  }


def reference_rows(verify_json: dict) -> dict[str, dict]:
  """Encoder-free references of the base recipe, as table rows."""
  return {f"ref:{name}": dict(summary.brief(r), median_views_for_9999=None,
                              leave_kind_out_auc={})
          for name, r in verify_json.get("references", {}).items()}


def _fmt(v) -> str:
  if v is None:
    return "–"
  if isinstance(v, float):
    return f"{v:.3f}"
  return str(v)


def markdown(rows: dict[str, dict], title: str) -> str:
  """The ablation tables (main, leave-kind-out) as Markdown."""
  ok = {n: r for n, r in rows.items() if "error" not in r}
  kinds = sorted({k for r in ok.values() for k in r["auc"] if k != "all"})
  lines = [f"# {title}", "",
           "Random model split; accusations at alpha = "
           f"{next((r.get('alpha') for r in ok.values() if r.get('alpha')), '1e-4')}; views: "
           "median over evaluated piracy models of the views needed for 99.99 % "
           "confidence ('–': the median model never reaches it); seconds: stages "
           "uap..verify (reused stages counted at the base's time).", ""]
  head = ["variant", "overrides", "AUC all", *kinds, "TPR@1%FPR", "indep. accused",
          "piracy detected", "median views", "seconds"]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in rows.items():
    if "error" in r:
      lines.append(f"| {name} | {r.get('overrides', '')} | error: {r['error'][:120]} |")
      continue
    lines.append("| " + " | ".join([
        name, r.get("overrides", "") or "(base)", _fmt(r["auc"].get("all")),
        *[_fmt(r["auc"].get(k)) for k in kinds], _fmt(r["tpr_at_1pct_fpr"]),
        f"{r['accused_independents']}/{r['num_independents']}",
        f"{r['detected_piracy']}/{r['num_piracy']}", _fmt(r.get("median_views_for_9999")),
        _fmt(r.get("seconds"))]) + " |")
  lko_kinds = sorted({k for r in ok.values() for k in r.get("leave_kind_out_auc", {})})
  if lko_kinds:
    lines += ["", "## Leave-kind-out AUC (the encoder and calibration never saw the kind)", "",
              "Piracy kinds: AUC of the held-out kind against the evaluation independents; "
              "independent kinds: AUC of all evaluation piracy models against the held-out "
              "independents (accused of them in brackets).", ""]
    head = ["variant", *lko_kinds, "min"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in ok.items():
      lko = r.get("leave_kind_out_auc", {})
      if not lko:
        continue
      acc = r.get("leave_kind_out_accused", {})
      cells = [_fmt(lko.get(k)) + (f" ({acc[k]})" if k in acc else "") for k in lko_kinds]
      vals = [v for v in lko.values() if v is not None]
      lines.append("| " + " | ".join([name, *cells, _fmt(min(vals) if vals else None)]) + " |")
  return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Running.


def run_variant(base_workdir: str, base: dict, name: str, overrides: dict[str, str],
                out_dir: str, redo: bool = False) -> dict:
  """Runs one variant; returns its table row."""
  workdir = os.path.join(out_dir, name)
  verify_path = os.path.join(workdir, "verify.json")
  start_stage = first_stage(overrides)
  if redo or not os.path.exists(verify_path):
    reuse = _reused_stages(base_workdir, start_stage)
    stages = [s for s in RUN_STAGES if s not in reuse]
    prepare_workdir(base_workdir, workdir, reuse)
    cfg = config_lib.parse(variant_args(base, overrides, workdir, stages))
    logging.info("Variant %s: %s; running %s", name, overrides or "(base)", stages)
    t0 = time.time()
    pipeline.run(cfg)
    wall = time.time() - t0
  else:
    wall = None
  with open(verify_path) as f:
    row = summarise(json.load(f))
  seconds = Workdir(workdir).stage_seconds(RUN_STAGES)
  row.update(overrides=" ".join(f"--{k}={v}" for k, v in overrides.items()),
             first_stage=start_stage, seconds=sum(seconds.values()),
             seconds_per_stage=seconds, wall_seconds=wall)
  return row


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  if not _FLAGS.base_workdir:
    raise app.UsageError("--base_workdir is required.")
  base_workdir = os.path.abspath(_FLAGS.base_workdir)
  out_dir = os.path.abspath(_FLAGS.out_dir or base_workdir.rstrip("/") + "_ablate")
  results = _FLAGS.results or os.path.join(out_dir, "ablate")
  base = base_config(base_workdir)
  for stage in ("victim", "zoo"):
    if not os.path.exists(os.path.join(base_workdir, "stages", f"{stage}.json")):
      raise app.UsageError(f"{base_workdir} has not finished the {stage} stage.")
  unknown = [v for v in _FLAGS.variants if v not in VARIANTS]
  if unknown:
    raise app.UsageError(f"Unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}.")
  todo = [(v, VARIANTS[v](base)) for v in _FLAGS.variants]
  for spec in _FLAGS.extra:
    name, _, args = spec.partition(":")
    todo.append((name.strip(), args.split()))
  # Validate every variant before any long work.
  plans = []
  for name, args in todo:
    overrides = parse_overrides(args)
    pipeline.check(config_lib.parse(variant_args(base, overrides, "/tmp/unused", ["verify"])))
    plans.append((name, changed(base, overrides), overrides))
  os.makedirs(out_dir, exist_ok=True)
  rows: dict[str, dict] = {}
  done_by_changes: dict[tuple, str] = {}
  refs: dict[str, dict] = {}
  for name, diff, overrides in plans:
    key = tuple(sorted(diff.items()))
    if key in done_by_changes:
      # Same settings as a variant already run (e.g. the base's own value).
      rows[name] = dict(rows[done_by_changes[key]], same_as=done_by_changes[key],
                        overrides=" ".join(f"--{k}={v}" for k, v in overrides.items())
                        + f" (= {done_by_changes[key]})")
    else:
      try:
        rows[name] = run_variant(base_workdir, base, name, diff, out_dir, _FLAGS.redo)
        done_by_changes[key] = name
        if not diff and not refs:
          with open(os.path.join(out_dir, name, "verify.json")) as f:
            refs = reference_rows(json.load(f))
      except Exception as e:  # pylint: disable=broad-except
        logging.exception("Variant %s failed", name)
        rows[name] = {"error": f"{type(e).__name__}: {e}",
                      "overrides": " ".join(f"--{k}={v}" for k, v in overrides.items())}
    _write(results, {**rows, **refs}, base_workdir, base)
  _write(results, {**rows, **refs}, base_workdir, base)
  print(markdown({**rows, **refs}, _title(base_workdir)))


def _title(base_workdir: str) -> str:
  return _FLAGS.title or f"Ablation on {os.path.basename(base_workdir)}"


def _write(prefix: str, rows: dict, base_workdir: str, base: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  with open(prefix + ".json", "w") as f:
    json.dump({"base_workdir": base_workdir, "base_config": base, "variants": rows,
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, f, indent=2)
  with open(prefix + ".md", "w") as f:
    f.write(markdown(rows, _title(base_workdir)))


if __name__ == "__main__":
  app.run(main)
