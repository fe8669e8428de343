"""report.md: the Markdown tables of a run's results dict."""

from __future__ import annotations

from uap_jax.report.results import SUSPECT_FIELDS


def _fmt(v, digits=3):
  if v is None:
    return "–"
  if isinstance(v, float):
    return f"{v:.{digits}g}" if (abs(v) < 1e-3 and v != 0) else f"{v:.{digits}f}"
  return str(v)


def _table(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
  return "\n".join(lines)


def auc_columns(res: dict) -> dict[str, dict]:
  """AUC per kind of every score: the encoder (the paper's recipe) and the references.

  Args:
    res: a results dict (:func:`uap_jax.report.results.build`).

  Returns:
    ``{score: {kind: AUC or None}}``, the encoder first.
  """
  return {"encoder": res["auc"], **{name: r["auc"] for name, r in res["references"].items()}}


def _auc_table(res: dict) -> str:
  cols = auc_columns(res)
  kinds = [k for k in res["auc"] if k != "all"] + ["all"]
  return _table(["kind", *cols], [[k, *[c.get(k) for c in cols.values()]] for k in kinds])


def markdown(res: dict) -> str:
  """report.md: the run's figures as Markdown.

  Args:
    res: a results dict (:func:`uap_jax.report.results.build`).

  Returns:
    The Markdown text: victim and UAP, detection on the random split,
    leave-kind-out, references, other tests, suspects, seconds per stage.
  """
  v, u = res["victim"], res["uap"]
  victim_line = (
      f"Victim: {v['spec']} (given), test accuracy {v['test_accuracy']:.4f}, "
      f"{v['parameters']} parameters." if v.get("given") else
      f"Victim: {v['arch']} (width {v['width']}), test accuracy {v['test_accuracy']:.4f}, "
      f"{v['parameters']} parameters, trained in {v['train_seconds']:.0f} s.")
  out = [f"# uap-jax report: {res['dataset']}", "", victim_line, "",
         (f"UAP: {u['algorithm']}, p = {u['p']}, xi = {u['xi']}; fooling rate on the victim "
          f"{_fmt(u['fooling_rate_train'])} (train) / {_fmt(u['fooling_rate_test'])} (test)."
          if u.get("num_uaps", 1) else "No UAP (--num_uaps=0): fingerprints of clean outputs only."), "",
         f"Test: {res['test']} on the {res.get('score') or 'encoder'} score, alpha = "
         f"{res['alpha']}, {res['num_views']} views per suspect. "
         f"Independents accused: {res['accused_independents']} of {res['num_independents']}; "
         f"piracy detected: {res['detected_piracy']} of {res['num_piracy']}.", "",
         *_power(res),
         *_population(res),
         "## Detection (random split of models)", "",
         _table(["kind", "AUC", "AUC against every untrained independent"],
                [[k, a, (res.get("auc_vs_reference") or {}).get(k)]
                 for k, a in res["auc"].items()]), "",
         "(The second AUC ranks the same pirates against the evaluated "
         "independents and every reference model, which no encoder scoring them "
         "trained on.)", "",
         f"TPR at 1 % FPR: {_fmt(res['tpr_at_1pct_fpr'])}; at 5 % FPR: "
         f"{_fmt(res['tpr_at_5pct_fpr'])}.", "",
         "## Leave-kind-out (encoder and calibration never saw the kind)", "",
         _table(["held-out kind", "family", "AUC", "TPR@1%FPR", "pirated", "inconclusive",
                 "not pirated"],
                [[k, f["family"], f["auc_held_out"], f["tpr_at_1pct_fpr"],
                  f["held_out_verdicts"]["pirated"], f["held_out_verdicts"]["inconclusive"],
                  f["held_out_verdicts"]["not_pirated"]]
                 for k, f in res["leave_kind_out"].items() if "error" not in f]), "",
         *_label_judge(res),
         "## References on the same suspects (no encoder)", "",
         _table(["score", "AUC all", "TPR@1%FPR", "independents accused"],
                [[name, r["auc"].get("all"), r["tpr_at_1pct_fpr"],
                  f"{r['accused_independents']}/{r['num_independents']}"]
                 for name, r in res["references"].items()]), "",
         "AUC per piracy kind, the same suspects and calibration models for every score "
         "(sac_m: one score per model, accused by a model-level prediction test at alpha):", "",
         _auc_table(res), "",
         "## Other tests on the same similarities", "",
         _table(["test", "AUC all", "independents accused", "piracy detected"],
                [[name, r["auc"].get("all"), f"{r['accused_independents']}/{r['num_independents']}",
                  f"{r['detected_piracy']}/{r['num_piracy']}"] if "error" not in r
                 else [name, "–", r["error"], "–"]
                 for name, r in res["other_tests"].items()]), "",
         "## Suspects", "",
         _table(list(SUSPECT_FIELDS), [[s[k] for k in SUSPECT_FIELDS] for s in res["suspects"]]),
         "", "## Seconds per stage", "",
         _table(["stage", "seconds"], [[k, s] for k, s in res["seconds"].items()]), ""]
  return "\n".join(out)


def _power(res: dict) -> list[str]:
  """The victim judged as a suspect of itself: the most this run can accuse."""
  me = res.get("victim_self")
  if not me or me.get("p_value") is None:
    return []
  line = (f"The victim judged as a suspect against the same reference: p = "
          f"{me['p_value']:.2g} ({me['verdict']}).")
  if me["p_value"] >= res["alpha"]:
    line += (f" Not even the victim reaches alpha = {res['alpha']}: the reference "
             "models' scores spread so wide that a suspect is accused only if it "
             "scores closer to the victim than the victim itself. " + POWER_FIX)
  out = [line, ""]
  if me.get("outside_reference") == "accuracy":
    out += [WEAK_VICTIM.format(accuracy=me["point_accuracy"]), ""]
  return out


def _label_judge(res: dict) -> list[str]:
  """The same suspects judged on their top-1 labels alone."""
  lab = res.get("labels")
  if not lab:
    return []
  fa = lab["false_accusations"]
  return [
      "## Judged on top-1 labels (the label judge)", "",
      "Answers that carry only the top class (labels, a top-1 probability; and, "
      "for an encoder of the answers as they are, a softmax sharpened or softened "
      "beyond every reference model's) are judged by an encoder trained on top-1 "
      "labels; the random split's suspects, judged so:", "",
      _table(["AUC all", "piracy detected", "independents accused",
              "held-out independents accused", "victim itself, p"],
             [[lab["auc"].get("all"), f"{lab['detected_piracy']}/{lab['num_piracy']}",
               f"{lab['accused_independents']}/{lab['num_independents']}",
               f"{fa['accused']}/{fa['held_out']}", lab["victim_self_p_value"]]]), ""]


# Why every faithful copy of a weak victim reads inconclusive, and the fix.
WEAK_VICTIM = ("The victim is less accurate on the fingerprint points ({accuracy:.3f}) "
               "than every fit reference model, so its faithful copies are too and read "
               "inconclusive by the coverage rule, however close their scores: "
               "retrain the victim (more --epochs, another --seed) or judge a better one.")


# What widens a run's reach when the victim itself cannot be accused.
POWER_FIX = ("More zoo models train a sharper encoder (--zoo_count, --zoo_counts); "
             "a bank of three or more architectures (--reference_archs) trains it too "
             "(--enc_crossfit=auto); an encoder the bank does not train reads answers "
             "re-tempered to the victim's confidence (--enc_confidence=auto or victim); "
             "more reference models narrow the test's margin "
             "(--reference_per_recipe); or judge at a larger --alpha, and say so.")


def _population(res: dict) -> list[str]:
  """The reference population and every held-out independent's fate."""
  ref, fa = res.get("reference"), res.get("false_accusations")
  if not ref or not fa:
    return []
  archs = ", ".join(f"{a} x{n}" for a, n in ref["archs"].items())
  recipes = ", ".join(f"{r} x{n}" for r, n in ref["recipes"].items()) or "the zoo's"
  left = ref["left_out_unfit"]
  upper = fa["upper_95"]
  return [
      "## Who a suspect is compared with", "",
      f"{ref['models']} fit reference models: architectures {archs}; recipes {recipes}; "
      f"point accuracy {ref['point_accuracy'][0]:.3f}-{ref['point_accuracy'][1]:.3f}"
      + (f"; left out as unfit (below {ref['accuracy_floor']:.3f}): {', '.join(left)}"
         if left else "") + ". A suspect less accurate than all of them reads "
      "inconclusive.", "",
      "## Held-out independents (false accusations)", "",
      _table(["protocol", "held out", "accused"],
             [[name, v["held_out"], v["accused"]] for name, v in fa["sources"].items()]
             + [["all", fa["held_out"], fa["accused"]]]), "",
      f"{fa['accused']} of {fa['held_out']} held-out independents accused; 95 % upper "
      f"bound on the accusation rate (Clopper-Pearson): "
      f"{_fmt(upper) if upper is not None else '–'}.", ""]
