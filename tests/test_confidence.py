"""Answers re-tempered to one confidence (uap_jax.fingerprint.confidence) and
the encoder that reads them so (--enc_confidence)."""

import types

import numpy as np
import pytest

from uap_jax.fingerprint import confidence
from uap_jax.stages import encoder as encoder_stage
from uap_jax.verify import encoder as encoder_lib

C = 5


def softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def logits(seed, models=3, views=4, points=6):
  """``(M, V, points * C)`` logits, each model at its own sharpness."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(models, views, points, C))
  z *= rng.uniform(0.5, 4.0, (models, 1, 1, 1))
  return z.reshape(models, views, points * C)


def probs(z):
  return softmax(z.reshape(z.shape[:-1] + (-1, C))).reshape(z.shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [0.3, 0.6, 0.95])
def test_every_model_reaches_the_target_and_keeps_its_ranking(seed, target):
  z = logits(seed)
  out = confidence.at_confidence(probs(z), target, C, "probs")
  assert out.shape == z.shape and out.dtype == np.float32
  np.testing.assert_allclose(confidence.mean_confidence(out, C, "probs"), target, atol=1e-4)
  rows = lambda x: x.reshape(x.shape[:-1] + (-1, C))
  np.testing.assert_array_equal(rows(out).argmax(-1), rows(z).argmax(-1))
  np.testing.assert_allclose(rows(out).sum(-1), 1.0, atol=1e-5)


# Sharper than this, answers fall under PROB_FLOOR and lose what lies below it.
@pytest.mark.parametrize("api_temperature", [0.5, 1.0, 3.0])
def test_an_apis_temperature_is_undone(api_temperature):
  z = logits(3)
  plain = confidence.at_confidence(probs(z), 0.7, C, "probs")
  tempered = confidence.at_confidence(probs(z / api_temperature), 0.7, C, "probs")
  np.testing.assert_allclose(tempered, plain, atol=1e-4)


def test_logits_give_the_same_answers_as_probabilities():
  z = logits(4)
  scaled = confidence.at_confidence(z, 0.8, C, "logits")
  np.testing.assert_allclose(probs(scaled.astype(np.float64)),
                             confidence.at_confidence(probs(z), 0.8, C, "probs"), atol=1e-5)


def test_one_temperature_per_model_over_all_its_views():
  z = logits(5, models=2)
  both = confidence.at_confidence(probs(z), 0.6, C, "probs")
  for m in range(2):
    np.testing.assert_allclose(both[m], confidence.at_confidence(probs(z[m]), 0.6, C, "probs"),
                               atol=1e-6)


def test_uniform_answers_stay_uniform():
  flat = np.full((1, 2, 3 * C), 1.0 / C)
  np.testing.assert_allclose(confidence.at_confidence(flat, 0.9, C, "probs"), flat, atol=1e-6)


@pytest.mark.parametrize("args, match", [
    ((0.9, C, "labels"), "labels have no temperature"),
    ((1.0, C, "probs"), "target confidence"),
    ((1.0 / C, C, "probs"), "target confidence"),
    ((0.9, 7, "probs"), "multiple of the 7 classes"),
])
def test_bad_input(args, match):
  with pytest.raises(ValueError, match=match):
    confidence.at_confidence(probs(logits(6)), *args)


def spec(value=0.7):
  return {"value": value, "num_classes": C, "kind": "probs"}


def test_an_encoder_that_re_tempers_sees_no_temperature():
  z = logits(7, models=8, views=6)
  labels = np.arange(8) % 2
  config = encoder_lib.make_config(z.shape[-1], steps=30, batch_size=16,
                                   input_confidence=spec())
  trained = encoder_lib.train(probs(z), labels, config)
  sharper = probs(z / 0.3)
  np.testing.assert_allclose(encoder_lib.embed(trained, sharper),
                             encoder_lib.embed(trained, probs(z)), atol=1e-3)
  raw = encoder_lib.train(probs(z), labels, dict(config, input_confidence=None))
  moved = np.abs(encoder_lib.embed(raw, sharper) - encoder_lib.embed(raw, probs(z))).max()
  assert moved > 1e-2, "without re-tempering the temperature must show"
  with pytest.raises(ValueError, match="one model's views"):
    encoder_lib.embed(trained, probs(z)[0, 0])


@pytest.mark.parametrize("bad", [{"value": 0.1, "num_classes": C, "kind": "probs"},
                                 {"value": 0.7, "num_classes": C, "kind": "labels"},
                                 {"value": 0.7}])
def test_bad_input_confidence_is_refused(bad):
  with pytest.raises(ValueError, match="input_confidence"):
    encoder_lib.make_config(10, input_confidence=bad)


@pytest.mark.parametrize("mode, crossfit_by, kind, expected", [
    ("auto", "none", "probs", True),
    ("auto", "arch", "probs", False),
    ("victim", "arch", "logits", True),
    ("raw", "none", "probs", False),
    ("victim", "none", "labels", False),
])
def test_enc_confidence_resolves(mode, crossfit_by, kind, expected):
  z = logits(8, models=3)
  fps = {"probs": probs(z), "logits": z,
         "labels": np.eye(C)[probs(z).reshape(3, 4, -1, C).argmax(-1)].reshape(z.shape)}[kind]
  fp = types.SimpleNamespace(fps=fps, mode=kind, victim_index=1)
  got = encoder_stage.input_confidence(mode, crossfit_by, fp, C)
  assert (got is not None) == expected
  if expected:
    assert got["kind"] == kind and got["num_classes"] == C
    assert got["value"] == pytest.approx(float(confidence.mean_confidence(fps[1], C, kind)))
