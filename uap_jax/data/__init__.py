"""Data layer: image classification sets as uint8 NHWC arrays, by spec.

    ds = load_dataset("mnist5k")          # or "digits", "tfds:cifar10", ...
    parts = partition(ds.y_train, {"victim": 0.5, "attacker": 0.25,
                                   "independent": 0.25}, seed=0)

See ``sources`` for the specs (``files`` reads the npz, folder and IDX ones),
``tfds_io`` for tfds reading/writing.
"""

from uap_jax.data.dataset import as_int32_labels
from uap_jax.data.dataset import as_uint8_images
from uap_jax.data.dataset import Dataset
from uap_jax.data.dataset import to_float
from uap_jax.data.dataset import validate
from uap_jax.data.partition import load_partition
from uap_jax.data.partition import partition
from uap_jax.data.partition import save_partition
from uap_jax.data.sources import DEBIAN_FASHION_MNIST_DIR
from uap_jax.data.files import FASHION_MNIST_CLASS_NAMES
from uap_jax.data.sources import load_dataset
from uap_jax.data.files import read_idx
from uap_jax.data.sources import stratified_holdout


def write_tfds(dataset, name, data_dir):
  """See ``uap_jax.data.tfds_io.write_tfds`` (imports tfds only when called)."""
  from uap_jax.data import tfds_io  # pylint: disable=g-import-not-at-top
  return tfds_io.write_tfds(dataset, name, data_dir)


__all__ = [
    "Dataset", "load_dataset", "partition", "save_partition",
    "load_partition", "write_tfds", "as_uint8_images", "as_int32_labels",
    "to_float", "validate", "read_idx", "stratified_holdout",
    "DEBIAN_FASHION_MNIST_DIR", "FASHION_MNIST_CLASS_NAMES",
]
