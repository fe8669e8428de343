"""Shared test fixtures: tiny data and the location of the optional shared data."""

import os
import pathlib
import tempfile

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CIFAR10_10K = SHARED_DATA / "cifar10_10k.npz"


@pytest.fixture
def digits_arrays():
  """sklearn digits as uint8 NHWC images in 0..255 and int32 labels."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  x = np.round(d.images[..., None] * 255.0 / 16.0).astype(np.uint8)
  return x, d.target.astype(np.int32)


def requires_cifar10_10k():
  return pytest.mark.skipif(not CIFAR10_10K.exists(),
                            reason=f"{CIFAR10_10K} not present (optional shared data)")


os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# One persistent XLA compilation cache for the whole suite, its xdist workers
# and the command-line runs they start (which inherit the environment): the
# suite compiles the same tiny programs in many processes. Set before any
# test module imports jax.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"uap_jax_tests_xla_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
