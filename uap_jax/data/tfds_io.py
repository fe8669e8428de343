"""Reading and writing tensorflow-datasets sets as array_record, without TF.

Reading goes through ``tfds.data_source`` (random access over array_record
files, images decoded with Pillow). Writing uses tfds's own ``AdhocBuilder``
(the machinery behind ``tfds.dataset_builders.store_as_tfds_dataset``) with
images pre-encoded as PNG by Pillow, so the output is a regular prepared tfds
data set (``dataset_info.json``, ``features.json``, ``*.array_record-*``).

Two things in tfds 4.9.10 need TensorFlow or a py<3.9 backport when
TensorFlow is absent, and are side-stepped here:
  * ``DatasetBuilder.code_path`` touches ``importlib_resources`` (only a
    dependency for Python < 3.9): the builder below has no code path.
  * ``AdhocBuilder._split_generators`` checks ``isinstance(x, tf.data.Dataset)``
    and ``features.Image`` encodes arrays with ``tf.image.encode_png``: splits
    are given as plain iterables and images as PNG bytes.
"""

from __future__ import annotations

import io
import pathlib
import re
import tempfile

import numpy as np

from uap_jax.data import dataset as dataset_lib
from uap_jax.data.dataset import Dataset

_CHUNK = 4096
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _prepare_help(name: str, data_dir: str) -> str:
  return (
      f"Prepare it once as array_record on a machine with TensorFlow and "
      f"internet: `tfds build {name} --data_dir={data_dir} "
      f"--file_format=array_record`, then copy {data_dir} here; or convert "
      f"arrays you have with uap_jax.data.write_tfds(dataset, '{name}', "
      f"'{data_dir}').")


def load_tfds(name: str, *, data_dir: str | None = None) -> Dataset:
  """Reads a prepared tfds image classification set through tfds.data_source.

  Never downloads. Uses the data set's supervised keys (default
  ``("image", "label")``) and its ``train`` and ``test`` splits.

  Args:
    name: tfds name, optionally ``name/config`` and ``:version``.
    data_dir: tfds data directory; tfds's default (``~/tensorflow_datasets``
      or ``$TFDS_DATA_DIR``) when None.

  Returns:
    ``Dataset`` named ``"tfds:NAME"``.

  Raises:
    ValueError: not found / not prepared / not array_record / not an image
      classification set; the message says how to prepare it.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  shown_dir = str(data_dir) if data_dir else str(tfds.core.constants.DATA_DIR)
  where = f"tfds data set {name!r} in {shown_dir}"
  info = _prepared_builder(name, data_dir, where, shown_dir).info
  image_key, label_key, class_names = _classification_keys(info, where)
  sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir,
                             download=False)
  arrays = {split: _read_split(source, image_key, label_key, f"{where} {split}")
            for split, source in zip(("train", "test"), sources)}
  if class_names is None:
    class_names = dataset_lib.default_class_names(arrays["train"][1],
                                                  arrays["test"][1])
  return Dataset(f"tfds:{name}", *arrays["train"], *arrays["test"],
                 class_names)


def _prepared_builder(name: str, data_dir: str | None, where: str, shown_dir: str):
  """The tfds builder of a prepared, array_record (or parquet) data set."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import file_adapters  # pylint: disable=g-import-not-at-top
  if data_dir is not None and not pathlib.Path(data_dir).is_dir():
    raise ValueError(f"tfds data_dir {data_dir} does not exist; give the "
                     "folder that holds prepared tfds data sets. "
                     + _prepare_help(name, data_dir))
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    # DatasetNotFoundError, bad version/config strings, ...
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise ValueError(f"Cannot find {where} ({type(e).__name__}: "
                     f"{first_line}). " + _prepare_help(name, shown_dir)) from e
  if not builder.is_prepared():
    raise ValueError(f"{where} is not prepared (nothing at {builder.data_dir}). "
                     + _prepare_help(name, shown_dir))
  file_format = builder.info.file_format
  if file_format not in (file_adapters.FileFormat.ARRAY_RECORD,
                         file_adapters.FileFormat.PARQUET):
    raise ValueError(
        f"{where} is stored as {file_format}, which tfds.data_source cannot "
        f"read; re-prepare it as array_record: `tfds build {name} "
        f"--data_dir={shown_dir} --file_format=array_record`, or convert an "
        f"existing copy with `tfds convert_format --dataset_dir="
        f"{builder.data_dir} --out_file_format=array_record`.")
  return builder


def _classification_keys(info, where: str) -> tuple[str, str, list[str] | None]:
  """Image and label keys of an image classification set, and class names."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  image_key, label_key = info.supervised_keys or ("image", "label")
  if not (isinstance(image_key, str) and isinstance(label_key, str)):
    raise ValueError(f"{where}: supervised keys {info.supervised_keys} are not "
                     "a single (image, label) pair; use an image "
                     "classification data set.")
  features = info.features
  if image_key not in features or label_key not in features or not isinstance(
      features[image_key], tfds.features.Image):
    raise ValueError(f"{where}: needs an Image feature {image_key!r} and a "
                     f"label {label_key!r}, has {list(features.keys())}; use an "
                     "image classification data set.")
  missing = [s for s in ("train", "test") if s not in info.splits]
  if missing:
    raise ValueError(f"{where}: has splits {list(info.splits.keys())} but "
                     f"needs 'train' and 'test' (missing {missing}); write the "
                     "split you want as 'test' with write_tfds, or use npz:.")
  label_feature = features[label_key]
  if isinstance(label_feature, tfds.features.ClassLabel):
    return image_key, label_key, list(label_feature.names)
  return image_key, label_key, None


def _read_split(source, image_key: str, label_key: str,
                what: str) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images and int32 labels of one split, read in chunks."""
  images, labels = [], []
  for start in range(0, len(source), _CHUNK):
    batch = source.__getitems__(range(start, min(start + _CHUNK, len(source))))
    images.extend(ex[image_key] for ex in batch)
    labels.extend(ex[label_key] for ex in batch)
  if len({im.shape for im in images}) > 1:
    raise ValueError(f"{what} images have different shapes; "
                     "resize them to one size (e.g. a resized tfds config).")
  x = np.stack(images) if images else np.zeros((0, 1, 1, 1), np.uint8)
  return (dataset_lib.as_uint8_images(x, what=what),
          dataset_lib.as_int32_labels(np.asarray(labels), what=what))


def _png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
      buffer, format="PNG")
  return buffer.getvalue()


def _builder_class():
  """tfds's AdhocBuilder, minus the two TensorFlow-only code paths."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.dataset_builders import adhoc_builder  # pylint: disable=g-import-not-at-top

  class ArrayBuilder(adhoc_builder.AdhocBuilder, skip_registration=True):
    """AdhocBuilder over plain iterables of (key, example)."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):  # pylint: disable=invalid-name
      return None

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, description=self._description,
          features=self._feature_spec, supervised_keys=("image", "label"),
          disable_shuffling=self._disable_shuffling)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples_iterator(examples)
              for split, examples in self._split_datasets.items()}

  return ArrayBuilder


def write_tfds(dataset: Dataset, name: str, data_dir: str) -> pathlib.Path:
  """Writes a ``Dataset`` as a prepared tfds data set (array_record).

  Afterwards ``load_dataset(f"tfds:{name}", data_dir=data_dir)`` (and
  ``tfds.data_source(name, data_dir=data_dir)``) reads it back. Images are
  stored losslessly as PNG in an ``image`` feature, labels as a ``label``
  ClassLabel with the class names; the example order is kept. When ``name`` is
  a registered tfds data set (e.g. ``cifar10``), its version is used so that
  tfds finds the files under that name.

  Args:
    dataset: the data set to store.
    name: tfds name, lowercase snake_case (e.g. ``"cifar10_10k"``).
    data_dir: tfds data directory to write into (created if missing).

  Returns:
    The folder holding the written version, ``data_dir/name/version``.

  Raises:
    ValueError: bad name, or the data set is already there.
  """
  if not isinstance(dataset, Dataset):
    raise ValueError(f"write_tfds needs a uap_jax.data.Dataset, got "
                     f"{type(dataset).__name__}; build one with "
                     "load_dataset(...) or Dataset(...).")
  if not isinstance(name, str) or not _NAME_RE.match(name):
    raise ValueError(f"tfds name {name!r} must be lowercase snake_case "
                     "([a-z][a-z0-9_]*), e.g. 'cifar10_10k'.")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  version = "1.0.0"
  try:
    registered = tfds.builder_cls(name)
  except Exception:  # pylint: disable=broad-except
    registered = None
  if registered is not None:
    if registered.BUILDER_CONFIGS:
      raise ValueError(f"{name!r} is a registered tfds data set with configs; "
                       "write under another name, e.g. f'{name}_local'.")
    version = str(registered.VERSION)
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=dataset.image_shape, dtype=np.uint8),
      "label": tfds.features.ClassLabel(names=dataset.class_names),
  })

  def examples(x, y):
    for i in range(x.shape[0]):
      yield i, {"image": _png(x[i]), "label": int(y[i])}

  split_datasets = {
      "train": examples(dataset.x_train, dataset.y_train),
      "test": examples(dataset.x_test, dataset.y_test),
  }
  pathlib.Path(data_dir).mkdir(parents=True, exist_ok=True)
  builder = _builder_class()(
      name=name, version=version, features=features,
      split_datasets=split_datasets, data_dir=data_dir,
      description=f"Written by uap_jax.data.write_tfds from {dataset.name}.",
      disable_shuffling=True)
  if builder.is_prepared():
    raise ValueError(f"A tfds data set {name!r} version {version} already "
                     f"exists at {builder.data_dir}; delete that folder or "
                     "pick another name or data_dir.")
  # Downloads folder in a scratch dir: nothing is downloaded, and data_dir
  # should hold only the data set.
  with tempfile.TemporaryDirectory() as scratch:
    builder.download_and_prepare(download_dir=scratch,
                                 file_format="array_record")
  return pathlib.Path(builder.data_dir)
