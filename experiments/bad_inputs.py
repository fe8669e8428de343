"""Tries bad inputs as a new user would, and tabulates what the user sees.

    python experiments/bad_inputs.py --out experiments/results/bad_inputs.md

Each case runs the command line in a subprocess, from a fresh temporary
directory, with ``experiments/quickstart.flags`` made tiny (:data:`TINY`)
plus the case's flags: bad flags in a fresh work directory, bad data-set
files and bad ``--suspect`` files the script makes itself. Cases marked
``on_run`` run ``--stages=verify`` in a copy of one tiny finished run (built
once, about a minute on 2 cores; ``--run DIR`` reuses one).

Per case: the exit code, wall seconds, whether a traceback was printed,
what was written (files or folders added, changed by content or removed
under the case's folder), how
many lines look like error messages, and the last line the user sees. A
case is *refused well* when it exits non-zero within ``--fast`` seconds
(15) with one message, no traceback and nothing written. The script
reports whatever happens; a case still running after ``--timeout``
seconds is stopped and counted as accepted.

Writes the Markdown table to ``--out`` and the records to the same name with
``.json``; prints a summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "quickstart.flags")

# The quickstart made tiny (8x8 digits, MLPs), as in tests/test_pipeline.py.
TINY = tuple([line.strip() for line in open(os.path.join(REPO, "experiments", "tiny.flags"))
       if line.startswith("--")])

# A line that tells the user something went wrong.
_MESSAGE = re.compile(r"^(error:|FATAL|E\d{4} |Traceback|[A-Za-z_.]*(Error|Exception): )")


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad input.

  Attributes:
    name: a short unique name.
    flags: flags after the tiny quickstart's; ``{files}`` is the folder of
      the files the script made, ``{wd}`` the case's work directory.
    on_run: runs ``--stages=verify`` (unless ``flags`` set stages) in a copy
      of the finished tiny run.
    control: a good input, to show the bad ones fail for their fault.
  """
  name: str
  flags: tuple[str, ...]
  on_run: bool = False
  control: bool = False

  def shown(self) -> str:
    """The case's flags as the table shows them (short paths)."""
    return " ".join(self.flags).replace("{files}/", "").replace("{wd}", "WD")


def _flag(name, *flags):
  return Case(name, tuple(flags))


def _suspect(name, file, *flags):
  return Case(name, (f"--suspect={{files}}/{file}", *flags), on_run=True)


CASES: tuple[Case, ...] = (
    # Data sets.
    _flag("dataset_unknown", "--dataset=nope"),
    _flag("dataset_npz_missing", "--dataset=npz:{files}/no_such.npz"),
    _flag("dataset_npz_not_zip", "--dataset=npz:{files}/not_a_zip.npz"),
    _flag("dataset_npz_empty_file", "--dataset=npz:{files}/data_empty.npz"),
    _flag("dataset_npz_is_npy", "--dataset=npz:{files}/data_single_array.npz"),
    _flag("dataset_npz_truncated", "--dataset=npz:{files}/data_truncated.npz"),
    _flag("dataset_npz_corrupted_member", "--dataset=npz:{files}/data_corrupted.npz"),
    _flag("dataset_npz_missing_keys", "--dataset=npz:{files}/data_missing_keys.npz"),
    _flag("dataset_npz_length_mismatch", "--dataset=npz:{files}/data_length_mismatch.npz"),
    _flag("dataset_npz_labels_to_1000", "--dataset=npz:{files}/data_labels_1000.npz"),
    _flag("dataset_npz_one_class", "--dataset=npz:{files}/data_one_class.npz"),
    _flag("dataset_folder_missing", "--dataset=folder:{files}/no_such_folder"),
    _flag("dataset_folder_empty", "--dataset=folder:{files}/empty_folder"),
    _flag("dataset_idx_missing", "--dataset=idx:{files}/no_such_idx"),
    _flag("dataset_tfds_unknown", "--dataset=tfds:no_such_dataset", "--data_dir={files}"),
    # Models and the zoo.
    _flag("victim_arch_unknown", "--victim_arch=resnet99"),
    _flag("zoo_arch_unknown", "--zoo_archs=resnet99"),
    _flag("zoo_kind_unknown", "--zoo_kinds=steal"),
    _flag("zoo_count_negative", "--zoo_count=-1"),
    _flag("zoo_count_0_no_counts", "--zoo_count=0", "--zoo_counts="),
    _flag("zoo_counts_no_number", "--zoo_counts=prune"),
    _flag("zoo_counts_negative", "--zoo_counts=prune:-1"),
    _flag("zoo_counts_unknown_kind", "--zoo_counts=steal:2"),
    _flag("prune_ratio_1.5", "--prune_ratios=1.5"),
    _flag("finetune_lrs_text", "--finetune_lrs=fast"),
    _flag("optimizer_unknown", "--optimizer=rmsprop"),
    _flag("epochs_0", "--epochs=0"),
    _flag("victim_frac_0.9", "--victim_frac=0.9"),
    _flag("augment_maybe", "--augment=maybe"),
    # UAP.
    _flag("uap_xi_inf", "--uap_xi=inf"),
    _flag("uap_xi_nan", "--uap_xi=nan"),
    _flag("uap_xi_negative", "--uap_xi=-1"),
    _flag("uap_p_3", "--uap_p=3"),
    _flag("uap_delta_1.5", "--uap_delta=1.5"),
    _flag("num_uaps_negative", "--num_uaps=-1"),
    # Fingerprints, encoder, verification.
    _flag("fp_k_100", "--fp_k=100", "--fp_v=40"),
    _flag("fp_k_0", "--fp_k=0"),
    _flag("fp_mode_unknown", "--fp_mode=softmax"),
    _flag("n_views_over_fp_v", "--n_views=10", "--fp_v=6"),
    _flag("split_train_0.9", "--split_train=0.9"),
    _flag("alpha_2", "--alpha=2"),
    _flag("test_unknown", "--test=bogus"),
    # Running.
    _flag("stages_empty", "--stages="),
    _flag("stages_bogus", "--stages=bogus"),
    _flag("stage_without_victim", "--stages=uap"),
    _flag("workdir_empty", "--workdir="),
    _flag("workdir_is_a_file", "--workdir={files}/not_a_zip.npz"),
    _flag("strategy_unknown", "--strategy=bogus"),
    _flag("mesh_bad", "--mesh=bad", "--strategy=shard"),
    _flag("distributed_maybe", "--distributed=maybe"),
    _flag("flag_unknown", "--nonsense=1"),
    _flag("flag_int_not_a_number", "--fp_k=many"),
    _flag("flagfile_missing", "--flagfile={files}/no_such.flags"),
    _flag("positional_argument", "victim"),
    _flag("suspect_before_any_run", "--stages=verify", "--suspect={files}/answers_ok.npz"),
    Case("workdir_of_another_run", ("--dataset=mnist5k", "--stages=victim"), on_run=True),
    # Suspects, on the finished tiny run.
    _suspect("suspect_npz_missing", "no_such_answers.npz"),
    _suspect("suspect_checkpoint_missing", "no_such_checkpoint"),
    _suspect("suspect_dir_without_checkpoint", "empty_folder"),
    _suspect("suspect_empty_file", "answers_empty.npz"),
    _suspect("suspect_not_zip", "not_a_zip.npz"),
    _suspect("suspect_truncated", "answers_truncated.npz"),
    _suspect("suspect_corrupted_member", "answers_corrupted.npz"),
    _suspect("suspect_pickled_object", "answers_pickled.npz"),
    _suspect("suspect_no_outputs_key", "answers_no_outputs.npz"),
    _suspect("suspect_wrong_rows", "answers_wrong_rows.npz"),
    _suspect("suspect_wrong_classes", "answers_wrong_classes.npz"),
    _suspect("suspect_probs_sum_0.5", "answers_sum_half.npz"),
    _suspect("suspect_probs_sum_2", "answers_sum_two.npz"),
    _suspect("suspect_probs_negative", "answers_negative.npz"),
    _suspect("suspect_nan", "answers_nan.npz"),
    _suspect("suspect_kind_unknown", "answers_kind_softmax.npz"),
    _suspect("suspect_labels_under_fp_mode_probs", "answers_labels.npz"),
    _suspect("suspect_labels_out_of_range", "answers_labels_out_of_range.npz"),
    _suspect("suspect_float_labels", "answers_float_labels.npz"),
    _suspect("suspect_query_id_duplicates", "answers_query_id_duplicates.npz"),
    # Good inputs: the bad ones above fail for their own fault.
    Case("control_good_answers", ("--suspect={files}/answers_ok.npz",), on_run=True,
         control=True),
    Case("control_good_flags", ("--stages=victim", "--epochs=0.2"), control=True),
)


def command(case: Case, workdir: str, files: str) -> list[str]:
  """The command line of one case.

  Args:
    case: the case.
    workdir: its work directory (fresh, or a copy of the finished run).
    files: the folder of the files the script made.

  Returns:
    ``[python, -m, uap_jax.main, flags...]``; the case's flags come last, so
    they override the tiny quickstart's (absl keeps a flag's last value).
  """
  base = [f"--flagfile={QUICKSTART}", f"--workdir={workdir}", *TINY]
  if case.on_run and not any(f.startswith("--stages") for f in case.flags):
    base.append("--stages=verify")
  flags = [f.format(files=files, wd=workdir) for f in case.flags]
  return [sys.executable, "-m", "uap_jax.main", *base, *flags]


# --------------------------------------------------------------------------
# The files the cases use.


def make_data_files(files: str) -> None:
  """Bad data-set files, folders and a non-zip file (no run needed)."""
  os.makedirs(os.path.join(files, "empty_folder"), exist_ok=True)
  with open(os.path.join(files, "not_a_zip.npz"), "w") as f:
    f.write("x_train,y_train\n1,2\n")
  rng = np.random.default_rng(0)
  def images(n):
    return rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
  np.savez(os.path.join(files, "data_missing_keys.npz"), x_train=images(10))
  np.savez(os.path.join(files, "data_length_mismatch.npz"), x_train=images(300),
           y_train=rng.integers(0, 10, 250), x_test=images(100), y_test=rng.integers(0, 10, 100))
  # Labels up to 1000 without class names: a 1,001-class task.
  y = rng.integers(0, 10, 300)
  y[0] = 1000
  np.savez(os.path.join(files, "data_labels_1000.npz"), x_train=images(300), y_train=y,
           x_test=images(100), y_test=rng.integers(0, 10, 100))
  np.savez(os.path.join(files, "data_one_class.npz"), x_train=images(300),
           y_train=np.zeros(300, np.int64), x_test=images(100), y_test=np.zeros(100, np.int64))
  # Unreadable data-set files: empty, a lone .npy under an .npz name, a good
  # data set cut short, and one with a flipped byte in a member (bad CRC-32).
  open(os.path.join(files, "data_empty.npz"), "wb").close()
  with open(os.path.join(files, "data_single_array.npz"), "wb") as f:
    np.save(f, images(10))
  good_path = os.path.join(files, "data_good.npz")
  np.savez(good_path, x_train=images(300), y_train=rng.integers(0, 10, 300),
           x_test=images(100), y_test=rng.integers(0, 10, 100))
  with open(good_path, "rb") as f:
    good = f.read()
  os.remove(good_path)
  with open(os.path.join(files, "data_truncated.npz"), "wb") as f:
    f.write(good[:len(good) // 2])
  corrupted = bytearray(good)
  corrupted[len(good) // 4] ^= 0xFF  # inside x_train's (uncompressed) data
  with open(os.path.join(files, "data_corrupted.npz"), "wb") as f:
    f.write(bytes(corrupted))


def good_answers(run: str) -> np.ndarray:
  """The victim's own probabilities on the finished run's exported queries."""
  # Imported here: the case table needs no JAX.
  from uap_jax.runtime import checkpoint  # pylint: disable=g-import-not-at-top
  from uap_jax.runtime import stack as stack_lib  # pylint: disable=g-import-not-at-top
  stack = checkpoint.load_stack(os.path.join(run, "checkpoints", "victim"))
  with np.load(os.path.join(run, "queries.npz")) as q:
    return np.asarray(stack_lib.predict(stack, q["queries"], output="probs")[0], np.float32)


def make_answer_files(files: str, probs: np.ndarray) -> None:
  """Good answers, and bad answer files made from them."""
  def save(name, **arrays):
    np.savez(os.path.join(files, name), **arrays)
  q, c = probs.shape
  labels = probs.argmax(-1)
  save("answers_ok.npz", outputs=probs)
  save("answers_no_outputs.npz", answers=probs)
  save("answers_wrong_rows.npz", outputs=probs[:-7])
  save("answers_wrong_classes.npz", outputs=probs[:, :c // 2])
  save("answers_sum_half.npz", outputs=probs * 0.5)
  save("answers_sum_two.npz", outputs=probs * 2)
  # Rows that sum to 1 but hold negative "probabilities".
  shifted = probs.copy()
  shifted[:, 0] -= 0.1
  shifted[:, 1] += 0.1
  save("answers_negative.npz", outputs=shifted, kind="probs")
  save("answers_nan.npz", outputs=np.where(np.arange(q)[:, None] == 3, np.nan, probs))
  save("answers_inf.npz", outputs=np.where(np.arange(q)[:, None] == 3, np.inf, probs))
  save("answers_kind_softmax.npz", outputs=probs, kind="softmax")
  save("answers_labels.npz", outputs=labels)
  save("answers_labels_out_of_range.npz", outputs=np.full(q, c))
  save("answers_float_labels.npz", outputs=labels.astype(np.float32))
  save("answers_query_id_duplicates.npz", outputs=probs, query_id=np.zeros(q, np.int64))
  save("answers_pickled.npz", outputs=np.array([{"p": 1}] * 3, dtype=object))
  open(os.path.join(files, "answers_empty.npz"), "wb").close()
  with open(os.path.join(files, "answers_ok.npz"), "rb") as f:
    good = f.read()
  with open(os.path.join(files, "answers_truncated.npz"), "wb") as f:
    f.write(good[:len(good) // 2])
  # A flipped byte inside the (uncompressed) outputs member: a bad CRC-32.
  corrupted = bytearray(good)
  corrupted[len(good) // 2] ^= 0xFF
  with open(os.path.join(files, "answers_corrupted.npz"), "wb") as f:
    f.write(bytes(corrupted))


def build_run(run: str, timeout: float) -> str:
  """Runs the tiny quickstart once in ``run``; returns '' or why it failed."""
  argv = [sys.executable, "-m", "uap_jax.main", f"--flagfile={QUICKSTART}",
          f"--workdir={run}", *TINY]
  try:
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return f"the tiny run took over {timeout:.0f} s"
  if proc.returncode != 0:
    return "the tiny run failed: " + _last_line(proc.stderr)
  return ""


# --------------------------------------------------------------------------
# Running a case.


def _snapshot(root: str) -> dict[str, str]:
  """relative path -> content hash of every file (folders: '/') under ``root``.

  By content: a file rewritten with the same bytes is not a write the user
  would notice; a new empty folder is.
  """
  seen = {}
  for folder, dirs, names in os.walk(root):
    for name in dirs:
      seen[os.path.relpath(os.path.join(folder, name), root) + "/"] = "/"
    for name in names:
      path = os.path.join(folder, name)
      try:
        with open(path, "rb") as f:
          seen[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
      except OSError:
        seen[os.path.relpath(path, root)] = "unreadable"
  return seen


def _last_line(text: str) -> str:
  lines = [line for line in text.splitlines() if line.strip()]
  return lines[-1].strip() if lines else ""


def _text(output) -> str:
  if output is None:
    return ""
  return output.decode(errors="replace") if isinstance(output, bytes) else output


def run_case(case: Case, files: str, run: str, scratch: str, timeout: float) -> dict:
  """Runs one case from a fresh folder; returns what the user saw.

  Args:
    case: the case.
    files: the folder of the made files.
    run: the finished tiny run (copied for ``on_run`` cases).
    scratch: where the case's folder is made.
    timeout: seconds before the case is stopped.

  Returns:
    A record: name, flags, exit code (None: stopped), seconds, traceback,
    written (paths added or changed), message lines, last line.
  """
  cwd = tempfile.mkdtemp(prefix=case.name + ".", dir=scratch)
  workdir = os.path.join(cwd, "wd")
  if case.on_run:
    shutil.copytree(run, workdir, symlinks=True)
  before = _snapshot(cwd)
  start = time.time()
  try:
    proc = subprocess.run(command(case, workdir, files), cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout)
    code, output = proc.returncode, _text(proc.stdout)
  except subprocess.TimeoutExpired as e:
    code, output = None, _text(e.output)
  seconds = time.time() - start
  after = _snapshot(cwd)
  written = sorted(p for p in after if before.get(p) != after[p])
  written += sorted(f"-{p}" for p in before if p not in after)
  record = {
      "name": case.name, "flags": case.shown(), "on_run": case.on_run,
      "control": case.control, "exit": code, "seconds": round(seconds, 1),
      "traceback": "Traceback (most recent call last)" in output,
      "written": written,
      "messages": sum(bool(_MESSAGE.match(line)) for line in output.splitlines()),
      "last_line": _last_line(output),
  }
  record["problems"] = problems(record, fast=15.0, timeout=timeout)
  shutil.rmtree(cwd, ignore_errors=True)
  return record


def problems(record: dict, fast: float, timeout: float) -> list[str]:
  """What keeps a bad input's refusal from being good; [] when it is."""
  if record["exit"] is None:
    return [f"still running after {timeout:.0f} s (accepted)"]
  found = []
  if record["exit"] == 0:
    found.append("accepted (exit 0)")
  if record["traceback"]:
    found.append("traceback")
  if record["exit"] != 0 and record["messages"] != 1:
    found.append(f"{record['messages']} message lines")
  if record["seconds"] >= fast:
    found.append(f"{record['seconds']:.0f} s")
  if record["written"]:
    found.append(f"wrote {len(record['written'])} file(s)")
  return found


# --------------------------------------------------------------------------
# The table.


def _cell(text: str, limit: int = 220) -> str:
  text = text if len(text) <= limit else text[:limit - 3] + "..."
  return text.replace("|", "\\|").replace("\n", " ")


def markdown(records: list[dict], header: str) -> str:
  """The Markdown table of every case, bad inputs first, then the controls."""
  lines = [header, "",
           "| case | input | exit | s | traceback | wrote | problems | last line |",
           "|---|---|---|---|---|---|---|---|"]
  for r in sorted(records, key=lambda r: r["control"]):
    wrote = (f"{len(r['written'])}: {', '.join(r['written'][:2])}" if r["written"] else "no")
    problem = ("(control)" if r["control"] else "; ".join(r["problems"]) or "ok")
    lines.append(
        f"| {r['name']} | `{_cell(r['flags'], 80)}` | "
        f"{'stopped' if r['exit'] is None else r['exit']} | {r['seconds']:.1f} | "
        f"{'yes' if r['traceback'] else 'no'} | {_cell(wrote, 80)} | {_cell(problem)} | "
        f"{_cell(r['last_line'])} |")
  return "\n".join(lines) + "\n"


def summary(records: list[dict]) -> str:
  bad = [r for r in records if not r["control"]]
  good = [r for r in bad if not r["problems"]]
  lines = [f"{len(good)} of {len(bad)} bad inputs refused in under 15 s with one message, "
           "no traceback and nothing written."]
  for r in bad:
    if r["problems"]:
      lines.append(f"  {r['name']}: {'; '.join(r['problems'])} -- {r['last_line'][:160]}")
  for r in records:
    if r["control"]:
      lines.append(f"  control {r['name']}: exit {r['exit']} in {r['seconds']:.1f} s")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.path.join(REPO, "experiments", "results",
                                                    "bad_inputs.md"))
  parser.add_argument("--run", default="", help="a finished tiny run to reuse")
  parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
  parser.add_argument("-k", default="", help="only cases whose name holds this")
  args = parser.parse_args(argv)
  scratch = tempfile.mkdtemp(prefix="bad_inputs.")
  files = os.path.join(scratch, "files")
  os.makedirs(files)
  make_data_files(files)
  cases = [c for c in CASES if args.k in c.name]
  run, why = args.run, ""
  if any(c.on_run or "answers" in " ".join(c.flags) for c in cases):
    if not run:
      run = os.path.join(scratch, "finished")
      start = time.time()
      why = build_run(run, timeout=600)
      print(f"tiny run: {time.time() - start:.0f} s {why}", flush=True)
    if not why:
      make_answer_files(files, good_answers(run))
  records = []
  for case in cases:
    if why and (case.on_run or "answers" in " ".join(case.flags)):
      print(f"{case.name}: skipped ({why})", flush=True)
      continue
    records.append(run_case(case, files, run, scratch, args.timeout))
    r = records[-1]
    print(f"{r['name']}: exit {r['exit']}, {r['seconds']:.1f} s, "
          f"{'; '.join(r['problems']) or 'ok'} -- {r['last_line'][:120]}", flush=True)
  header = (f"# Bad inputs and what the user sees\n\n"
            f"Made by `experiments/bad_inputs.py` ({time.strftime('%Y-%m-%d')}, "
            f"{os.cpu_count()} CPUs): each case is the tiny quickstart plus its flags, "
            "from a fresh folder; suspect cases run `--stages=verify` in a copy of "
            "one finished tiny run. *wrote*: files or folders added, changed (by content) "
            "or removed under the case's folder. "
            f"*problems*: what keeps it from a refusal in under 15 s with one message, "
            "no traceback and nothing written.\n\n" + summary(records).split("\n")[0])
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(markdown(records, header))
  with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
    json.dump(records, f, indent=2)
  print(summary(records))
  shutil.rmtree(scratch, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
