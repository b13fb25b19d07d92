"""Tests for jvae.io.datasets and jvae.io.download, on tiny IDX and .mat files made here.

Each fixture writes a small mirror of the canonical files, points the loader's base URL at it
(``file://``) and patches its ``*_FILES`` constants to the tiny files' sizes and digests.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import shutil
import struct
import subprocess

import numpy as np
import pytest
import scipy.io

from jvae.io import data, datasets, download
from jvae.io.download import Remote

N_TRAIN, N_TEST = 15, 5


# tiny files, written independently of the loaders


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
  """The IDX encoding of ``array``: magic 0x0000TTNN, big-endian uint32 sizes, C-order data."""
  dtype = {0x08: ">u1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
  head = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
  return head + np.ascontiguousarray(array, dtype).tobytes()


def gz(raw: bytes) -> bytes:
  return gzip.compress(raw, mtime=0)


def digits_like(rng, n: int) -> np.ndarray:
  """uint8 (n, 28, 28) images: zero background, ~20% of pixels inked at random grey levels."""
  ink = rng.random((n, 28, 28)) < 0.2
  return np.where(ink, rng.integers(1, 256, (n, 28, 28)), 0).astype(np.uint8)


def remote(path: pathlib.Path, **digest_kinds) -> Remote:
  raw = path.read_bytes()
  kinds = digest_kinds or {"sha256": True}
  return Remote(path.name, len(raw),
                sha256=hashlib.sha256(raw).hexdigest() if kinds.get("sha256") else None,
                md5=hashlib.md5(raw).hexdigest() if kinds.get("md5") else None,
                git_blob_sha1=hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()
                if kinds.get("git") else None)


def make_idx_mirror(src: pathlib.Path, seed: int) -> dict[str, np.ndarray]:
  """Writes the four gzipped IDX files of a tiny MNIST into ``src``; returns the arrays."""
  rng = np.random.default_rng(seed)
  arrays = {"train_images": digits_like(rng, N_TRAIN),
            "train_labels": rng.integers(0, 10, N_TRAIN).astype(np.uint8),
            "test_images": digits_like(rng, N_TEST),
            "test_labels": rng.integers(0, 10, N_TEST).astype(np.uint8)}
  src.mkdir(parents=True, exist_ok=True)
  for key, f in datasets.MNIST_FILES.items():
    (src / f.name).write_bytes(gz(idx_bytes(arrays[key])))
  return arrays


@pytest.fixture
def mnist(tmp_path, monkeypatch):
  """A file:// MNIST mirror of 15 training and 5 test images; returns (mirror dir, arrays)."""
  src = tmp_path / "mirror"
  arrays = make_idx_mirror(src, seed=0)
  monkeypatch.setattr(datasets, "MNIST_URL", src.as_uri())
  monkeypatch.setattr(datasets, "MNIST_FILES", {
      k: remote(src / f.name) for k, f in datasets.MNIST_FILES.items()})
  monkeypatch.setattr(datasets, "MNIST_VALID_SIZE", 3)
  return src, arrays


@pytest.fixture
def fashion(tmp_path, monkeypatch):
  src = tmp_path / "fashion-mirror"
  arrays = make_idx_mirror(src, seed=1)
  monkeypatch.setattr(datasets, "FASHION_MNIST_URL", src.as_uri())
  monkeypatch.setattr(datasets, "FASHION_MNIST_FILES", {
      k: remote(src / f.name) for k, f in datasets.MNIST_FILES.items()})
  return src, arrays


def grey(images: np.ndarray) -> np.ndarray:
  return images.reshape(len(images), -1).astype(np.float64) / 255


def draw(p: np.ndarray, seed: int) -> np.ndarray:
  return (np.random.default_rng(seed).random(p.shape) < p).astype(np.float32)


# IDX parsing


@pytest.mark.parametrize("code, array", [
    (0x08, np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)),
    (0x08, np.array([3, 1, 4, 1, 5], np.uint8)),
    (0x0C, np.array([[-7, 2**30], [0, 1]], np.int32)),
    (0x0E, np.array([0.5, -1.25, 1e300])),
])
def test_read_idx_round_trip(tmp_path, code, array):
  plain, packed = tmp_path / "a.idx", tmp_path / "a.idx.gz"
  plain.write_bytes(idx_bytes(array, code))
  packed.write_bytes(gz(idx_bytes(array, code)))
  for path in (plain, packed):
    got = datasets.read_idx(path)
    assert got.shape == array.shape and got.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(got, array)
  magic = (code << 8) | array.ndim
  np.testing.assert_array_equal(datasets.read_idx(packed, magic=magic), array)


@pytest.mark.parametrize("raw, says", [
    (idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-1], "1567 bytes of data, expected 1568 for"),
    (b"\x00\x00\x08", "3 bytes, too short for an IDX header"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
    (b"\x01\x02\x08\x03" + bytes(20), r"not an IDX file \(magic number 0x01020803\)"),
    (b"\x00\x00\x07\x01" + bytes(20), r"not an IDX file \(magic number 0x00000701\)"),
    (idx_bytes(np.zeros(4, np.uint8)), "IDX magic number 0x00000801, expected 0x00000803"),
], ids=["short data", "short", "short header", "foreign", "bad type", "labels for images"])
def test_read_idx_refuses(tmp_path, raw, says):
  path = tmp_path / "x-idx3-ubyte.gz"
  path.write_bytes(gz(raw))
  with pytest.raises(data.DataIntegrityError, match=f"^{path}: {says}"):
    datasets.read_idx(path, magic=0x00000803)


def test_read_idx_not_gzip(tmp_path):
  path = tmp_path / "x.gz"
  path.write_bytes(idx_bytes(np.zeros(3, np.uint8)))
  with pytest.raises(data.DataIntegrityError, match="not a readable gzip file"):
    datasets.read_idx(path)


def test_corrupt_magic_in_verified_file_refused(tmp_path, mnist, monkeypatch):
  src, arrays = mnist
  f = datasets.MNIST_FILES["test_labels"]
  (src / f.name).write_bytes(gz(idx_bytes(arrays["test_images"])))  # images as labels
  monkeypatch.setitem(datasets.MNIST_FILES, "test_labels", remote(src / f.name))
  with pytest.raises(data.DataIntegrityError, match="t10k-labels.*expected 0x00000801"):
    datasets.load_mnist_dynamic(tmp_path / "cache")


# MNIST, dynamically binarized


def test_mnist_dynamic(tmp_path, mnist, monkeypatch):
  _, a = mnist
  cache = tmp_path / "cache"
  ds = data.load("mnist-dynamic", data_dir=cache)
  assert ds.name == "mnist-dynamic" and ds.binarize == "dynamic"
  assert ds.event_shape == (784,) and ds.image_shape == (28, 28)
  assert [x.shape for x in ds[1:4]] == [(12, 784), (3, 784), (5, 784)]
  assert all(x.dtype == np.float32 for x in ds[1:4])
  g_train, g_test = grey(a["train_images"]), grey(a["test_images"])
  np.testing.assert_allclose(ds.train, g_train[:12], rtol=1e-6)
  assert ds.train.min() == 0 and ds.train.max() <= 1 and len(np.unique(ds.train)) > 2
  np.testing.assert_array_equal(ds.valid, draw(g_train[12:], 1))
  np.testing.assert_array_equal(ds.test, draw(g_test, 0))
  for y, want in zip(ds.labels, (a["train_labels"][:12], a["train_labels"][12:],
                                 a["test_labels"]), strict=True):
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, want)
  assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(
      f.name for f in datasets.MNIST_FILES.values())
  monkeypatch.setattr(datasets, "MNIST_URL", (tmp_path / "nowhere").as_uri())
  again = datasets.load_mnist_dynamic(cache)  # Downloaded once; verified, never fetched again.
  for x, y in zip(ds[1:4], again[1:4], strict=True):
    np.testing.assert_array_equal(x, y)


def test_fixed_draws_deterministic_and_binary(tmp_path, mnist):
  first = datasets.load_mnist_dynamic(tmp_path)
  second = datasets.load_mnist_dynamic(tmp_path)
  burda = datasets.load_mnist_dynamic(tmp_path, valid_size=1)
  for x in (first.valid, first.test):
    assert set(np.unique(x)) <= {0.0, 1.0}
  np.testing.assert_array_equal(first.test, second.test)
  np.testing.assert_array_equal(first.valid, second.valid)
  np.testing.assert_array_equal(first.test, burda.test)  # The test draw ignores the split.
  p = np.random.default_rng(5).random((400, 784))
  x = datasets.fixed_draw(p, 3)
  assert x.dtype == np.float32 and set(np.unique(x)) == {0.0, 1.0}
  assert abs(x.mean() - p.mean()) < 0.005  # ~9σ for 313,600 Bernoulli pixels.
  assert not np.array_equal(x, datasets.fixed_draw(p, 4))
  ends = datasets.fixed_draw(np.array([0.0, 1.0] * 500), 0)
  np.testing.assert_array_equal(ends, [0.0, 1.0] * 500)


def test_burda_split(tmp_path, mnist):
  """Burda's 59,600/400, scaled to 15 images: valid_size=1 keeps the last image as valid."""
  _, a = mnist
  ds = datasets.load_mnist_dynamic(tmp_path, valid_size=1)
  assert [len(x) for x in ds[1:4]] == [14, 1, 5]
  g_train = grey(a["train_images"])
  np.testing.assert_allclose(ds.train, g_train[:14], rtol=1e-6)
  np.testing.assert_array_equal(ds.valid, draw(g_train[14:], 1))
  np.testing.assert_array_equal(ds.labels[1], a["train_labels"][14:])
  for bad in (0, 15, -1):
    with pytest.raises(ValueError, match=f"valid_size={bad}: must be between 1 and 14"):
      datasets.load_mnist_dynamic(tmp_path, valid_size=bad)


# downloads and verification


def test_checksum_mismatch_leaves_nothing(tmp_path, mnist):
  src, _ = mnist
  first = src / datasets.MNIST_FILES["train_images"].name
  raw = bytearray(first.read_bytes())
  raw[-3] ^= 1
  first.write_bytes(bytes(raw))
  cache = tmp_path / "new" / "cache"
  with pytest.raises(data.DataIntegrityError) as info:
    datasets.load_mnist_dynamic(cache)
  message = str(info.value)
  assert message.startswith(f"{first.as_uri()} (downloaded for {cache / 'mnist' / first.name}): "
                            "sha256 mismatch: expected ")
  assert f"The download was discarded; the data directory is {cache} (given as data_dir)" in message
  assert not (tmp_path / "new").exists()  # Nothing kept: no file, no directory made for it.


def test_size_mismatch_keeps_verified_files(tmp_path, mnist):
  src, _ = mnist
  last = src / datasets.MNIST_FILES["test_labels"].name
  last.write_bytes(last.read_bytes() + b"\0")
  cache = tmp_path / "cache"
  with pytest.raises(data.DataIntegrityError, match=r"t10k-labels-idx1-ubyte.gz\): has \d+ bytes"):
    datasets.load_mnist_dynamic(cache)
  kept = {p.name for p in (cache / "mnist").iterdir()}
  assert kept == {f.name for k, f in datasets.MNIST_FILES.items() if k != "test_labels"}
  assert not list(tmp_path.rglob("*.part"))


def test_missing_without_download(tmp_path, mnist, monkeypatch):
  monkeypatch.setenv("JVAE_DATA_DIR", str(tmp_path / "absent"))
  with pytest.raises(data.DataUnavailableError) as info:
    data.load("mnist-dynamic", download=False)
  message = str(info.value)
  assert isinstance(info.value, FileNotFoundError)
  assert f"MNIST not found in {tmp_path / 'absent' / 'mnist'}, which does not exist" in message
  assert f"(data directory {tmp_path / 'absent'} (from $JVAE_DATA_DIR))" in message
  for f in datasets.MNIST_FILES.values():
    assert f.name in message
  assert "download=True" in message and "set JVAE_DATA_DIR to a directory whose mnist/" in message
  assert not (tmp_path / "absent").exists()


def test_existing_files_never_replaced(tmp_path, mnist):
  src, _ = mnist
  cache = tmp_path / "cache" / "mnist"
  cache.mkdir(parents=True)
  name = datasets.MNIST_FILES["train_labels"].name
  shutil.copy(src / name, cache / name)
  before = (cache / name).stat()
  (src / name).unlink()  # Fetching it again would fail.
  datasets.load_mnist_dynamic(cache.parent)
  after = (cache / name).stat()
  assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
  raw = bytearray((cache / name).read_bytes())  # A damaged file on disk is refused, not replaced.
  raw[10] ^= 0xFF
  (cache / name).write_bytes(bytes(raw))
  with pytest.raises(data.DataIntegrityError, match=f"^{cache / name}: sha256 mismatch.*delete"):
    datasets.load_mnist_dynamic(cache.parent)
  assert (cache / name).read_bytes() == bytes(raw)


def test_fetch_refuses_existing_path(tmp_path, mnist):
  src, _ = mnist
  f = datasets.MNIST_FILES["test_labels"]
  path = tmp_path / "have" / f.name
  path.parent.mkdir()
  path.write_bytes(b"mine")
  with pytest.raises(FileExistsError):
    download.fetch(f"{src.as_uri()}/{f.name}", path, where="w", fix="f", expected=f)
  assert path.read_bytes() == b"mine" and os.listdir(path.parent) == [f.name]
  with pytest.raises(ValueError, match="never keeps unverified"):
    download.fetch(f"{src.as_uri()}/{f.name}", tmp_path / "other", where="w", fix="f")
  assert not (tmp_path / "other").exists()


def test_digests_and_verify(tmp_path):
  path = tmp_path / "blob.bin"
  path.write_bytes(bytes(range(256)) * 5)
  got = download.digests(path)
  assert got["size"] == 1280
  assert got["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
  if shutil.which("git"):  # git's own blob id, without writing anything anywhere
    out = subprocess.run(["git", "hash-object", "--no-filters", str(path)], capture_output=True,
                         text=True, check=True, cwd=tmp_path)
    assert got["git_blob_sha1"] == out.stdout.strip()
  download.verify(path, Remote(path.name, 1280, md5=got["md5"], git_blob_sha1=got["git_blob_sha1"]))
  with pytest.raises(data.DataIntegrityError, match="git_blob_sha1 mismatch"):
    download.verify(path, Remote(path.name, md5=got["md5"], git_blob_sha1="0" * 40))
  with pytest.raises(ValueError, match="no digest"):
    download.verify(path, Remote(path.name, 1280))  # A size alone is never enough.


# Fashion-MNIST


def test_fashion_mnist(tmp_path, mnist, fashion):
  _, a = fashion
  _, m = mnist
  ds = data.load("fashion_mnist", data_dir=tmp_path / "cache")
  assert ds.name == "fashion_mnist" and ds.binarize == "dynamic"
  assert [len(x) for x in ds[1:4]] == [12, 3, 5]
  np.testing.assert_allclose(ds.train, grey(a["train_images"])[:12], rtol=1e-6)
  np.testing.assert_array_equal(ds.test, draw(grey(a["test_images"]), 0))
  np.testing.assert_array_equal(ds.labels[2], a["test_labels"])
  assert not np.array_equal(a["train_images"], m["train_images"])
  assert (tmp_path / "cache" / "fashion_mnist").is_dir()
  assert not (tmp_path / "cache" / "mnist").exists()  # Same file names, separate folders.


# Omniglot


@pytest.fixture
def omniglot(tmp_path, monkeypatch):
  """A tiny chardata.mat of 12 training and 4 test images in 50 alphabets."""
  rng = np.random.default_rng(2)
  arrays = {"data": rng.random((784, 12)), "testdata": rng.random((784, 4))}
  arrays["data"][arrays["data"] < 0.5] = 0  # Grey levels with zeros, like the real file.
  for key, n in (("target", 12), ("testtarget", 4)):
    arrays[key] = np.eye(50)[:, rng.integers(0, 50, n)]
  src = tmp_path / "omni-mirror"
  src.mkdir()
  scipy.io.savemat(src / "chardata.mat", arrays)
  monkeypatch.setattr(datasets, "OMNIGLOT_URL", src.as_uri())
  monkeypatch.setattr(datasets, "OMNIGLOT_FILES", {
      "chardata": remote(src / "chardata.mat", md5=True, git=True)})
  monkeypatch.setattr(datasets, "OMNIGLOT_VALID_SIZE", 3)
  return src, arrays


def test_omniglot(tmp_path, omniglot):
  _, a = omniglot
  ds = data.load("omniglot", data_dir=tmp_path / "cache")
  assert ds.name == "omniglot" and ds.binarize == "dynamic" and ds.image_shape == (28, 28)
  assert [x.shape for x in ds[1:4]] == [(9, 784), (3, 784), (4, 784)]
  # Burda's reshape is a transpose of each image; his split shuffles with RandomState(123).
  train = a["data"].T.reshape(-1, 28, 28).transpose(0, 2, 1).reshape(-1, 784)
  test = a["testdata"].T.reshape(-1, 28, 28).transpose(0, 2, 1).reshape(-1, 784)
  perm = np.random.RandomState(123).permutation(12)
  np.testing.assert_allclose(ds.train, train[perm[:9]], rtol=1e-6)
  np.testing.assert_array_equal(ds.valid, draw(train[perm[9:]].astype(np.float32), 1))
  np.testing.assert_array_equal(ds.test, draw(test.astype(np.float32), 0))
  labels = a["target"].argmax(0)
  for y, want in zip(ds.labels, (labels[perm[:9]], labels[perm[9:]], a["testtarget"].argmax(0)),
                     strict=True):
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, want)


def test_omniglot_wrong_git_blob_refused(tmp_path, omniglot, monkeypatch):
  good = datasets.OMNIGLOT_FILES["chardata"]
  monkeypatch.setitem(datasets.OMNIGLOT_FILES, "chardata",
                      good._replace(git_blob_sha1="016a3536ffe5e1d38e42563a18d7a78bfaf643ec"))
  with pytest.raises(data.DataIntegrityError, match="chardata.mat.*git_blob_sha1 mismatch"):
    datasets.load_omniglot(tmp_path / "cache")
  assert not (tmp_path / "cache").exists()


def test_omniglot_foreign_mat_refused(tmp_path, omniglot, monkeypatch):
  src, a = omniglot
  scipy.io.savemat(src / "chardata.mat", {"data": a["data"]})
  monkeypatch.setitem(datasets.OMNIGLOT_FILES, "chardata", remote(src / "chardata.mat", md5=True))
  with pytest.raises(data.DataIntegrityError, match="no array 'testdata', 'target', 'testtarget'"):
    datasets.load_omniglot(tmp_path / "cache")


# Frey faces


@pytest.fixture
def frey(tmp_path, monkeypatch):
  ff = np.random.default_rng(3).integers(0, 256, (560, 10)).astype(np.uint8)
  src = tmp_path / "frey-mirror"
  src.mkdir()
  scipy.io.savemat(src / "frey_rawface.mat", {"ff": ff})
  monkeypatch.setattr(datasets, "FREY_URL", src.as_uri())
  monkeypatch.setattr(datasets, "FREY_FILES", {
      "ff": remote(src / "frey_rawface.mat", sha256=True, md5=True)})
  monkeypatch.setattr(datasets, "FREY_SPLIT", (6, 2, 2))
  return ff


def test_frey(tmp_path, frey):
  ds = data.load("frey", data_dir=tmp_path)
  assert ds.name == "frey" and ds.binarize is None and ds.labels is None
  assert ds.event_shape == (560,) and ds.image_shape == (28, 20)
  assert [x.shape for x in ds[1:4]] == [(6, 560), (2, 560), (2, 560)]
  x = frey.T / 255
  perm = np.random.default_rng(0).permutation(10)
  for got, idx in zip(ds[1:4], (perm[:6], perm[6:8], perm[8:]), strict=True):
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, x[idx], rtol=1e-6)
  assert (tmp_path / "frey" / "frey_rawface.mat").is_file()


def test_frey_wrong_count_refused(tmp_path, frey, monkeypatch):
  monkeypatch.setattr(datasets, "FREY_SPLIT", (1565, 200, 200))
  with pytest.raises(data.DataIntegrityError, match="10 images, expected 1965"):
    datasets.load_frey(tmp_path)


# labels for the statically binarized MNIST


def write_binarized(directory: pathlib.Path, splits: dict[str, np.ndarray], monkeypatch) -> None:
  """Writes ``splits`` as binarized_mnist_{split}.amat and patches their sizes and sha256."""
  directory.mkdir(parents=True, exist_ok=True)
  sizes = {}
  for split, bits in splits.items():
    raw = "".join(" ".join(str(int(v)) for v in row) + "\n" for row in bits).encode()
    (directory / f"binarized_mnist_{split}.amat").write_bytes(raw)
    sizes[split] = (len(bits), hashlib.sha256(raw).hexdigest())
  monkeypatch.setattr(data, "MNIST_SPLITS", sizes)


def test_static_labels_matched(tmp_path, mnist, monkeypatch):
  _, a = mnist
  g_train, g_test = grey(a["train_images"]), grey(a["test_images"])
  write_binarized(tmp_path, {"train": draw(g_train[:12], 7), "valid": draw(g_train[12:], 8),
                             "test": draw(g_test, 9)}, monkeypatch)
  found = datasets.binarized_mnist_labels(tmp_path)
  assert found.matched == {"train": 1.0, "valid": 1.0, "test": 1.0}
  for y, want in zip(found.labels, (a["train_labels"][:12], a["train_labels"][12:],
                                    a["test_labels"]), strict=True):
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, want)
  ds = datasets.load_binarized_mnist_labelled(tmp_path)
  assert ds.name == "binarized_mnist" and ds.binarize == "static" and ds.train.shape == (12, 784)
  np.testing.assert_array_equal(ds.labels[0], a["train_labels"][:12])


def test_static_labels_refused(tmp_path, mnist, monkeypatch):
  _, a = mnist
  g_train, g_test = grey(a["train_images"]), grey(a["test_images"])
  shifted = np.roll(g_train[:12], 1, axis=0)  # Every binary image beside its grey one.
  write_binarized(tmp_path, {"train": draw(shifted, 7), "valid": draw(g_train[12:], 8),
                             "test": draw(g_test, 9)}, monkeypatch)
  with pytest.raises(data.DataIntegrityError,
                     match=r"binarized MNIST train: only 0\.00% of its 12 images are consistent "
                           r"with MNIST train\[:50000\].*refusing"):
    datasets.binarized_mnist_labels(tmp_path)
  blank = draw(g_test, 9)
  blank[:, :] = 0  # No 1 where grey is 0, but the ink is missing: refused as well.
  ds = data.Dataset("binarized_mnist", draw(g_train[:12], 7), draw(g_train[12:], 8), blank,
                    (784,), (28, 28))
  with pytest.raises(data.DataIntegrityError, match="test: only 0.00%"):
    datasets.binarized_mnist_labels(tmp_path, binarized=ds)
  short = ds._replace(valid=ds.valid[:2])
  with pytest.raises(data.DataIntegrityError, match="12/2/5 images, MNIST 15 training"):
    datasets.binarized_mnist_labels(tmp_path, binarized=short)


# names and the Dataset fields


def test_names_and_defaults():
  for name in ("mnist-dynamic", "fashion_mnist", "omniglot", "frey", "binarized_mnist", "digits"):
    assert name in data.DATASETS
  with pytest.raises(ValueError, match="mnist-dynamic.*fashion_mnist.*omniglot.*frey"):
    data.load("cifar10")
  ds = data.Dataset("x", np.zeros((1, 4)), np.zeros((1, 4)), np.zeros((1, 4)), (4,))
  assert ds.image_shape is None and ds.labels is None and ds.binarize == "static"
  assert data.load("digits").binarize == "static"
