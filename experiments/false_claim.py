r"""The false-claim accuser: an owner who tunes its fingerprint to one innocent model.

UAPs transfer between independent models, so an owner who may choose its UAP
or its fingerprint points after meeting a suspect can tune them to that
suspect. For one finished run, every zoo independent the encoder did not
train on is a target in turn, and the accuser (white-box on victim and
target: the worst case) crafts:

* ``joint_uap``: one L-inf UAP of the run's radius that fools the victim and
  the target together (Adam ascent of both models' clamped margins, the
  objective of SGD-UAP, projected each step), points unchanged;
* ``cherry_points``: the committed UAP, but in each of the K clusters the V
  points (from the victim's training part) on which the target answers most
  like the victim, clean and under the UAP;
* ``both``: the joint UAP and points cherry-picked under it.

Every model (victim, zoo, bank) is fingerprinted afresh on the crafted
fingerprint, and the target is judged by the run's default test against the
run's reference without itself, under the run's encoder and under the
encoder-free ``uap_follow``. The guard is the commitment
(:mod:`uap_jax.verify.commitment`): the crafted fingerprint is checked
against the run's ``commitment.json``, as the verify stage does before it
judges; a mismatch is a refusal, not a verdict. A second guard needs no
timestamp: the points and the UAPs are re-derived from the victim, the data
and the committed seed (the fingerprint and uap stages' own functions), and
a fingerprint that is not that draw is flagged.

    python experiments/false_claim.py --workdir=runs/adaptive_fashion \
        --out=experiments/results/false_claim_fashion

Writes OUT.md and OUT.json: per attack and score, targets accused without
the guard and with it, and the crafted UAP's fooling rate on the target.
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
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position

from uap_jax import api  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax import fingerprint as fp_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.attacks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.runtime import stack as stack_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.stages import verify as verify_stage  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.verify import commitment  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.verify import protocols  # pylint: disable=g-import-not-at-top,wrong-import-position
from uap_jax.zoo import removal  # pylint: disable=g-import-not-at-top,wrong-import-position

ATTACKS = ("committed", "joint_uap", "cherry_points", "both")
SCORES = ("encoder", "uap_follow")
# Images on which the accuser computes its joint UAP, and its Adam steps.
UAP_IMAGES, UAP_STEPS, UAP_BATCH = 1000, 400, 64


class Model:
  """One fingerprinted model: a stack of one, and its forward pass."""

  def __init__(self, stack: stack_lib.Stack):
    self.stack, self.logits_fn = stack, stack.logits_fn
    self.variables = jax.tree.map(lambda a: a[0], stack.variables)

  def logits(self, x: np.ndarray) -> np.ndarray:
    return stack_lib.predict(self.stack, x)[0]


def _models(ctx) -> list[Model]:
  """Every fingerprinted model, in the order of the saved fingerprints."""
  by_name = {}
  for stack in ctx.artifacts.all_stacks():
    for i, name in enumerate(stack.names):
      by_name[name] = Model(stack.select([i]))
  return [by_name[m["name"]] for m in ctx.artifacts.fingerprints.models]


def fingerprint_all(ctx, points: np.ndarray, uaps: np.ndarray) -> np.ndarray:
  """``(M, V, D)`` fingerprints of every model on points and UAPs."""
  art = ctx.artifacts
  x_points = ctx.data.x_train[points]
  rows = {}
  for stack in art.all_stacks():
    out = np.asarray(fp_lib.fingerprints(stack, x_points, uaps, mode=art.fingerprints.mode))
    rows.update(zip(stack.names, out))
  return np.stack([rows[m["name"]] for m in art.fingerprints.models])


def joint_uap(victim: Model, target: Model, x: np.ndarray, xi: float, key) -> np.ndarray:
  """One L-inf UAP that fools the victim and the target together.

  Args:
    victim, target: the two models.
    x: uint8 images it is computed on.
    xi: the radius (the run's --uap_xi).
    key: PRNG key of the minibatches.

  Returns:
    ``(H, W, C)`` float32, within ``xi``.
  """
  xf = stack_lib.to_float(x)
  labels = [jnp.argmax(victim.logits(x), -1), jnp.argmax(target.logits(x), -1)]
  opt = optax.adam(0.1 * xi)

  def objective(v, idx):
    total = 0.0
    for model, y in zip((victim, target), labels):
      logits = model.logits_fn(model.variables, common.perturb(xf[idx], v))
      total = total + jnp.mean(jnp.maximum(common.margin(logits, y[idx]), 0.0))
    return total

  @jax.jit
  def run(key):
    def step(s, carry):
      v, state = carry
      idx = jax.random.randint(jax.random.fold_in(key, s), (UAP_BATCH,), 0, xf.shape[0])
      updates, state = opt.update(jax.grad(objective)(v, idx), state, v)
      return common.project(optax.apply_updates(v, updates), jnp.inf, xi), state
    v0 = jnp.zeros(xf.shape[1:], jnp.float32)
    return jax.lax.fori_loop(0, UAP_STEPS, step, (v0, opt.init(v0)))[0]
  return np.asarray(run(key))


def fooling_rate(model: Model, x: np.ndarray, v: np.ndarray) -> float:
  clean = model.logits(x).argmax(-1)
  shifted = removal.perturbed_images(x, v[None])[0]
  return float(np.mean(model.logits(shifted).argmax(-1) != clean))


def cherry_points(ctx, victim: Model, target: Model, uap: np.ndarray,
                  points: np.ndarray) -> np.ndarray:
  """``(K, V)`` points on which the target answers most like the victim.

  Candidates are the victim's training part; each joins the cluster whose
  committed points' mean victim logits it is nearest, and each cluster takes
  the V candidates whose clean and UAP answers agree best (top-1 twice, then
  the L1 distance of the probabilities).
  """
  x = ctx.data.x_train
  cand = np.asarray(ctx.parts["victim"])
  k, v = points.shape
  centres = np.stack([victim.logits(x[points[c]]).mean(0) for c in range(k)])
  shifted = removal.perturbed_images(x[cand], uap[None])[0]
  lv, lt = victim.logits(x[cand]), target.logits(x[cand])
  sv, st = victim.logits(shifted), target.logits(shifted)
  prob = lambda a: np.asarray(jax.nn.softmax(a))
  agree = ((lv.argmax(-1) == lt.argmax(-1)).astype(float)
           + (sv.argmax(-1) == st.argmax(-1)) - 0.5 * (
               np.abs(prob(lv) - prob(lt)).sum(-1) + np.abs(prob(sv) - prob(st)).sum(-1)) / 2)
  cluster = np.argmin(((lv[:, None] - centres[None]) ** 2).sum(-1), 1)
  out = np.array(points)
  for c in range(k):
    members = np.flatnonzero(cluster == c)
    if len(members) >= v:
      out[c] = cand[members[np.argsort(-agree[members], kind="stable")[:v]]]
  return out


def judge_target(ctx, fps: np.ndarray, target: int, calib: list[int], score: str) -> dict:
  art = ctx.artifacts
  settings = dataclasses.replace(verify_stage._settings(ctx), score=score)  # pylint: disable=protected-access
  (verdict,) = protocols.judge(art.encoder(), fps[[target]], fps, art.fingerprints.models,
                               art.fingerprints.victim_index, [i for i in calib if i != target],
                               settings, num_uaps=len(art.uaps),
                               num_classes=ctx.data.num_classes,
                               point_labels=verify_stage.point_labels(ctx),
                               label_judge=art.label_judge())
  return verdict


def guard(ctx, points: np.ndarray, uaps: np.ndarray, fps: np.ndarray) -> str:
  """``refused`` when the crafted fingerprint is not the committed one."""
  record = ctx.artifacts.commitment()
  try:
    commitment.check(record, points, uaps, fps[ctx.artifacts.fingerprints.victim_index],
                     ctx.cfg.seed)
  except ValueError:
    return "refused"
  return "judged"


def rederive(ctx) -> tuple[np.ndarray, np.ndarray]:
  """The points and UAPs the run's seed draws from the victim and the data:
  what a judge holding those can recompute without trusting any timestamp."""
  from uap_jax.stages import fingerprint as fp_stage  # pylint: disable=g-import-not-at-top
  from uap_jax.stages import uap as uap_stage  # pylint: disable=g-import-not-at-top
  return fp_stage.choose_points(ctx), np.asarray(uap_stage.victim_uaps(ctx)[0])


def rederivation(points: np.ndarray, uaps: np.ndarray, drawn) -> str:
  """``matches`` when a fingerprint's points and UAPs are the seed's draw."""
  points_r, uaps_r = drawn
  same = (np.array_equal(points, points_r) and uaps.shape == uaps_r.shape
          and np.allclose(uaps, uaps_r, atol=1e-6))
  return "matches" if same else "differs"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a finished run")
  parser.add_argument("--max_targets", type=int, default=20)
  parser.add_argument("--out", default="", help="write OUT.md and OUT.json")
  args = parser.parse_args(argv)
  ctx = api.Verifier.from_workdir(args.workdir).ctx
  art = ctx.artifacts
  fp, split = art.fingerprints, art.split()
  if art.commitment() is None:
    raise SystemExit(f"{args.workdir} has no commitment.json: rerun its fingerprint stage.")
  models = _models(ctx)
  victim = models[fp.victim_index]
  points, uaps = np.asarray(fp.points), np.asarray(art.uaps)
  committed = fingerprint_all(ctx, points, uaps)
  # The harness reproduces the saved fingerprints before it crafts any.
  np.testing.assert_allclose(committed, np.asarray(fp.fps), atol=1e-4)
  drawn = rederive(ctx)
  trained = set(split["train"])
  targets = [i for i, m in enumerate(fp.models) if m["family"] == "independent"
             and m.get("kind") != "reference" and i not in trained][:args.max_targets]
  calib = list(split["calib"])
  x_uap = ctx.data.x_train[np.asarray(ctx.parts["victim"])[:UAP_IMAGES]]
  records = []
  for n, t in enumerate(targets):
    target = models[t]
    key = jax.random.fold_in(jax.random.key(ctx.cfg.seed), n)
    v = joint_uap(victim, target, x_uap, float(ctx.cfg.uap_xi), key)[None]
    crafted = {"committed": (points, uaps),
               "joint_uap": (points, v),
               "cherry_points": (cherry_points(ctx, victim, target, uaps[0], points), uaps),
               "both": (cherry_points(ctx, victim, target, v[0], points), v)}
    for attack, (pts, us) in crafted.items():
      fps = committed if attack == "committed" else fingerprint_all(ctx, pts, us)
      row = {"target": fp.models[t]["name"], "attack": attack,
             "fooling_target": fooling_rate(target, x_uap, us[0]),
             "fooling_victim": fooling_rate(victim, x_uap, us[0]),
             "guard": guard(ctx, pts, us, fps),
             "rederivation": rederivation(pts, us, drawn)}
      for score in SCORES:
        try:
          verdict = judge_target(ctx, fps, t, calib, score)
        except ValueError as e:
          # E.g. a crafted UAP that moves none of the victim's answers on the
          # crafted points leaves uap_follow nothing to count: no accusation.
          row[score] = {"verdict": "not_judged", "p_value": None, "reason": str(e)}
          continue
        row[score] = {"verdict": verdict["verdict"], "p_value": verdict["p_value"]}
      records.append(row)
      print(json.dumps(row), flush=True)
  text = table(records, os.path.basename(os.path.normpath(args.workdir)))
  print(text)
  if args.out:
    with open(args.out + ".md", "w") as f:
      f.write(text)
    with open(args.out + ".json", "w") as f:
      json.dump(records, f, indent=1)


def table(records: list[dict], run: str) -> str:
  targets = len({r["target"] for r in records})
  lines = [f"# The false-claim accuser: {run}", "",
           f"{targets} independent targets (zoo independents the encoder never trained on); "
           "per crafted fingerprint, the targets accused (pirated verdicts) when judged "
           "without the guard, and with it (the commitment check refuses a fingerprint "
           "that is not the committed one); the last column: fingerprints whose points "
           "or UAPs are not what the run's seed draws from the victim and the data "
           "(re-derived, a guard that needs no timestamp).", "",
           "| attack | UAP fooling rate on target (mean) | on victim | score | accused, no guard "
           "| median p | accused with guard | refused by guard | not the seed's draw |",
           "|---" * 9 + "|"]
  for attack in ATTACKS:
    rows = [r for r in records if r["attack"] == attack]
    if not rows:
      continue
    for score in SCORES:
      accused = sum(r[score]["verdict"] == "pirated" for r in rows)
      refused = sum(r["guard"] == "refused" for r in rows)
      guarded = sum(r[score]["verdict"] == "pirated" and r["guard"] == "judged" for r in rows)
      p_values = [r[score]["p_value"] for r in rows if r[score]["p_value"] is not None]
      median = f"{np.median(p_values):.2g}" if p_values else "– (not judged)"
      lines.append(
          f"| {attack} | {np.mean([r['fooling_target'] for r in rows]):.3f} | "
          f"{np.mean([r['fooling_victim'] for r in rows]):.3f} | {score} | "
          f"{accused}/{len(rows)} | {median} | "
          f"{guarded}/{len(rows)} | {refused}/{len(rows)} | "
          f"{sum(r.get('rederivation') == 'differs' for r in rows)}/{len(rows)} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
