"""The in-memory image classification data set every source returns.

Images are always uint8 NHWC in 0..255 with 1 or 3 channels, labels int32 in
``[0, num_classes)``. Sources convert their own formats to this (see
``as_uint8_images`` / ``as_int32_labels``); ``Dataset.__post_init__`` is the one
place that checks the result, so every consumer can rely on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

_SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A train/test image classification data set held in host memory.

  Attributes:
    name: where it came from, e.g. ``"mnist5k"`` or ``"npz:/path/x.npz"``.
    x_train: uint8 array [N, H, W, C], C in {1, 3}, pixel values 0..255.
    y_train: int32 array [N] of class indices.
    x_test: uint8 array [M, H, W, C] with the same H, W, C as ``x_train``.
    y_test: int32 array [M].
    class_names: one name per class; ``num_classes == len(class_names)``.
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  class_names: list[str]

  def __post_init__(self):
    # Frozen: normalise the container type of class_names via object.__setattr__.
    if isinstance(self.class_names, (str, bytes)) or not isinstance(
        self.class_names, Sequence | np.ndarray):
      raise ValueError(
          f"Dataset {self.name!r}: class_names must be a list of strings, got "
          f"{type(self.class_names).__name__}; pass e.g. "
          "[str(i) for i in range(num_classes)].")
    object.__setattr__(self, "class_names",
                       [str(c) for c in list(self.class_names)])
    validate(self)

  @property
  def num_classes(self) -> int:
    """Number of classes (``len(class_names)``)."""
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """``(H, W, C)`` of one image."""
    return tuple(int(d) for d in self.x_train.shape[1:])

  @property
  def num_train(self) -> int:
    """Number of training examples."""
    return int(self.x_train.shape[0])

  @property
  def num_test(self) -> int:
    """Number of test examples."""
    return int(self.x_test.shape[0])

  def channel_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``x_train`` in [0, 1] units.

    Models normalise their [0, 1] inputs with these. A channel that is constant
    over the training set would give std 0; it is floored at 1e-3 so that the
    normalisation stays finite.

    Returns:
      ``(mean, std)``, two tuples of C floats.
    """
    x = self.x_train.reshape(-1, self.x_train.shape[-1])
    # float64 accumulation: uint8 sums over 50k 32x32 images overflow float32
    # precision noticeably.
    mean = x.mean(axis=0, dtype=np.float64) / 255.0
    sq = np.square(x, dtype=np.float64).mean(axis=0) / 255.0**2
    std = np.sqrt(np.maximum(sq - mean**2, 0.0))
    std = np.maximum(std, 1e-3)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)

  def class_counts(self, split: str = "train") -> np.ndarray:
    """Examples per class in ``split`` ("train" or "test").

    Returns:
      int64 array [num_classes].
    """
    if split not in _SPLITS:
      raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    labels = self.y_train if split == "train" else self.y_test
    return np.bincount(labels, minlength=self.num_classes)

  def summary(self) -> str:
    """One line describing the data set, for logs."""
    return (f"{self.name}: train {self.x_train.shape}, test {self.x_test.shape}, "
            f"{self.num_classes} classes")


def validate(dataset: Dataset) -> None:
  """Checks every invariant of a ``Dataset``; raises ValueError naming the fix.

  Args:
    dataset: the data set to check.

  Raises:
    ValueError: on the first violated invariant.
  """
  where = f"Dataset {dataset.name!r}"
  shapes = {}
  for split in _SPLITS:
    x = getattr(dataset, f"x_{split}")
    y = getattr(dataset, f"y_{split}")
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
      raise ValueError(
          f"{where}: x_{split} and y_{split} must be numpy arrays, got "
          f"{type(x).__name__} and {type(y).__name__}; wrap them with "
          "np.asarray(...).")
    if x.ndim != 4:
      raise ValueError(
          f"{where}: x_{split} must be 4-d NHWC [N, H, W, C], got shape "
          f"{x.shape}; add a channel axis with x[..., None] for grayscale "
          "images.")
    if x.shape[-1] not in (1, 3):
      hint = (" It looks channels-first (NCHW): transpose with "
              "x.transpose(0, 2, 3, 1).") if x.shape[1] in (1, 3) else ""
      raise ValueError(
          f"{where}: x_{split} must have 1 or 3 channels in the last axis, got "
          f"shape {x.shape}.{hint}")
    if x.dtype != np.uint8:
      raise ValueError(
          f"{where}: x_{split} must be uint8 in 0..255, got {x.dtype}; convert "
          "with uap_jax.data.as_uint8_images(x) (scales [0, 1] floats).")
    if y.ndim != 1:
      raise ValueError(
          f"{where}: y_{split} must be 1-d class indices, got shape {y.shape}; "
          "for one-hot labels use y.argmax(-1).")
    if y.dtype != np.int32:
      raise ValueError(
          f"{where}: y_{split} must be int32, got {y.dtype}; convert with "
          "uap_jax.data.as_int32_labels(y).")
    if x.shape[0] != y.shape[0]:
      raise ValueError(
          f"{where}: x_{split} has {x.shape[0]} images but y_{split} has "
          f"{y.shape[0]} labels; give one label per image.")
    if x.shape[0] == 0:
      raise ValueError(
          f"{where}: the {split} split is empty; every data set needs at least "
          "one train and one test example.")
    shapes[split] = x.shape[1:]
  if shapes["train"] != shapes["test"]:
    raise ValueError(
        f"{where}: train images are {shapes['train']} but test images are "
        f"{shapes['test']}; resize them to one (H, W, C).")
  num_classes = len(dataset.class_names)
  if num_classes < 2:
    raise ValueError(
        f"{where}: needs at least 2 classes, got class_names="
        f"{dataset.class_names}; pass one name per class.")
  if len(set(dataset.class_names)) != num_classes:
    raise ValueError(
        f"{where}: class_names has duplicates: {dataset.class_names}; make "
        "them unique.")
  for split in _SPLITS:
    y = getattr(dataset, f"y_{split}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
      raise ValueError(
          f"{where}: y_{split} must lie in [0, {num_classes}) for "
          f"{num_classes} class names, got labels in [{lo}, {hi}]; pass one "
          "class name per class or remap the labels to 0..num_classes-1.")


def as_uint8_images(images: np.ndarray, *, what: str = "images",
                    max_value: float | None = None) -> np.ndarray:
  """Converts an image array to uint8 NHWC in 0..255.

  Accepts uint8 as is; other integer types whose values lie in 0..255; floats in
  [0, 1] (scaled by 255); and, with ``max_value``, any numeric range
  [0, max_value] (e.g. 16 for scikit-learn's digits). A 3-d array [N, H, W] is
  taken as grayscale and gets a channel axis.

  Args:
    images: array [N, H, W] or [N, H, W, C].
    what: name used in error messages.
    max_value: the value that maps to 255; None infers it from the dtype.

  Returns:
    uint8 array [N, H, W, C].

  Raises:
    ValueError: a non-numeric dtype, or values outside the accepted range.
  """
  x = np.asarray(images)
  if x.ndim == 3:
    x = x[..., None]
  if x.dtype == np.uint8 and max_value is None:
    return x
  if x.dtype.kind not in "uif" or x.dtype == np.bool_:
    raise ValueError(
        f"{what}: pixel dtype {x.dtype} is not numeric; store images as uint8 "
        "0..255 (or float 0..1).")
  if x.size == 0:
    return x.astype(np.uint8)
  lo, hi = float(x.min()), float(x.max())
  if max_value is not None:
    scale = 255.0 / float(max_value)
    bound = float(max_value)
  elif x.dtype.kind == "f":
    scale, bound = 255.0, 1.0
  else:
    scale, bound = 1.0, 255.0
  if lo < 0 or hi > bound or not np.isfinite(hi):
    raise ValueError(
        f"{what}: {x.dtype} pixel values must lie in [0, {bound:g}], got "
        f"[{lo:g}, {hi:g}]; store images as uint8 0..255"
        + (" or floats in [0, 1]" if x.dtype.kind == "f" else "") + ".")
  if scale == 1.0:
    return x.astype(np.uint8)
  return np.clip(np.rint(x.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def as_int32_labels(labels: np.ndarray, *, what: str = "labels") -> np.ndarray:
  """Converts integer class indices (any int dtype, or integral floats) to int32.

  Args:
    labels: array [N].
    what: name used in error messages.

  Returns:
    int32 array [N].

  Raises:
    ValueError: not 1-d, or non-integral values.
  """
  y = np.asarray(labels)
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.ndim != 1:
    raise ValueError(
        f"{what}: labels must be 1-d class indices, got shape {y.shape}; for "
        "one-hot labels store y.argmax(-1).")
  if y.dtype.kind in "iu":
    if y.size and (int(y.min()) < np.iinfo(np.int32).min
                   or int(y.max()) > np.iinfo(np.int32).max):
      raise ValueError(f"{what}: label values do not fit in int32; remap them "
                       "to 0..num_classes-1.")
    return y.astype(np.int32)
  if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.rint(y)):
    return y.astype(np.int32)
  raise ValueError(
      f"{what}: labels must be integer class indices, got dtype {y.dtype}; "
      "store them as integers 0..num_classes-1.")


def default_class_names(*label_arrays: np.ndarray, what: str = "labels"
                        ) -> list[str]:
  """``["0", "1", ...]`` for labels that are plainly class indices.

  Without class names the label values are the classes, so they must be
  0..C-1 with every class in the training labels (the first array), and at
  least two training images per class on average; anything else (labels up
  to 1000 over ten digits, say) would silently build a task with classes that
  no model can learn.

  Args:
    *label_arrays: the training labels first, then any others (test).
    what: the data set, for messages.

  Returns:
    One name per class, the class index as a string.

  Raises:
    ValueError: naming the labels found and the fix (give class names, or
      relabel to 0..C-1).
  """
  train = np.asarray(label_arrays[0]) if label_arrays else np.zeros(0, int)
  values = np.unique(np.concatenate([np.asarray(y).ravel() for y in label_arrays])
                     ) if label_arrays else np.zeros(0, int)
  top = int(values.max()) if values.size else -1
  fix = ("give class_names (one per class, e.g. class_names=[...] in the .npz) "
         "or relabel to 0..C-1, e.g. np.unique(np.concatenate([y_train, "
         "y_test]), return_inverse=True)[1] split back into train and test")
  in_train = np.unique(train)
  found = (f"found {in_train.size} distinct training labels {_some(in_train)}"
           + (f" (all labels up to {top})" if in_train.size and top > in_train[-1]
              else ""))
  if values.size and int(values.min()) < 0:
    raise ValueError(f"{what}: no class names and negative labels ({found}); "
                     f"{fix}.")
  missing = np.setdiff1d(np.arange(top + 1), in_train)
  if missing.size:
    raise ValueError(
        f"{what}: no class names, so the labels must be 0..C-1 with every class "
        f"in the training labels, but {found}: {missing.size} of 0..{top} have "
        f"no training image ({_some(missing)}), which would build a "
        f"{top + 1}-class task; {fix}.")
  if top + 1 > max(train.size // 2, 2):
    raise ValueError(
        f"{what}: {top + 1} classes ({found}) for {train.size} training images, "
        f"fewer than 2 per class: not a task a model can learn; {fix}.")
  return [str(i) for i in range(max(top + 1, 0))]


def _some(values: np.ndarray) -> str:
  """A short display of sorted integers: all of them, or the ends."""
  shown = [int(v) for v in values]
  if len(shown) <= 8:
    return str(shown)
  return f"[{', '.join(map(str, shown[:5]))}, ..., {', '.join(map(str, shown[-2:]))}]"


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 in [0, 1], the models' input convention."""
  return np.asarray(images, np.float32) / np.float32(255.0)
