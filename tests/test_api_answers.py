"""API answer transforms: every row stays a distribution, and each does what it says."""

import numpy as np
import pytest

from uap_jax.fingerprint import api_answers
from uap_jax.fingerprint import layout

SPECS = ("round:0", "round:1", "round:2", "topk:1", "topk:3", "temperature:3",
         "temperature:0.3", "logit_noise:0.5", "labels")


def _probs(shape=(50, 10), seed=0):
  return np.random.default_rng(seed).dirichlet(np.full(shape[-1], 0.3), size=shape[:-1])


@pytest.mark.parametrize("spec", SPECS)
def test_every_transform_gives_distributions(spec):
  out = api_answers.parse(spec)(_probs(), np.random.default_rng(1))
  assert out.shape == (50, 10) and out.min() >= 0
  np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-9)


@pytest.mark.parametrize("spec", ("round:0", "topk:1", "topk:3", "temperature:3",
                                  "temperature:0.3", "labels"))
def test_top1_kept_where_the_transform_cannot_change_it(spec):
  p = _probs()
  out = api_answers.parse(spec)(p, np.random.default_rng(1))
  np.testing.assert_array_equal(out.argmax(-1), p.argmax(-1))


def test_each_transform_is_what_it_names():
  p = _probs()
  rng = np.random.default_rng(0)
  assert np.all(np.count_nonzero(api_answers.top_k(p, 3), -1) <= 3)
  np.testing.assert_array_equal(api_answers.labels(p), np.eye(10)[p.argmax(-1)])
  np.testing.assert_array_equal(api_answers.top_k(p, 1), api_answers.labels(p))
  rounded = api_answers.round_probs(p, 1)
  nonempty = np.round(p, 1).sum(-1) > 0
  np.testing.assert_allclose(rounded[nonempty] * np.round(p, 1)[nonempty].sum(-1, keepdims=True),
                             np.round(p, 1)[nonempty], atol=1e-12)
  np.testing.assert_allclose(api_answers.temperature(p, 1.0), p, atol=1e-9)
  np.testing.assert_allclose(api_answers.logit_noise(p, 0.0, rng), p, atol=1e-9)
  soft, sharp = api_answers.temperature(p, 3.0), api_answers.temperature(p, 0.3)
  assert soft.max(-1).mean() < p.max(-1).mean() < sharp.max(-1).mean()


def test_noise_follows_its_seed():
  p = _probs()
  a = api_answers.logit_noise(p, 1.0, np.random.default_rng(3))
  b = api_answers.logit_noise(p, 1.0, np.random.default_rng(3))
  c = api_answers.logit_noise(p, 1.0, np.random.default_rng(4))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_apply_transforms_every_output_row_of_a_fingerprint():
  outputs = _probs((3, 4, 5, 2, 10))  # (M, V, K, 1 + U, C)
  fps = layout.join(outputs)
  out = api_answers.apply("topk:2", fps, num_uaps=1, num_classes=10)
  assert out.shape == fps.shape and out.dtype == np.float32
  np.testing.assert_allclose(layout.split(out, 1, 10), api_answers.top_k(outputs, 2), atol=1e-6)
  with pytest.raises(ValueError, match="probability fingerprints"):
    api_answers.apply("round:1", np.log(fps + 1e-3), num_uaps=1, num_classes=10)


@pytest.mark.parametrize("spec", ("round", "round:-1", "topk:0", "topk:x", "temperature:0",
                                  "logit_noise:-1", "labels:2", "jpeg:75"))
def test_bad_specs_name_the_forms(spec):
  with pytest.raises(ValueError, match="the forms are round:D, topk:K"):
    api_answers.parse(spec)
