"""Tests of the classifier zoo (uap_jax.models).

Full-width models are only traced (``nnx.eval_shape``: shapes and parameter
counts without allocating or running them); real forward passes use narrow
models, mostly with numpy-drawn weights (see ``materialize``), so the file
stays fast on 2 CPU cores.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from uap_jax import models

ARCHS = sorted(models.ARCHITECTURES)
BATCH_NORM_ARCHS = ["mobilenetv2", "resnet18", "resnet20", "resnet34",
                    "small_cnn", "vgg11", "vgg13", "vgg16"]
# (H, W, C): MNIST, sklearn digits, CIFAR, and an odd non-square size.
IMAGE_SHAPES = [(28, 28, 1), (8, 8, 1), (32, 32, 3), (7, 9, 3)]
# Narrow widths for real forward passes; the output shape and the forward
# logic do not depend on width.
RUN_WIDTH = {"resnet18": 0.125, "resnet34": 0.125, "vgg11": 0.125,
             "vgg13": 0.125, "vgg16": 0.125, "mobilenetv2": 0.25,
             "resnet20": 0.5}
# Trainable parameters at width 1 for 3x32x32 inputs and 10 classes, as
# published for the usual CIFAR variants (bounds allow for conv biases before
# BatchNorm, which these models omit, and rounding in the sources):
# LeNet-5 61.7k (LeCun 1998, 32x32x1 input; 62k for 3 channels); ResNet-20
# 0.27M (He et al. 2016, Table 6); ResNet-18 11.17M and ResNet-34 21.3M, VGG-11
# 9.23M, VGG-16 14.7M (CIFAR variants with one linear head, as in
# kuangliu/pytorch-cifar); MobileNetV2 3.4M on ImageNet minus the 1280x990
# weights of a 1000-class head = 2.2M.
REFERENCE_PARAMS = {
    "lenet5": (60e3, 64e3),
    "resnet20": (0.26e6, 0.28e6),
    "resnet18": (11.1e6, 11.2e6),
    "resnet34": (21.2e6, 21.4e6),
    "vgg11": (9.2e6, 9.25e6),
    "vgg13": (9.38e6, 9.43e6),
    "vgg16": (14.7e6, 14.75e6),
    "mobilenetv2": (2.2e6, 2.3e6),
    # Not published architectures: ranges from their layer sizes.
    "mlp": (0.8e6, 0.85e6),        # 3072*256 + 256*128 + 128*10 + biases.
    "small_cnn": (90e3, 100e3),    # 3x3 convs 3->32->64->128 + 128x10 head.
}

# Output channels of the first 3x3 convolution at width 1 (the architectures'
# published layer tables).
STEM_CHANNELS = {"small_cnn": 32, "vgg11": 64, "vgg13": 64, "vgg16": 64,
                 "resnet18": 64, "resnet34": 64, "resnet20": 16,
                 "mobilenetv2": 32}


@functools.lru_cache(maxsize=None)
def abstract_model(arch, image_shape=(32, 32, 3), width=1.0, num_classes=10):
  """The model's structure with ShapeDtypeStructs for arrays (cached)."""
  return nnx.eval_shape(lambda: models.build(
      arch, num_classes=num_classes, image_shape=image_shape, width=width))


def abstract_output(model, x_shape):
  return nnx.eval_shape(lambda m, x: m(x), model,
                        jax.ShapeDtypeStruct(x_shape, jnp.float32))


def images(shape, n=4, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n,) + tuple(shape))


def materialize(abstract, seed=0):
  """Fills an abstract model with He-scaled numpy weights and unit BatchNorm.

  Flax's own initialisation compiles one truncated-normal sampler per weight
  shape (~0.1-0.3 s each on 2 busy cores; MobileNetV2 has 50 shapes), so the
  forward tests of the deep models would dominate this file's run time.
  Forward, BatchNorm and shape logic do not depend on how weights were drawn.
  """
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-2].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape),
                         leaf.dtype)
    value = 1.0 if name in ("scale", "var") else 0.0  # bias, mean: 0.
    return jnp.full(leaf.shape, value, leaf.dtype)
  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


@pytest.fixture(scope="module")
def narrow_models():
  """One narrow 3x32x32 model per architecture, made on first use."""
  cache = {}

  def get(arch):
    if arch not in cache:
      cache[arch] = materialize(
          abstract_model(arch, width=RUN_WIDTH.get(arch, 1.0)))
    return cache[arch]
  return get


def test_registry_has_every_architecture_of_the_issue():
  assert set(REFERENCE_PARAMS) <= set(models.ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHS)
def test_param_count_at_width_1_matches_reference(arch):
  low, high = REFERENCE_PARAMS[arch]
  assert low <= models.param_count(abstract_model(arch)) <= high


@pytest.mark.parametrize("arch", ARCHS)
def test_param_count_counts_params_not_batch_stats(arch):
  model = abstract_model(arch)
  _, params, rest = nnx.split(model, nnx.Param, ...)
  size = lambda tree: sum(leaf.size for leaf in jax.tree.leaves(tree))
  assert models.param_count(model) == size(params)
  # Every non-parameter is a BatchNorm running statistic, and only models
  # with BatchNorm have them.
  rest_types = {type(v) for v in jax.tree.leaves(
      rest, is_leaf=lambda x: isinstance(x, nnx.Variable))}
  assert rest_types <= {nnx.BatchStat}
  assert bool(rest_types) == (arch in BATCH_NORM_ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("image_shape", IMAGE_SHAPES)
def test_output_shape_for_any_image_shape(arch, image_shape):
  model = abstract_model(arch, image_shape)
  out = abstract_output(model, (5,) + image_shape)
  assert out.shape == (5, 10)
  assert out.dtype == jnp.float32


@pytest.mark.parametrize("arch", ARCHS)
def test_width_multiplier_scales_parameter_count(arch):
  counts = [models.param_count(abstract_model(arch, width=w))
            for w in (0.5, 1.0)]
  assert counts[0] < counts[1]


@pytest.mark.parametrize("arch", ARCHS)
def test_one_channel_model_has_fewer_input_params(arch):
  one = models.param_count(abstract_model(arch, (28, 28, 1)))
  three = models.param_count(abstract_model(arch, (32, 32, 3)))
  if arch in ("mlp", "lenet5"):  # Their first layer also sees fewer pixels.
    assert one < three
  else:
    # Global pooling: only the 3x3 stem's input channels change (3 -> 1).
    assert three - one == 2 * 9 * STEM_CHANNELS[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_is_finite_and_train_mode_uses_batch_statistics(
    arch, narrow_models):
  model = narrow_models(arch)
  x = images((32, 32, 3))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def forward(params, rest, x):
    train = nnx.merge(graphdef, params, rest)
    train.train()
    train_logits = train(x)
    _, _, new_rest = nnx.split(train, nnx.Param, ...)
    evaluate = nnx.merge(graphdef, params, rest)
    evaluate.eval()
    return train_logits, evaluate(x), new_rest

  train_logits, eval_logits, new_rest = forward(params, rest, x)
  assert eval_logits.shape == train_logits.shape == (4, 10)
  assert np.isfinite(np.asarray(eval_logits)).all()
  assert np.isfinite(np.asarray(train_logits)).all()
  rest_changed = any(not np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(rest), jax.tree.leaves(new_rest)))
  if arch in BATCH_NORM_ARCHS:
    # Batch statistics of random images differ from the initial running
    # statistics (mean 0, variance 1), so the two modes disagree.
    assert not np.allclose(train_logits, eval_logits, atol=1e-4)
    assert rest_changed
  else:
    np.testing.assert_allclose(train_logits, eval_logits, rtol=1e-5, atol=1e-5)
    assert not rest_changed


@pytest.fixture(scope="module")
def digit_cnns():
  """small_cnn for 8x8 digits, Flax-initialised with seeds 0 and 1."""
  return [models.build("small_cnn", num_classes=10, image_shape=(8, 8, 1),
                       width=0.5, seed=seed) for seed in (0, 1)]


def test_flax_initialised_model_runs_on_small_digits(digit_cnns):
  # 8x8 inputs: small_cnn pools 8->4->2->1 and still has a 1x1 map to average.
  model = nnx.clone(digit_cnns[0])  # Keep the shared fixture in train mode.
  model.eval()
  out = nnx.jit(lambda m, x: m(x))(model, images((8, 8, 1), n=3))
  assert out.shape == (3, 10)
  assert np.isfinite(np.asarray(out)).all()


def test_seeds_share_graphdef_and_differ_in_params(digit_cnns):
  # Stacks rely on one graphdef for all seeds of an architecture.
  (g0, p0, _), (g1, p1, _) = [nnx.split(m, nnx.Param, ...) for m in digit_cnns]
  assert g0 == g1 and hash(g0) == hash(g1)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(p0),
                                                   jax.tree.leaves(p1)))


def test_models_normalise_inside():
  # Pixels equal to the mean are mapped to 0, so they give the same logits
  # whatever that mean is.
  kwargs = dict(num_classes=10, image_shape=(8, 8, 3), seed=3)
  low = models.build("mlp", mean=0.2, std=0.1, **kwargs)
  high = models.build("mlp", mean=(0.7, 0.6, 0.5), std=0.1, **kwargs)
  np.testing.assert_allclose(
      low(jnp.full((1, 8, 8, 3), 0.2)),
      high(jnp.broadcast_to(jnp.asarray([0.7, 0.6, 0.5]), (1, 8, 8, 3))),
      rtol=1e-5, atol=1e-6)


def test_unknown_architecture_names_the_known_ones():
  with pytest.raises(ValueError, match="Unknown architecture 'resnet99'") as e:
    models.build("resnet99", num_classes=10, image_shape=(32, 32, 3))
  for arch in ARCHS:
    assert arch in str(e.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=1, image_shape=(8, 8, 1)), "num_classes"),
    (dict(num_classes=10, image_shape=(8, 8, 2)), "image_shape"),
    (dict(num_classes=10, image_shape=(8, 8)), "image_shape"),
    (dict(num_classes=10, image_shape=(8, 8, 1), width=0), "width"),
    (dict(num_classes=10, image_shape=(8, 8, 3), mean=(0.5, 0.5)),
     "Normalisation"),
])
def test_bad_build_arguments_raise_clear_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    models.build("small_cnn", **kwargs)


def test_wrong_input_channels_or_size_raise_clear_errors():
  cnn = nnx.eval_shape(lambda: models.build(
      "small_cnn", num_classes=10, image_shape=(8, 8, 1)))
  with pytest.raises(ValueError, match="channel count"):
    abstract_output(cnn, (2, 8, 8, 3))
  lenet = nnx.eval_shape(lambda: models.build(
      "lenet5", num_classes=10, image_shape=(28, 28, 1)))
  with pytest.raises(ValueError, match="Resize"):
    abstract_output(lenet, (2, 32, 32, 1))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape", [(3, 28, 28, 6), (2, 7, 9, 4), (2, 1, 5, 3),
                                   (2, 1, 1, 2)])
def test_max_pool_equals_reduce_window_in_value_and_gradient(shape, ties):
  # max_pool_2x2 replaces lax.reduce_window (whose gradient, select-and-scatter,
  # is slow on CPU); values and gradients must not change, odd sides (the last
  # row or column dropped), sides of 1 and tied maxima (saturated pixels,
  # constant backgrounds) included: a tie's gradient goes to the first maximum.
  from uap_jax.models import base   # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(shape[1] * 100 + shape[2])
  x = rng.integers(-1, 3, size=shape) if ties else rng.normal(size=shape)
  x = jnp.asarray(x, jnp.float32)

  def reference(x):
    window = (base.pool_window(x.shape[1]), base.pool_window(x.shape[2]))
    return nnx.max_pool(x, window_shape=window, strides=window,
                        padding="VALID")

  weights = jnp.asarray(rng.normal(size=reference(x).shape), jnp.float32)

  def loss(pool, x):
    return jnp.sum(weights * pool(jax.nn.relu(x) + x))

  np.testing.assert_array_equal(base.max_pool_2x2(x), reference(x))
  np.testing.assert_array_equal(
      jax.jit(jax.grad(functools.partial(loss, base.max_pool_2x2)))(x),
      jax.jit(jax.grad(functools.partial(loss, reference)))(x))


def test_max_pool_forward_pass_is_a_plain_maximum():
  # The first-maximum bookkeeping belongs to the derivative only: in a
  # forward pass it made inference 2.6x slower (README, Model-axis strategies).
  from uap_jax.models import base   # pylint: disable=g-import-not-at-top
  x = jnp.zeros((2, 8, 8, 3))
  forward = str(jax.make_jaxpr(base.max_pool_2x2)(x))
  assert "cumsum" not in forward and "select_n" not in forward
  backward = str(jax.make_jaxpr(jax.grad(lambda v: base.max_pool_2x2(v).sum()))(x))
  assert "cumsum" in backward


def test_max_pool_forward_mode_matches_reduce_window():
  from uap_jax.models import base   # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(-1, 3, size=(2, 6, 5, 3)), jnp.float32)
  t = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  reference = lambda v: nnx.max_pool(v, window_shape=(2, 2), strides=(2, 2),
                                     padding="VALID")
  out, tangent = jax.jvp(base.max_pool_2x2, (x,), (t,))
  ref_out, ref_tangent = jax.jvp(reference, (x,), (t,))
  np.testing.assert_array_equal(out, ref_out)
  np.testing.assert_allclose(tangent, ref_tangent, rtol=1e-6)


def test_max_pool_keeps_nan_and_infinity():
  from uap_jax.models import base   # pylint: disable=g-import-not-at-top
  x = jnp.asarray([[1.0, np.nan, 0.0, 2.0], [1.0, np.inf, 0.0, 2.0],
                   [-np.inf, -np.inf, -np.inf, -np.inf]], jnp.float32)
  pooled = base.max_pool_2x2(x.reshape(3, 2, 2, 1)).ravel()
  assert np.isnan(pooled[0])
  np.testing.assert_array_equal(pooled[1:], [np.inf, -np.inf])
