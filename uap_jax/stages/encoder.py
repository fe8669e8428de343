"""Stage `encoder`: split the zoo, train the contrastive encoder on its training part."""

from __future__ import annotations

import numpy as np
from absl import logging

from uap_jax.runtime import checkpoint
from uap_jax.verify import encoder as encoder_lib
from uap_jax import verify
from uap_jax.runtime.context import RunContext
from uap_jax.stages import fingerprint as fp_stage


def encoder_config(ctx: RunContext, dim: int) -> dict:
  cfg = ctx.cfg
  return encoder_lib.make_config(
      dim, hidden=(cfg.enc_hidden,), embed_dim=cfg.enc_embed,
      temperature=cfg.enc_temperature, learning_rate=cfg.enc_lr, steps=cfg.enc_steps,
      seed=cfg.seed)


def train_on(ctx: RunContext, fps: np.ndarray, meta: list[dict],
             train_idx) -> encoder_lib.TrainedEncoder:
  """Trains an encoder on the models ``train_idx`` only."""
  train_idx = np.asarray(train_idx)
  labels = verify.encoder_labels([meta[i] for i in train_idx])
  return encoder_lib.train(fps[train_idx], labels,
                           encoder_config(ctx, fps.shape[-1]))


def load(ctx: RunContext) -> tuple[encoder_lib.TrainedEncoder, dict]:
  """The saved encoder and the model split it was trained with."""
  state, meta = checkpoint.load_arrays(ctx.workdir.checkpoint_dir("encoder"))
  enc = encoder_lib.TrainedEncoder(state=state["state"], config=meta["config"],
                                   history=np.asarray(state["history"]))
  return enc, ctx.workdir.read_json("split.json")


def run(ctx: RunContext) -> dict:
  fps, meta, _ = fp_stage.load(ctx)
  split = verify.split_models(meta, seed=ctx.cfg.seed, train_frac=ctx.cfg.split_train,
                              calib_frac=ctx.cfg.split_calib)
  ctx.workdir.write_json("split.json", split)
  logging.info("Model split: %d train the encoder, %d calibrate, %d are evaluated.",
               len(split["train"]), len(split["calib"]), len(split["eval"]))
  enc = train_on(ctx, fps, meta, split["train"])
  checkpoint.save_arrays(ctx.workdir.checkpoint_dir("encoder"),
                         {"state": enc.state, "history": np.asarray(enc.history)},
                         {"config": enc.config})
  history = np.asarray(enc.history)
  summary = {"train_models": len(split["train"]), "calib_models": len(split["calib"]),
             "eval_models": len(split["eval"]), "steps": int(history.size),
             "loss_first": float(history[:10].mean()), "loss_last": float(history[-10:].mean()),
             "config": enc.config}
  ctx.workdir.write_json("encoder.json", summary)
  return {k: summary[k] for k in ("train_models", "loss_first", "loss_last")}
