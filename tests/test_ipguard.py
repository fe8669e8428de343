"""IPGuard: boundary points tie two classes at the top, and copies match them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uap_jax.verify import ipguard


def _linear(variables, x):
  return x.reshape(x.shape[0], -1) @ variables["w"] + variables["b"]


def _model(seed):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(16, 5)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(5,)) * 0.1, jnp.float32)}


def test_boundary_loss_is_the_formula():
  z = jnp.array([3.0, 1.0, 2.5, -1.0])
  # i = 0, j = 2: max of the others is 1.0, min(z_i, z_j) = 2.5.
  assert float(ipguard.boundary_loss(z, 0, 2, 0.5)) == pytest.approx(0.0 + 0.5)
  assert float(ipguard.boundary_loss(z, 0, 1, 0.5)) == pytest.approx((2.5 - 1.0 + 0.5) + 2.0)


def test_points_end_near_the_boundary_of_the_model_they_were_grown_on():
  victim = _model(0)
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(64, 4, 4, 1)), jnp.float32)
  points = ipguard.boundary_points(_linear, victim, x, jax.random.key(0), steps=200,
                                   step_size=0.005)
  assert points.shape == x.shape and float(points.min()) >= 0 and float(points.max()) <= 1
  top2 = np.sort(np.asarray(_linear(victim, points)), -1)[:, -2:]
  before = np.sort(np.asarray(_linear(victim, x)), -1)[:, -2:]
  gap, gap_before = top2[:, 1] - top2[:, 0], before[:, 1] - before[:, 0]
  assert np.median(gap) < 0.2 * np.median(gap_before)
  # The same key gives the same points.
  again = ipguard.boundary_points(_linear, victim, x, jax.random.key(0), steps=200,
                                  step_size=0.005)
  np.testing.assert_array_equal(np.asarray(points), np.asarray(again))


def test_a_copy_matches_the_victim_on_its_boundary_points_more_than_an_independent():
  victim, other = _model(0), _model(5)
  copy = jax.tree.map(lambda a: a + 0.01, victim)
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(200, 4, 4, 1)), jnp.float32)
  points = ipguard.boundary_points(_linear, victim, x, jax.random.key(0))
  outs = np.stack([np.asarray(_linear(m, points)) for m in (victim, copy, other)])
  rate = ipguard.matching_rate(outs, outs[0])
  assert rate[0] == 1.0 and rate[1] > rate[2] + 0.2
  with pytest.raises(ValueError, match="do not match"):
    ipguard.matching_rate(outs, outs[0][:10])
