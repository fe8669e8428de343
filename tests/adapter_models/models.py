"""Models that tests/test_adapters.py names in ``py:`` specs.

Each function builds (and, where a test needs a working victim, trains) a
classifier of sklearn's 8x8 digits (the tiny quickstart's data set) in one
framework. Training is seeded and single-threaded, so every process that
resolves a spec gets the same weights.
"""

import numpy as np

NUM_CLASSES = 10


def _digits(count=None):
  """The first images of the tiny run's data set: float32 NHWC in [0, 1]."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  x = (np.round(d.images * 255.0 / 16.0) / 255.0).astype(np.float32)[..., None]
  return x[:count], d.target[:count].astype(np.int64)


# --------------------------------------------------------------------------
# Flax NNX.

def nnx_victim():
  """An untrained NNX MLP (the adapter tests compare outputs, not accuracy)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  class Mlp(nnx.Module):

    def __init__(self, rngs):
      self.hidden = nnx.Linear(64, 32, rngs=rngs)
      self.head = nnx.Linear(32, NUM_CLASSES, rngs=rngs)

    def __call__(self, x):
      return self.head(nnx.relu(self.hidden(x.reshape(x.shape[0], -1) - 0.5)))

  return Mlp(nnx.Rngs(0))


def probabilities():
  """A model that ends in a softmax (refused: it must return logits)."""
  import jax  # pylint: disable=g-import-not-at-top
  w = np.random.default_rng(0).normal(size=(64, NUM_CLASSES)).astype(np.float32)
  return (lambda v, x: jax.nn.softmax(x.reshape(x.shape[0], -1) @ v), w)


def three_classes():
  """Logits for 3 classes on a 10-class data set (refused)."""
  w = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
  return (lambda v, x: x.reshape(x.shape[0], -1) @ v, w)


def flat_output():
  """One number per image instead of a row of logits (refused)."""
  w = np.ones((64,), np.float32)
  return (lambda v, x: x.reshape(x.shape[0], -1) @ v, w)


def not_a_model():
  """Returns a string (refused)."""
  return "a model"


def raises():
  """Fails while building the model (refused, the error named)."""
  raise RuntimeError("weights file victim.pt not found")


# --------------------------------------------------------------------------
# PyTorch (through torch2jax).

def _torch_cnn(seed):
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  return torch.nn.Sequential(
      torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
      torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 32),
      torch.nn.ReLU(), torch.nn.Linear(32, NUM_CLASSES))


def train_torch(model, x, y, *, epochs, seed, lr=0.05):
  """Plain SGD on NHWC float images; returns the model in eval mode."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  torch.manual_seed(seed)
  images = torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())
  labels = torch.from_numpy(y)
  opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
  model.train()
  for _ in range(epochs):
    for idx in torch.randperm(len(images)).split(64):
      opt.zero_grad()
      torch.nn.functional.cross_entropy(model(images[idx]), labels[idx]).backward()
      opt.step()
  return model.eval()


def torch_untrained():
  """The torch CNN with random weights (BatchNorm statistics set to non-trivial
  values, so that eval mode is visible in the outputs)."""
  import torch  # pylint: disable=g-import-not-at-top
  model = _torch_cnn(0)
  bn = model[1]
  with torch.no_grad():
    bn.running_mean.copy_(torch.linspace(-0.2, 0.2, 8))
    bn.running_var.copy_(torch.linspace(0.5, 2.0, 8))
  return model.eval()


def torch_victim():
  """The torch CNN trained on the first 1,000 digits (about 1 s)."""
  x, y = _digits(1000)
  return train_torch(_torch_cnn(0), x, y, epochs=4, seed=0)


def torch_independent():
  """The same CNN, its own seed, trained on the other 797 digits."""
  x, y = _digits()
  return train_torch(_torch_cnn(1), x[1000:], y[1000:], epochs=6, seed=1)


def torch_reference():
  """The owner's own independent: the same CNN and recipe, another seed, on
  the other digits (a --reference_models entry)."""
  x, y = _digits()
  return train_torch(_torch_cnn(2), x[1000:], y[1000:], epochs=6, seed=2)


# --------------------------------------------------------------------------
# Keras 3 (JAX backend).

def keras_victim():
  """An untrained Keras CNN with BatchNormalization."""
  from uap_jax.adapters import keras_adapter  # pylint: disable=g-import-not-at-top
  keras = keras_adapter.import_keras()
  keras.utils.set_random_seed(0)
  return keras.Sequential([
      keras.Input((8, 8, 1)),
      keras.layers.Conv2D(8, 3, padding="same"),
      keras.layers.BatchNormalization(),
      keras.layers.ReLU(),
      keras.layers.Flatten(),
      keras.layers.Dense(NUM_CLASSES),
  ])
