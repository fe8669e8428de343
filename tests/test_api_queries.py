"""Query-side API transforms: jit-able wrappers whose randomness follows the image."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uap_jax.fingerprint import api_queries


def _linear(variables, x):
  return x.reshape(x.shape[0], -1) @ variables


def _images(n=8, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, 6, 6, 1)), jnp.float32)


W = jnp.asarray(np.random.default_rng(1).normal(size=(36, 4)), jnp.float32)


@pytest.mark.parametrize("spec", ("noise:0.1", "shift:2", "jpeg:75", "flag:3"))
def test_the_same_query_gets_the_same_answer_in_any_batch_and_under_jit(spec):
  api = api_queries.wrap(spec, _linear)
  x = _images()
  whole = np.asarray(jax.jit(api)(W, x))
  np.testing.assert_allclose(np.asarray(api(W, x[3:5])), whole[3:5], atol=1e-5)
  np.testing.assert_allclose(np.asarray(api(W, x[::-1])), whole[::-1], atol=1e-5)


def test_zero_noise_is_the_model_itself_and_noise_changes_it():
  x = _images()
  np.testing.assert_allclose(api_queries.wrap("noise:0", _linear)(W, x), _linear(W, x),
                             atol=1e-5)
  noisy = api_queries.gaussian_noise(x, 0.1)
  assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1
  assert 0.05 < float(jnp.std(noisy - x)) < 0.12


def test_shift_moves_content_by_at_most_p_pixels_and_fills_with_zero():
  x = jnp.zeros((5, 9, 9, 1)).at[:, 4, 4, 0].set(1.0)
  shifted = np.asarray(api_queries.random_shift(x, 2))
  assert shifted.shape == x.shape
  for image in shifted:
    (r,), (c,) = np.nonzero(image[..., 0])
    assert abs(r - 4) <= 2 and abs(c - 4) <= 2 and image.sum() == 1.0


def test_jpeg_at_full_quality_is_near_identity_and_low_quality_is_not():
  x = jnp.asarray(np.random.default_rng(2).uniform(size=(3, 16, 16, 1)), jnp.float32)
  smooth = api_queries.box_blur(x, 5)  # JPEG keeps smooth images best
  best = np.asarray(jax.jit(lambda v: api_queries.jpeg(v, 100))(smooth))
  worst = np.asarray(api_queries.jpeg(x, 5))
  assert best.shape == x.shape and best.dtype == np.float32
  assert np.abs(best - np.asarray(smooth)).max() < 4 / 255
  assert np.abs(worst - np.asarray(x)).mean() > 0.05
  colour = jnp.asarray(np.random.default_rng(3).uniform(size=(2, 8, 8, 3)), jnp.float32)
  assert api_queries.jpeg(colour, 75).shape == (2, 8, 8, 3)
  # Under vmap (the engine's model axis) each member is coded as on its own.
  stacked = jnp.stack([x, x[::-1]])
  np.testing.assert_allclose(jax.vmap(lambda v: api_queries.jpeg(v, 50))(stacked)[1],
                             api_queries.jpeg(x[::-1], 50), atol=1e-6)


def test_box_blur_keeps_a_constant_image_and_averages_a_spike():
  np.testing.assert_allclose(api_queries.box_blur(jnp.full((1, 5, 5, 2), 0.3), 3), 0.3,
                             atol=1e-6)
  spike = jnp.zeros((1, 5, 5, 1)).at[0, 2, 2, 0].set(9.0)
  np.testing.assert_allclose(api_queries.box_blur(spike, 3)[0, 1:4, 1:4, 0], 1.0, atol=1e-6)


def test_flagging_answers_at_random_only_where_blur_changes_the_top1():
  x = _images(32)
  out = np.asarray(api_queries.wrap("flag:3", _linear)(W, x))
  plain = np.asarray(_linear(W, x))
  blurred = np.asarray(_linear(W, api_queries.box_blur(x, 3)))
  flagged = plain.argmax(-1) != blurred.argmax(-1)
  assert flagged.any() and (~flagged).any()
  np.testing.assert_allclose(out[~flagged], plain[~flagged], atol=1e-5)
  assert np.all(np.sort(out[flagged], -1)[:, -2:] == [0.0, 10.0])


@pytest.mark.parametrize("spec", ("noise", "noise:-1", "shift:0", "shift:1.5", "flag:x",
                                  "jpeg:0", "jpeg:101", "blur:3"))
def test_bad_specs_name_the_forms(spec):
  with pytest.raises(ValueError, match="the forms are noise:S"):
    api_queries.parse(spec)
