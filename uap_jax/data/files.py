"""Data sets from the user's own files: ``npz:``, ``folder:`` and ``idx:`` specs.

* ``npz:PATH`` - x_train, y_train, x_test, y_test (+ optional class_names).
* ``folder:PATH`` - PATH/{train,test}/<class>/*.png|jpg|jpeg.
* ``idx:DIR`` - MNIST-style IDX files (optionally .gz); Debian's
  Fashion-MNIST is read through this too.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import zipfile
import zlib

import numpy as np

from uap_jax.data import dataset as dataset_lib
from uap_jax.data.dataset import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FASHION_MNIST_CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
    "Sneaker", "Bag", "Ankle boot"
]


def _require(path: str, kind: str, spec_prefix: str) -> pathlib.Path:
  p = pathlib.Path(path)
  ok = p.is_dir() if kind == "directory" else p.is_file()
  if not ok:
    raise ValueError(
        f"'{spec_prefix}:{path}': no such {kind}. Check the path (it is "
        f"relative to the working directory {os.getcwd()}).")
  return p


def load_npz(path: str) -> Dataset:
  """Reads x_train/y_train/x_test/y_test (+ optional class_names) from an .npz.

  Images may be uint8, integers in 0..255 or floats in [0, 1], NHWC or NHW.

  Args:
    path: the .npz file.

  Returns:
    ``Dataset`` named ``"npz:PATH"``.
  """
  p = _require(path, "file", "npz")
  name = f"npz:{path}"
  write_it = ("write it with np.savez(path, x_train=..., y_train=..., x_test=..., "
              "y_test=...)")
  arrays = _read_npz_arrays(p, name, write_it)
  missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
  if missing:
    raise ValueError(
        f"{name}: missing arrays {missing} (has {sorted(arrays)}); write it "
        "with np.savez(path, x_train=..., y_train=..., x_test=..., "
        "y_test=..., class_names=...).")
  x_train = dataset_lib.as_uint8_images(arrays["x_train"], what=f"{name} x_train")
  x_test = dataset_lib.as_uint8_images(arrays["x_test"], what=f"{name} x_test")
  y_train = dataset_lib.as_int32_labels(arrays["y_train"], what=f"{name} y_train")
  y_test = dataset_lib.as_int32_labels(arrays["y_test"], what=f"{name} y_test")
  if "class_names" in arrays:
    class_names = [str(c) for c in np.asarray(arrays["class_names"]).ravel()]
  else:
    class_names = dataset_lib.default_class_names(y_train, y_test, what=name)
  return Dataset(name, x_train, y_train, x_test, y_test, class_names)


def _read_npz_arrays(p: pathlib.Path, name: str, write_it: str) -> dict[str, np.ndarray]:
  """Every array of the ``.npz`` at ``p``; one message per way it is unreadable.

  numpy reads a file that is neither a zip nor an ``.npy`` as a pickle and,
  with pickles refused, blames "pickled data", which misleads: the file's
  first bytes say what it is, so they are looked at first.

  Args:
    p: the file (it exists).
    name: the data set's spec, for messages.
    write_it: how to write a good file, for messages.

  Returns:
    key -> array.

  Raises:
    ValueError: not an .npz, truncated, a corrupted member, object arrays.
  """
  with open(p, "rb") as f:
    head = f.read(6)
  if head.startswith(b"\x93NUMPY"):
    raise ValueError(f"{name}: the file is a single .npy array, not an .npz archive of "
                     f"the named arrays x_train, y_train, x_test, y_test; {write_it}.")
  if not head.startswith(b"PK"):
    what = "empty" if not head else f"a file starting with {head[:4]!r}"
    raise ValueError(f"{name}: the file is not an .npz file (an .npz is a zip archive; "
                     f"this one is {what}); {write_it}.")
  try:
    with np.load(p, allow_pickle=False) as archive:
      return {k: archive[k] for k in archive.files}
  except zipfile.BadZipFile as e:
    reason = "a member is corrupted" if "CRC" in str(e) else "it is truncated or damaged"
    raise ValueError(f"{name}: the file cannot be read: {reason} ({e}); copy it "
                     f"again, or {write_it}.") from e
  except (zlib.error, EOFError, OSError) as e:
    raise ValueError(f"{name}: the file cannot be read: a member is corrupted ({e}); "
                     f"copy it again, or {write_it}.") from e
  except ValueError as e:
    if "allow_pickle" in str(e):
      raise ValueError(f"{name}: the file holds object (pickled) arrays, which are not "
                       "loaded for safety; store numeric arrays (class_names as "
                       f"strings): {write_it}.") from e
    raise ValueError(f"{name}: the file cannot be read ({e}); {write_it}.") from e


def _read_image(path: pathlib.Path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      image.load()
      return image.copy()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"Cannot read image {path} ({e}); delete or re-save "
                     "it as PNG/JPEG.") from e


def load_folder(path: str) -> Dataset:
  """Reads an image-folder tree PATH/{train,test}/<class>/*.png|jpg|jpeg.

  Class names are the sorted sub-folder names of ``train``; ``test`` may use a
  subset of them. Images are grayscale (C=1) when every file is grayscale,
  otherwise all are converted to RGB (alpha dropped). All must share one size.

  Args:
    path: the root folder.

  Returns:
    ``Dataset`` named ``"folder:PATH"``.
  """
  root = _require(path, "directory", "folder")
  name = f"folder:{path}"
  layout_help = ("lay it out as PATH/train/<class>/*.png and "
                 "PATH/test/<class>/*.png")
  split_dirs = {s: root / s for s in ("train", "test")}
  for split, d in split_dirs.items():
    if not d.is_dir():
      raise ValueError(f"{name}: no '{split}' sub-folder; {layout_help}.")
  class_names = sorted(d.name for d in split_dirs["train"].iterdir()
                       if d.is_dir())
  if not class_names:
    raise ValueError(f"{name}: train/ has no class sub-folders; {layout_help}.")
  test_classes = sorted(d.name for d in split_dirs["test"].iterdir()
                        if d.is_dir())
  extra = sorted(set(test_classes) - set(class_names))
  if extra:
    raise ValueError(f"{name}: test/ has classes {extra} that train/ lacks; "
                     "add them to train/ or remove them from test/.")
  files = {}
  for split, d in split_dirs.items():
    files[split] = [(f, label) for label, c in enumerate(class_names)
                    if (d / c).is_dir()
                    for f in sorted((d / c).iterdir())
                    if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    if not files[split]:
      raise ValueError(f"{name}: no .png/.jpg images under {split}/; "
                       f"{layout_help}.")
  images = {s: [_read_image(f) for f, _ in fs] for s, fs in files.items()}
  everything = images["train"] + images["test"]
  gray = all(im.mode in ("1", "L", "LA", "I", "I;16", "F") for im in everything)
  sizes = {im.size for im in everything}
  if len(sizes) > 1:
    raise ValueError(f"{name}: images have different sizes {sorted(sizes)[:4]}; "
                     "resize them all to one size first.")

  def to_array(im):
    if gray:
      if im.mode in ("I", "I;16", "F"):
        raise ValueError(f"{name}: {im.mode} images (16-bit or float) are not "
                         "supported; save them as 8-bit PNG.")
      return np.asarray(im.convert("L"), np.uint8)[..., None]
    return np.asarray(im.convert("RGB"), np.uint8)

  arrays = {s: np.stack([to_array(im) for im in ims]) for s, ims in
            images.items()}
  labels = {s: np.asarray([l for _, l in fs], np.int32) for s, fs in
            files.items()}
  return Dataset(name, arrays["train"], labels["train"], arrays["test"],
                 labels["test"], class_names)


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4",
               0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Parses one IDX file (gzip-compressed when the name ends in .gz).

  Args:
    path: the file.

  Returns:
    The array it holds, in native byte order.
  """
  path = pathlib.Path(path)
  data = path.read_bytes()
  if path.suffix == ".gz":
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError) as e:
      raise ValueError(f"{path}: not a valid gzip file ({e}); re-download "
                       "or gunzip it.") from e
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise ValueError(f"{path}: not an IDX file (bad magic number "
                     f"{data[:4].hex()}); give the MNIST-style "
                     "*-idx3-ubyte / *-idx1-ubyte files.")
  ndim = data[3]
  header = 4 + 4 * ndim
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
               for i in range(ndim))
  dtype = np.dtype(_IDX_DTYPES[data[2]])
  expected = header + int(np.prod(dims)) * dtype.itemsize
  if len(data) != expected:
    raise ValueError(f"{path}: IDX header says shape {dims} ({expected} bytes) "
                     f"but the file has {len(data)} bytes; the file is "
                     "truncated or corrupt, re-download it.")
  array = np.frombuffer(data, dtype, offset=header).reshape(dims)
  return array.astype(dtype.newbyteorder("="))


def idx_files(directory: str, missing_ok: bool = False):
  """Finds {train,t10k}-{images,labels} IDX files in ``directory``."""
  d = pathlib.Path(directory)
  if not d.is_dir():
    if missing_ok:
      return None
    raise ValueError(f"'idx:{directory}': no such directory. Check the path "
                     f"(relative to {os.getcwd()}).")
  found = {}
  for split in ("train", "t10k"):
    for kind, ndim in (("images", 3), ("labels", 1)):
      candidates = [d / f"{split}-{kind}{sep}idx{ndim}-ubyte{gz}"
                    for sep in ("-", ".") for gz in ("", ".gz")]
      hit = next((c for c in candidates if c.is_file()), None)
      if hit is None:
        if missing_ok:
          return None
        raise ValueError(
            f"'idx:{directory}': missing {candidates[0].name}[.gz]; the "
            "directory needs train-images-idx3-ubyte, train-labels-idx1-ubyte, "
            "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each "
            "optionally .gz).")
      found[(split, kind)] = hit
  return found


def load_idx(directory: str, *, name: str | None = None) -> Dataset:
  """Reads MNIST-style IDX files: train/t10k images (idx3) and labels (idx1).

  Class names are Fashion-MNIST's when the path mentions "fashion", otherwise
  the label values as strings.

  Args:
    directory: folder holding the four files (plain or .gz).
    name: data set name; default ``"idx:DIRECTORY"``.

  Returns:
    ``Dataset`` with [N, H, W, 1] uint8 images.
  """
  files = idx_files(directory)
  name = name or f"idx:{directory}"
  arrays = {}
  for (split, kind), f in files.items():
    a = read_idx(f)
    if kind == "images":
      if a.ndim != 3:
        raise ValueError(f"{f}: image IDX file must be 3-d [N, H, W], got "
                         f"shape {a.shape}; give the *-images-idx3-ubyte file.")
      a = dataset_lib.as_uint8_images(a, what=str(f))
    else:
      a = dataset_lib.as_int32_labels(a, what=str(f))
    arrays[(split, kind)] = a
  y_train, y_test = arrays[("train", "labels")], arrays[("t10k", "labels")]
  if "fashion" in str(directory).lower() and max(
      int(y_train.max()), int(y_test.max())) < len(FASHION_MNIST_CLASS_NAMES):
    class_names = list(FASHION_MNIST_CLASS_NAMES)
  else:
    class_names = dataset_lib.default_class_names(y_train, y_test, what=name)
  return Dataset(name, arrays[("train", "images")], y_train,
                 arrays[("t10k", "images")], y_test, class_names)
