"""Tests for jvae.data: digits, and binarized MNIST from tiny .amat/.npz files made here."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import pathlib
import pickle
import re
import urllib.error
import urllib.request

import numpy as np
import pytest
import sklearn.datasets

from jvae import data

SIZES = {"train": 5, "valid": 3, "test": 3}


def amat_bytes(bits: np.ndarray) -> bytes:
  """The canonical text form, written plainly (independent of the loader's vectorised one)."""
  return "".join(" ".join(str(int(v)) for v in row) + "\n" for row in bits).encode()


@pytest.fixture
def tiny(monkeypatch):
  """Random {0,1} splits of 5/3/3 rows, with MNIST_SPLITS patched to their sizes and hashes."""
  rng = np.random.default_rng(0)
  bits = {s: (rng.random((n, 784)) < 0.3).astype(np.uint8) for s, n in SIZES.items()}
  monkeypatch.setattr(data, "MNIST_SPLITS", {
      s: (len(b), hashlib.sha256(amat_bytes(b)).hexdigest()) for s, b in bits.items()})
  return bits


def write_amat(directory: pathlib.Path, bits: dict[str, np.ndarray], splits=None) -> None:
  directory.mkdir(parents=True, exist_ok=True)
  for s in splits or bits:
    (directory / f"binarized_mnist_{s}.amat").write_bytes(amat_bytes(bits[s]))


def packed(bits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {s: np.packbits(b, axis=1) for s, b in bits.items()}


def data_error(kind: type[Exception], **kwargs) -> str:
  """The message of the ``kind`` error that loading binarized MNIST raises.

  Also checks that the error is one that ``jvae.cli.main`` reports as a one-line message.
  """
  with pytest.raises(kind) as info:
    data.load("binarized_mnist", **kwargs)
  assert isinstance(info.value, (FileNotFoundError, data.DataIntegrityError))
  return str(info.value)


def assert_matches(ds: data.Dataset, bits: dict[str, np.ndarray]) -> None:
  assert ds.name == "binarized_mnist"
  assert ds.event_shape == (784,) and ds.image_shape == (28, 28)
  for s, b in bits.items():
    x = getattr(ds, s)
    assert x.dtype == np.float32 and x.shape == (SIZES[s], 784)
    np.testing.assert_array_equal(x, b)


# digits


def test_digits_shapes_and_values():
  ds = data.load_digits()
  assert ds.name == "digits" and ds.event_shape == (64,) and ds.image_shape == (8, 8)
  assert [len(x) for x in (ds.train, ds.valid, ds.test)] == [1197, 300, 300]
  for x in (ds.train, ds.valid, ds.test):
    assert x.dtype == np.float32 and x.shape[1] == 64
    assert set(np.unique(x)) == {0.0, 1.0}


def test_digits_fixed_permuted_split():
  ds, again = data.load_digits(), data.load("digits")
  for a, b in zip(ds[1:4], again[1:4], strict=True):
    np.testing.assert_array_equal(a, b)
  raw = (sklearn.datasets.load_digits().images.reshape(-1, 64) >= 8).astype(np.float32)
  assert not np.array_equal(ds.train, raw[:1197])
  perm = np.random.default_rng(0).permutation(1797)
  np.testing.assert_array_equal(ds.train, raw[perm[:1197]])
  np.testing.assert_array_equal(ds.valid, raw[perm[1197:1497]])
  np.testing.assert_array_equal(ds.test, raw[perm[1497:]])


# names and directories


def test_unknown_name_lists_known():
  with pytest.raises(ValueError, match="binarized_mnist.*digits"):
    data.load("cifar10")


def test_default_data_dir(monkeypatch):
  monkeypatch.setenv("JVAE_DATA_DIR", "/some/where")
  assert data.default_data_dir() == pathlib.Path("/some/where")
  monkeypatch.delenv("JVAE_DATA_DIR")
  assert data.default_data_dir() == pathlib.Path.home() / ".cache" / "jvae"


# local files


def test_amat_files(tmp_path, tiny):
  write_amat(tmp_path, tiny)
  assert_matches(data.load_binarized_mnist(tmp_path, download=False), tiny)
  assert_matches(data.load("mnist", data_dir=tmp_path, download=False), tiny)


def test_npz_identical_to_amat(tmp_path, tiny):
  np.savez(tmp_path / "binarized_mnist.npz", **packed(tiny))
  from_npz = data.load_binarized_mnist(tmp_path, download=False)
  assert_matches(from_npz, tiny)
  write_amat(tmp_path / "text", tiny)
  from_amat = data.load_binarized_mnist(tmp_path / "text", download=False)
  for a, b in zip(from_npz[1:4], from_amat[1:4], strict=True):
    np.testing.assert_array_equal(a, b)


def test_npz_wrong_checksum(tmp_path, tiny, monkeypatch):
  np.savez(tmp_path / "binarized_mnist.npz", **packed(tiny))
  n, good = data.MNIST_SPLITS["valid"]
  monkeypatch.setitem(data.MNIST_SPLITS, "valid", (n, "0" * 64))
  with pytest.raises(data.DataIntegrityError, match=f"'valid'.*expected 0{{64}}, got {good}"):
    data.load_binarized_mnist(tmp_path)


def test_npz_wrong_shape(tmp_path, tiny):
  arrays = packed(tiny)
  arrays["test"] = arrays["test"][:2]
  np.savez(tmp_path / "binarized_mnist.npz", **arrays)
  with pytest.raises(data.DataIntegrityError, match=r"'test'.*\(2, 98\)"):
    data.load_binarized_mnist(tmp_path)


def npz_bytes(save, **arrays) -> bytes:
  buffer = io.BytesIO()
  save(buffer, **arrays)
  return buffer.getvalue()


def flip_middle(raw: bytes) -> bytes:
  raw = bytearray(raw)
  raw[len(raw) // 2] ^= 0xFF
  return bytes(raw)


NPZ_FAULTS = {  # name: (the file's bytes from the good packed arrays, what the message says)
    "empty": (lambda a: b"", "not an .npz archive"),
    "truncated": (lambda a: npz_bytes(np.savez, **a)[:-100], "not an .npz archive"),
    "text": (lambda a: b"train valid test\n0 1 0 1\n", "not an .npz archive"),
    "pickle": (lambda a: pickle.dumps(a), "not an .npz archive"),
    "single array": (lambda a: npz_bytes(lambda f: np.save(f, a["train"])),
                     "not an .npz archive"),
    "corrupt member": (lambda a: flip_middle(npz_bytes(np.savez_compressed, **a)),
                       r"not a readable \.npz archive \((BadZipFile: Bad CRC|error: Error -3)"),
    "object arrays": (lambda a: npz_bytes(np.savez, **{s: np.array([x], object)
                                                      for s, x in a.items()}),
                      r"not a readable \.npz archive \(ValueError: Object arrays"),
    "other arrays": (lambda a: npz_bytes(np.savez, images=a["train"]),
                     r"no array 'train' \(has \['images'\]\)"),
}


@pytest.mark.parametrize("fault", NPZ_FAULTS)
def test_npz_foreign_or_damaged(tmp_path, tiny, monkeypatch, fault):
  make, says = NPZ_FAULTS[fault]
  path = tmp_path / "binarized_mnist.npz"
  path.write_bytes(make(packed(tiny)))
  write_amat(tmp_path, tiny)  # A bad .npz is reported, not silently passed over.
  monkeypatch.setenv("JVAE_DATA_DIR", str(tmp_path))
  message = data_error(data.DataIntegrityError)
  assert message.startswith(str(path)) and re.search(says, message)
  assert f"data directory is {tmp_path} (from $JVAE_DATA_DIR)" in message
  assert "delete the bad file" in message and "JVAE_DATA_DIR to a directory holding" in message
  assert path.read_bytes() == make(packed(tiny))


def test_amat_flipped_bit(tmp_path, tiny):
  write_amat(tmp_path, tiny)
  path = tmp_path / "binarized_mnist_train.amat"
  raw = bytearray(path.read_bytes())
  raw[2 * 100] ^= 1  # '0' <-> '1': the layout is still valid, only the checksum catches it.
  path.write_bytes(bytes(raw))
  with pytest.raises(data.DataIntegrityError, match="binarized_mnist_train.amat.*sha256.*expected"):
    data.load_binarized_mnist(tmp_path, download=False)


@pytest.mark.parametrize("offset, char, message", [
    (2 * 7, "x", "value other than"),
    (1568 + 2 * 7 + 1, ",", "separator"),
    (1567, " ", "line end"),
])
def test_amat_bad_layout(tmp_path, tiny, offset, char, message):
  write_amat(tmp_path, tiny)
  path = tmp_path / "binarized_mnist_valid.amat"
  raw = bytearray(path.read_bytes())
  raw[offset] = ord(char)
  path.write_bytes(bytes(raw))
  with pytest.raises(data.DataIntegrityError, match=f"binarized_mnist_valid.amat.*{message}"):
    data.load_binarized_mnist(tmp_path, download=False)


def test_amat_wrong_length(tmp_path, tiny):
  write_amat(tmp_path, tiny)
  path = tmp_path / "binarized_mnist_test.amat"
  path.write_bytes(path.read_bytes()[:-1568])
  with pytest.raises(data.DataIntegrityError, match="binarized_mnist_test.amat.*3136 bytes"):
    data.load_binarized_mnist(tmp_path, download=False)


@pytest.mark.parametrize("keep, says", [(0, "has 0 bytes"), (1568 + 700, "has 2268 bytes")])
def test_amat_empty_or_truncated(tmp_path, tiny, keep, says):
  write_amat(tmp_path, tiny)
  path = tmp_path / "binarized_mnist_valid.amat"
  path.write_bytes(path.read_bytes()[:keep])
  message = data_error(data.DataIntegrityError, data_dir=tmp_path)  # Download allowed: unused.
  assert message.startswith(f"{path}: {says}, expected 4704 (3 lines of 1568 bytes)")
  assert f"data directory is {tmp_path} (given as data_dir)" in message
  assert "delete the bad file" in message
  assert path.stat().st_size == keep


def test_missing_without_download(tmp_path, tiny):
  with pytest.raises(data.DataUnavailableError, match="download=True"):
    data.load_binarized_mnist(tmp_path, download=False)
  write_amat(tmp_path, tiny, splits=["train", "valid"])
  with pytest.raises(FileNotFoundError, match="binarized_mnist_test.amat"):
    data.load("binarized_mnist", data_dir=tmp_path, download=False)


def test_missing_directory_without_download(tmp_path, tiny, monkeypatch):
  monkeypatch.setenv("JVAE_DATA_DIR", str(tmp_path / "absent"))
  message = data_error(data.DataUnavailableError, download=False)
  assert f"{tmp_path / 'absent'} (from $JVAE_DATA_DIR), which does not exist" in message
  assert "binarized_mnist.npz" in message and "download=True" in message
  monkeypatch.delenv("JVAE_DATA_DIR")
  monkeypatch.setenv("HOME", str(tmp_path))
  message = data_error(data.DataUnavailableError, download=False)
  assert f"{tmp_path / '.cache' / 'jvae'} (the default ~/.cache/jvae" in message
  assert "set JVAE_DATA_DIR to a directory holding" in message
  assert list(tmp_path.iterdir()) == []


# downloads


@pytest.fixture
def source(tmp_path, tiny, monkeypatch):
  """A file:// mirror holding the tiny .amat files; returns its directory."""
  src = tmp_path / "mirror"
  write_amat(src, tiny)
  monkeypatch.setattr(data, "MNIST_URL", src.as_uri())
  return src


def test_download_once(tmp_path, tiny, source, monkeypatch):
  cache = tmp_path / "cache" / "jvae"
  assert_matches(data.load_binarized_mnist(cache), tiny)
  names = sorted(p.name for p in cache.iterdir())
  assert names == [f"binarized_mnist_{s}.amat" for s in ("test", "train", "valid")]
  for s in SIZES:
    assert (cache / f"binarized_mnist_{s}.amat").read_bytes() == amat_bytes(tiny[s])
  monkeypatch.setattr(data, "MNIST_URL", (tmp_path / "nowhere").as_uri())
  assert_matches(data.load_binarized_mnist(cache), tiny)


def test_download_through_env_dir(tmp_path, tiny, source, monkeypatch):
  monkeypatch.setenv("JVAE_DATA_DIR", str(tmp_path / "env"))
  assert_matches(data.load("mnist"), tiny)
  assert (tmp_path / "env" / "binarized_mnist_train.amat").is_file()


def test_download_keeps_existing_file(tmp_path, tiny, source):
  cache = tmp_path / "cache"
  write_amat(cache, tiny, splits=["train"])
  train = cache / "binarized_mnist_train.amat"
  before = train.stat()
  (source / "binarized_mnist_train.amat").unlink()  # Would fail if it were fetched again.
  assert_matches(data.load_binarized_mnist(cache), tiny)
  after = train.stat()
  assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
  assert train.read_bytes() == amat_bytes(tiny["train"])


@pytest.mark.parametrize("split", ["train", "test"])
def test_download_corrupt_source_leaves_nothing(tmp_path, tiny, source, split):
  path = source / f"binarized_mnist_{split}.amat"
  raw = bytearray(path.read_bytes())
  raw[-2] ^= 1  # The last value of the last line.
  path.write_bytes(bytes(raw))
  cache = tmp_path / "cache"
  with pytest.raises(data.DataIntegrityError, match=f"binarized_mnist_{split}.amat.*sha256"):
    data.load_binarized_mnist(cache)
  if split == "train":  # Nothing was kept, so the directory made for it is gone as well.
    assert not cache.exists()
  else:
    assert {p.name for p in cache.iterdir()} == {"binarized_mnist_train.amat",
                                                  "binarized_mnist_valid.amat"}


def test_download_missing_source_leaves_nothing(tmp_path, tiny, source):
  (source / "binarized_mnist_valid.amat").unlink()
  cache = tmp_path / "cache"
  message = data_error(data.DataUnavailableError, data_dir=cache)
  assert f"{source.as_uri()}/binarized_mnist_valid.amat into the data directory {cache}" in message
  assert {p.name for p in cache.iterdir()} == {"binarized_mnist_train.amat"}


def test_download_from_nowhere_creates_nothing(tmp_path, tiny, monkeypatch):
  url = (tmp_path / "nonexistent" / "mirror").as_uri()
  monkeypatch.setattr(data, "MNIST_URL", url)
  monkeypatch.setenv("JVAE_DATA_DIR", str(tmp_path / "new" / "jvae"))
  message = data_error(data.DataUnavailableError)
  assert message.startswith(f"could not download {url}/binarized_mnist_train.amat into the data "
                            f"directory {tmp_path / 'new' / 'jvae'} (from $JVAE_DATA_DIR): ")
  assert "No such file or directory" in message and "network" in message
  assert "set JVAE_DATA_DIR to a directory holding" in message
  assert list(tmp_path.iterdir()) == []


class Dropped(io.BytesIO):
  """A response that delivers its first bytes, then fails with ``error``."""

  def __init__(self, error: Exception):
    super().__init__(b"0 1 0 1 ")
    self.headers = {}
    self.error = error

  def read(self, size=-1):
    if self.tell():
      raise self.error
    return super().read(size)


def refuse(error: Exception):
  def urlopen(url, timeout):
    raise error
  return urlopen


@pytest.mark.parametrize("urlopen, says", [
    (refuse(urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))),
     r": \[Errno 111\] Connection refused\. "),
    (refuse(urllib.error.HTTPError("u", 404, "Not Found", {}, None)),
     r": HTTP Error 404: Not Found\. "),
    (lambda url, timeout: Dropped(TimeoutError("The read operation timed out")),
     r": The read operation timed out\. "),
    (lambda url, timeout: Dropped(http.client.IncompleteRead(b"", 4696)),
     r": IncompleteRead\(0 bytes read, 4696 more expected\)\. "),
], ids=["refused", "404", "timeout", "incomplete"])
def test_download_network_faults(tmp_path, tiny, source, monkeypatch, urlopen, says):
  monkeypatch.setattr(urllib.request, "urlopen", urlopen)
  cache = tmp_path / "new" / "cache"
  message = data_error(data.DataUnavailableError, data_dir=cache)
  url = f"{source.as_uri()}/binarized_mnist_train.amat"
  assert message.startswith(f"could not download {url} into the data directory {cache} "
                            "(given as data_dir)")
  assert re.search(says, message) and "Check the network connection" in message
  assert not (tmp_path / "new").exists()
  assert not list(tmp_path.rglob("*.part"))


def test_bad_download_leaves_good_files(tmp_path, tiny, source):
  cache = tmp_path / "cache"
  write_amat(cache, tiny, splits=["train"])
  train = cache / "binarized_mnist_train.amat"
  before = train.stat()
  for split in ("train", "test"):  # A bad train in the mirror must not matter: it is never fetched.
    path = source / f"binarized_mnist_{split}.amat"
    path.write_bytes(path.read_bytes()[:-1568])
  message = data_error(data.DataIntegrityError, data_dir=cache)
  url = f"{source.as_uri()}/binarized_mnist_test.amat"
  assert message.startswith(f"{url} (downloaded for {cache / 'binarized_mnist_test.amat'}): ")
  assert f"The download was discarded; the data directory is {cache} (given as data_dir)" in message
  assert {p.name for p in cache.iterdir()} == {train.name, "binarized_mnist_valid.amat"}
  after = train.stat()
  assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
  assert train.read_bytes() == amat_bytes(tiny["train"])


# the real data


@pytest.mark.skipif(not os.environ.get("JVAE_DATA_DIR"), reason="JVAE_DATA_DIR is not set")
def test_real_binarized_mnist():
  assert data.default_data_dir() == pathlib.Path(os.environ["JVAE_DATA_DIR"]).expanduser()
  ds = data.load("binarized_mnist", download=False)
  assert [x.shape for x in (ds.train, ds.valid, ds.test)] == [(50000, 784), (10000, 784),
                                                                (10000, 784)]
  for x in (ds.train, ds.valid, ds.test):
    assert x.dtype == np.float32
    assert np.all((x == 0) | (x == 1))
  assert abs(float(ds.train.mean()) - 0.131) < 0.01
