"""Contrastive encoder of fingerprints (Peng et al. 2022, Sec. 3.4).

A small NNX MLP maps a fingerprint view ``(D,)`` to a unit vector ``(E,)``.
It is trained with the supervised contrastive loss of Khosla et al. 2020
("SupCon", the L_out form) on views of the victim and piracy models (label 1)
and of independent models (label 0): views of the same label are pulled
together in cosine similarity, the others pushed apart.

Everything a saved encoder needs is a pure pytree ``state`` (nested dict of
arrays, from ``nnx.to_pure_dict``) and a JSON-able ``config`` dict; rebuild
with :func:`restore`. Training is deterministic given the seed: batches are
drawn with ``jax.random.fold_in(key, step)``.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, NamedTuple, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from uap_jax.fingerprint import confidence as confidence_lib

PyTree = Any

DEFAULTS = {
    "hidden": (50,),
    "embed_dim": 20,
    "temperature": 0.2,
    "learning_rate": 1e-3,
    "steps": 1000,
    "batch_size": 128,
    "standardize": True,
    "seed": 0,
    # None, or {"value", "num_classes", "kind"}: every model's answers are
    # re-tempered to that mean top-1 probability before the encoder reads
    # them (uap_jax.fingerprint.confidence).
    "input_confidence": None,
}


class Standardization(nnx.Variable):
  """Input shift/scale fitted on the training fingerprints, never trained."""


class Encoder(nnx.Module):
  """Standardise -> [Linear -> ReLU] * len(hidden) -> Linear -> unit vector."""

  def __init__(self, in_dim: int, hidden: Sequence[int] = (50,),
               embed_dim: int = 20, *, rngs: nnx.Rngs):
    self.shift = Standardization(jnp.zeros((in_dim,), jnp.float32))
    self.scale = Standardization(jnp.ones((in_dim,), jnp.float32))
    sizes = [in_dim] + list(hidden)
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nnx.Linear(sizes[-1], embed_dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = (x - self.shift[...]) / self.scale[...]
    for layer in self.hidden:
      x = nnx.relu(layer(x))
    return unit(self.head(x))


class TrainedEncoder(NamedTuple):
  """A trained encoder: pure state, its config, and the loss per step."""
  state: dict
  config: dict
  history: np.ndarray


def unit(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Rows scaled to unit L2 norm."""
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def make_config(in_dim: int, **overrides) -> dict:
  """A full, JSON-able encoder config: :data:`DEFAULTS` plus overrides.

  Args:
    in_dim: fingerprint length D.
    **overrides: any key of :data:`DEFAULTS`.

  Returns:
    The config dict (``hidden`` as a list).
  """
  unknown = sorted(set(overrides) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"Unknown encoder config keys {unknown}; known: "
                     f"{sorted(DEFAULTS)}.")
  config = dict(DEFAULTS, **overrides)
  config["in_dim"] = int(in_dim)
  config["hidden"] = [int(h) for h in config["hidden"]]
  checks = [
      (config["in_dim"] >= 1, "in_dim must be >= 1"),
      (all(h >= 1 for h in config["hidden"]), "hidden sizes must be >= 1"),
      (config["embed_dim"] >= 2, "embed_dim must be >= 2"),
      (config["temperature"] > 0, "temperature must be > 0"),
      (config["learning_rate"] > 0, "learning_rate must be > 0"),
      (config["steps"] >= 1, "steps must be >= 1"),
      (config["batch_size"] >= 4, "batch_size must be >= 4"),
      (_valid_input_confidence(config["input_confidence"]),
       "input_confidence must be None or {'value' in (1/C, 1), 'num_classes' C >= 2, "
       "'kind' probs or logits}"),
  ]
  for ok, what in checks:
    if not ok:
      raise ValueError(f"Bad encoder config: {what} (config: {config}).")
  return config


def _valid_input_confidence(spec: dict | None) -> bool:
  if spec is None:
    return True
  try:
    c = int(spec["num_classes"])
    return (c >= 2 and 1.0 / c < float(spec["value"]) < 1.0
            and spec["kind"] in confidence_lib.OUTPUT_KINDS)
  except (KeyError, TypeError, ValueError):
    return False


# prepare()'s recent results, oldest first.
_RETEMPERED: dict[tuple, np.ndarray] = {}
_RETEMPERED_SIZE = 8


def prepare(config: dict | None, fingerprints: np.ndarray) -> np.ndarray:
  """Fingerprints as an encoder of this config reads them.

  Args:
    config: the encoder's config (None: as they are).
    fingerprints: ``(..., V, D)``; with ``input_confidence`` set, the last
      two axes must be one model's views, since each model is re-tempered
      as a whole.

  Returns:
    float32 fingerprints of the same shape.
  """
  fingerprints = np.asarray(fingerprints, np.float32)
  spec = (config or {}).get("input_confidence")
  if spec is None:
    return fingerprints
  if fingerprints.ndim < 2:
    raise ValueError(
        f"This encoder re-tempers each model's answers, so it takes one model's views "
        f"(V, D) or several models' (..., V, D), got shape {fingerprints.shape}.")
  key = (hashlib.sha1(fingerprints.tobytes()).hexdigest(), fingerprints.shape,
         float(spec["value"]), int(spec["num_classes"]), spec["kind"])
  if key not in _RETEMPERED:
    # The protocols embed the same fingerprints with every fold's encoders:
    # re-tempering them once (keyed by content, so never stale) instead of
    # once per encoder took a Fashion-MNIST verify stage from over 5 minutes
    # to 44 s.
    if len(_RETEMPERED) >= _RETEMPERED_SIZE:
      _RETEMPERED.pop(next(iter(_RETEMPERED)))
    retempered = confidence_lib.at_confidence(
        fingerprints, float(spec["value"]), int(spec["num_classes"]), spec["kind"])
    retempered.setflags(write=False)  # shared by every later caller
    _RETEMPERED[key] = retempered
  return _RETEMPERED[key]


def build(config: dict) -> Encoder:
  """A fresh encoder for a config (initialised from ``config['seed']``)."""
  return Encoder(config["in_dim"], tuple(config["hidden"]), config["embed_dim"],
                 rngs=nnx.Rngs(int(config["seed"])))


def restore(state: dict, config: dict) -> Encoder:
  """Rebuilds a trained encoder from its pure state and config."""
  model = build(config)
  abstract = nnx.state(model)
  nnx.replace_by_pure_dict(abstract, state)
  nnx.update(model, abstract)
  return model


def supcon_loss(embeddings: jax.Array, labels: jax.Array,
                temperature: float) -> jax.Array:
  """Supervised contrastive loss (Khosla et al. 2020, L_out).

  Args:
    embeddings: ``(B, E)`` unit vectors.
    labels: ``(B,)`` integer labels.
    temperature: softmax temperature of the cosine similarities.

  Returns:
    Scalar: mean over anchors that have a positive of
    ``-mean_p log softmax_a(z_i . z_a / t)[p]``.
  """
  b = embeddings.shape[0]
  sims = embeddings @ embeddings.T / temperature
  not_self = ~jnp.eye(b, dtype=bool)
  sims = jnp.where(not_self, sims, -jnp.inf)
  log_prob = sims - jax.nn.logsumexp(sims, axis=1, keepdims=True)
  positive = (labels[:, None] == labels[None, :]) & not_self
  count = positive.sum(1)
  mean_log_prob = jnp.where(positive, log_prob, 0.0).sum(1) / jnp.maximum(count, 1)
  has_positive = count > 0
  return -jnp.sum(jnp.where(has_positive, mean_log_prob, 0.0)) / jnp.maximum(
      has_positive.sum(), 1)


def _check_training_data(fingerprints: np.ndarray, labels: np.ndarray) -> None:
  if fingerprints.ndim != 3:
    raise ValueError(
        f"fingerprints must be (M, V, D), got shape {fingerprints.shape}; "
        "concatenate the stacks' fingerprints along the model axis.")
  if labels.shape != (fingerprints.shape[0],):
    raise ValueError(
        f"labels must be (M,) = ({fingerprints.shape[0]},), one per model, got "
        f"{labels.shape}.")
  if not np.all(np.isin(labels, (0, 1))):
    raise ValueError("labels must be 1 (victim/piracy) or 0 (independent).")
  if labels.sum() < 1 or (1 - labels).sum() < 1:
    raise ValueError(
        "Encoder training needs models of both labels (victim/piracy = 1 and "
        f"independent = 0); got {int(labels.sum())} and "
        f"{int((1 - labels).sum())}. Put independents and piracy models in the "
        "training split.")
  if not np.all(np.isfinite(fingerprints)):
    raise ValueError("fingerprints contain NaN or inf; recompute them.")


def _training_config(in_dim: int, config: dict | None, overrides: dict) -> dict:
  if config is None:
    config = make_config(in_dim, **overrides)
  elif overrides:
    raise ValueError("Pass either config or keyword overrides, not both.")
  if config["in_dim"] != in_dim:
    raise ValueError(
        f"The encoder config expects D = {config['in_dim']} but the "
        f"fingerprints have D = {in_dim}; build the config with make_config(D).")
  return config


def train(fingerprints: np.ndarray | jax.Array, labels: np.ndarray | Sequence[int],
          config: dict | None = None, *, log_every: int = 100,
          verbose: bool = True, **overrides) -> TrainedEncoder:
  """Trains an encoder on fingerprints of labelled models.

  Args:
    fingerprints: ``(M, V, D)`` views of M models.
    labels: ``(M,)``: 1 for the victim and piracy models, 0 for independents.
    config: from :func:`make_config`; default ``make_config(D, **overrides)``.
    log_every: steps per compiled chunk; the mean loss of each chunk is
      logged with absl.
    verbose: log at INFO (else DEBUG: the protocols train many encoders).
    **overrides: config keys, when ``config`` is None.

  Returns:
    :class:`TrainedEncoder` (pure state, config, loss per step ``(steps,)``).
  """
  fingerprints = np.asarray(fingerprints, np.float32)
  labels = np.asarray(labels).astype(np.int32)
  _check_training_data(fingerprints, labels)
  config = _training_config(fingerprints.shape[-1], config, overrides)
  fingerprints = prepare(config, fingerprints)
  if log_every < 1:
    raise ValueError(f"log_every must be >= 1, got {log_every}.")

  model = build(config)
  if config["standardize"]:
    flat = fingerprints.reshape(-1, fingerprints.shape[-1])
    std = flat.std(0)
    # A floor relative to the typical spread keeps near-constant features
    # (probabilities of classes never predicted) from being blown up.
    model.shift[...] = jnp.asarray(flat.mean(0))
    model.scale[...] = jnp.asarray(std + 0.1 * std.mean() + 1e-6)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  optimizer = _adam(float(config["learning_rate"]))
  opt_state = optimizer.init(params)
  key = jax.random.key(int(config["seed"]))
  data = jnp.asarray(fingerprints)
  positives = jnp.asarray(np.nonzero(labels == 1)[0], jnp.int32)
  negatives = jnp.asarray(np.nonzero(labels == 0)[0], jnp.int32)

  history = []
  step = 0
  total = int(config["steps"])
  while step < total:
    n = min(log_every, total - step)
    params, opt_state, losses = _train_chunk(
        graphdef, optimizer, config["batch_size"], float(config["temperature"]),
        n, params, opt_state, rest, data, positives, negatives, key,
        jnp.int32(step))
    losses = np.asarray(losses)
    history.append(losses)
    step += n
    logging.log(logging.INFO if verbose else logging.DEBUG,
                "encoder step %d/%d: supcon loss %.4f", step, total, float(losses.mean()))
  trained = nnx.merge(graphdef, params, rest)
  state = nnx.to_pure_dict(nnx.state(trained))
  return TrainedEncoder(state=state, config=config,
                        history=np.concatenate(history))


@functools.lru_cache(maxsize=None)
def _adam(learning_rate: float) -> optax.GradientTransformation:
  """One optimizer object per rate, so that the jitted chunk compiles once."""
  return optax.adam(learning_rate)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _train_chunk(graphdef, optimizer, batch_size, temperature, num_steps,
                 params, opt_state, rest, data, positives, negatives, key,
                 first_step):
  half = batch_size // 2
  num_views = data.shape[1]

  def loss_fn(p, x, y):
    return supcon_loss(nnx.merge(graphdef, p, rest)(x), y, temperature)

  def one_step(carry, step):
    p, o = carry
    # Balanced batches: half victim/piracy views, half independent views,
    # so that both labels always have positives whatever the zoo's balance.
    k_pos, k_neg, k_vp, k_vn = jax.random.split(jax.random.fold_in(key, step), 4)
    models = jnp.concatenate([
        positives[jax.random.randint(k_pos, (half,), 0, positives.shape[0])],
        negatives[jax.random.randint(k_neg, (batch_size - half,), 0,
                                     negatives.shape[0])]])
    views = jnp.concatenate([
        jax.random.randint(k_vp, (half,), 0, num_views),
        jax.random.randint(k_vn, (batch_size - half,), 0, num_views)])
    y = jnp.concatenate([jnp.ones(half, jnp.int32),
                         jnp.zeros(batch_size - half, jnp.int32)])
    loss, grads = jax.value_and_grad(loss_fn)(p, data[models, views], y)
    updates, o = optimizer.update(grads, o, p)
    return (optax.apply_updates(p, updates), o), loss

  (params, opt_state), losses = jax.lax.scan(
      one_step, (params, opt_state), first_step + jnp.arange(num_steps))
  return params, opt_state, losses


def as_module(encoder: Encoder | TrainedEncoder | tuple[dict, dict]) -> Encoder:
  """An :class:`Encoder` from a module, a TrainedEncoder or (state, config)."""
  if isinstance(encoder, Encoder):
    return encoder
  if isinstance(encoder, TrainedEncoder):
    return restore(encoder.state, encoder.config)
  if isinstance(encoder, (tuple, list)) and len(encoder) == 2:
    return restore(*encoder)
  raise ValueError(
      "encoder must be an Encoder, a TrainedEncoder or a (state, config) pair, "
      f"got {type(encoder).__name__}.")


def _config_of(encoder: Any) -> dict | None:
  """The config of a TrainedEncoder, a (state, config) pair or any holder of
  one (cross-fitted encoders); None for a bare Encoder, which has none."""
  if isinstance(encoder, Encoder):
    return None
  if isinstance(encoder, (tuple, list)) and len(encoder) == 2:
    return encoder[1]
  return getattr(encoder, "config", None)


def retempers(encoder: Any) -> bool:
  """Whether an encoder re-tempers every model's answers before reading them
  (``input_confidence``), so that it reads no confidence.

  Args:
    encoder: an Encoder, a TrainedEncoder, a ``(state, config)`` pair or
      anything with an encoder ``config`` (cross-fitted encoders).

  Returns:
    True when its config re-tempers answers.
  """
  return bool((_config_of(encoder) or {}).get("input_confidence"))


@functools.partial(jax.jit, static_argnums=0)
def _embed(graphdef, state, x):
  return nnx.merge(graphdef, state)(x)


def embed(encoder: Encoder | TrainedEncoder | tuple[dict, dict],
          fingerprints: np.ndarray | jax.Array) -> np.ndarray:
  """Unit-vector embeddings of fingerprint views.

  Args:
    encoder: an Encoder, a TrainedEncoder, or a ``(state, config)`` pair
      (a bare Encoder has no config: its views are read as they are, even
      where its config would re-temper them, see :func:`prepare`).
    fingerprints: ``(..., D)`` views; ``(..., V, D)``, one model's views on
      the last two axes, for an encoder that re-tempers answers.

  Returns:
    ``(..., E)`` float32 unit vectors (numpy).
  """
  module = as_module(encoder)
  fingerprints = np.asarray(fingerprints, np.float32)
  in_dim = module.shift[...].shape[0]
  if fingerprints.ndim < 1 or fingerprints.shape[-1] != in_dim:
    raise ValueError(
        f"The encoder takes fingerprints of length D = {in_dim}, got shape "
        f"{fingerprints.shape}; fingerprint with the same K, U, classes and "
        "mode as the encoder's training data.")
  fingerprints = prepare(_config_of(encoder), fingerprints)
  graphdef, state = nnx.split(module)
  flat = fingerprints.reshape(-1, in_dim)
  out = np.asarray(_embed(graphdef, state, jnp.asarray(flat)))
  return out.reshape(fingerprints.shape[:-1] + (out.shape[-1],))
