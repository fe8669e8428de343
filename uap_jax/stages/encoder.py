"""Stage `encoder`: split the zoo, train the contrastive encoder(s).

The encoders learn from the zoo's training part and, cross-fitted, from the
reference bank (:mod:`uap_jax.verify.crossfit`). A run of probabilities or
logits also trains the *label judge*: an encoder on the same models'
fingerprints reduced to top-1 labels (never cross-fitted), which judges
answers that carry only the top class (labels, a top-1 probability, a
sharpened softmax).
"""

from __future__ import annotations

import numpy as np
from absl import logging

from uap_jax.fingerprint import confidence
from uap_jax.fingerprint import layout
from uap_jax.runtime.context import RunContext
from uap_jax.verify import crossfit
from uap_jax.verify import encoder as encoder_lib
from uap_jax.verify import splits


def run(ctx: RunContext) -> dict:
  cfg = ctx.cfg
  fp = ctx.artifacts.fingerprints
  split = splits.split_models(fp.models, seed=cfg.seed, train_frac=cfg.split_train,
                              calib_frac=cfg.split_calib)
  ctx.artifacts.save_split(split)
  logging.info("Model split: %d train the encoder, %d calibrate, %d are evaluated.",
               len(split["train"]), len(split["calib"]), len(split["eval"]))
  bank = splits.bank_models(fp.models)
  by = crossfit.resolve(cfg.enc_crossfit, fp.models, bank)
  num_classes = ctx.data.num_classes
  settings = dict(hidden=(cfg.enc_hidden,), embed_dim=cfg.enc_embed,
                  temperature=cfg.enc_temperature, learning_rate=cfg.enc_lr,
                  steps=cfg.enc_steps, seed=cfg.seed)
  config = encoder_lib.make_config(
      fp.fps.shape[-1], **settings,
      input_confidence=input_confidence(cfg.enc_confidence, by, fp, num_classes))
  encoders = crossfit.train(fp.fps, fp.models, split["train"], bank, config, by)
  summary = {"train_models": len(split["train"]), "calib_models": len(split["calib"]),
             "eval_models": len(split["eval"]), **_losses(encoders),
             "crossfit": encoders.describe(fp.models), "config": encoders.config}
  label_judge = None
  if fp.mode != "labels":
    # Not cross-fitted: on labels, an architecture's shared errors are a
    # strong signal, and encoders that saw the other architectures' bank
    # models as innocent accused the victim's own architecture's (fresh
    # CIFAR-10: 10 of 356 held-out judgments, against 2 uncross-fitted).
    logging.info("The label judge: the encoder on top-1 labels (not cross-fitted).")
    label_judge = crossfit.train(
        layout.as_labels(fp.fps, len(ctx.artifacts.uaps), num_classes),
        fp.models, split["train"], bank,
        encoder_lib.make_config(fp.fps.shape[-1], **settings), "none")  # labels: no temperature
    summary["label_judge"] = _losses(label_judge)
  ctx.artifacts.save_encoder(encoders, summary, label_judge)
  return {k: summary[k] for k in ("train_models", "loss_first", "loss_last")}


def input_confidence(mode: str, crossfit_by: str, fp, num_classes: int) -> dict | None:
  """The encoder's ``input_confidence`` for ``--enc_confidence``.

  ``auto`` re-tempers every model to the victim's confidence when the bank
  does not train the encoder (``crossfit_by`` ``none``): an encoder that
  learned from the zoo alone never saw a label-smoothed or briefly trained
  independent and read their confidence as piracy (the quickstart, seeds 0
  to 4: 6 of 50 pirates detected and 1 of 290 held-out judgments accused;
  re-tempered, 42 and 4). An encoder that learns from the bank's recipes
  does better on the answers as they are (fresh Fashion-MNIST and CIFAR-10,
  five runs: 100 of 120 detected and 4 of 890 held-out accused; re-tempered,
  94 and 13; README, "Answers at the victim's confidence").

  Args:
    mode: ``auto``, ``victim`` or ``raw``.
    crossfit_by: the resolved ``--enc_crossfit``.
    fp: the run's fingerprints (their kind, and the victim's answers).
    num_classes: C.

  Returns:
    None (answers as they are) or the spec :func:`uap_jax.verify.encoder.prepare` reads.
  """
  if mode == "raw" or fp.mode not in confidence.OUTPUT_KINDS or (
      mode == "auto" and crossfit_by != "none"):
    return None
  value = float(confidence.mean_confidence(fp.fps[fp.victim_index], num_classes, fp.mode))
  if not 1.0 / num_classes < value < 1.0:
    return None  # one-hot or uniform answers: no temperature to match
  return {"value": value, "num_classes": int(num_classes), "kind": fp.mode}


def _losses(encoders: crossfit.CrossFitted) -> dict:
  histories = np.stack([np.asarray(e.history) for e in encoders.encoders])
  return {"steps": int(histories.shape[1]), "loss_first": float(histories[:, :10].mean()),
          "loss_last": float(histories[:, -10:].mean())}
