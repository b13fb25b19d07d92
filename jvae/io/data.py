"""Image data sets as numpy arrays (layer 6).

Every loader returns a :class:`Dataset` of ``float32`` arrays of shape ``(N, D)``; its
``binarize`` field says how they are binary (the two loaders here give exactly 0/1 values,
``"static"``). Training code moves them to devices itself, so nothing here imports JAX.

* ``"binarized_mnist"`` (alias ``"mnist"``): the statically binarized MNIST of Larochelle & Murray
  (2011), train/valid/test 50,000/10,000/10,000 images of 28×28 pixels. Read from a data directory
  (``$JVAE_DATA_DIR``, else ``~/.cache/jvae``) as a packed ``binarized_mnist.npz`` or as the
  canonical ``binarized_mnist_{split}.amat`` text files, downloaded once when missing. Both forms
  are checked against the sha256 of the canonical text files.
* ``"digits"``: scikit-learn's bundled 8×8 digits (1,797 images), thresholded at 8 of 16, with a
  fixed 1,197/300/300 split.
* ``"mnist-dynamic"``, ``"fashion_mnist"``, ``"omniglot"``, ``"frey"``: dynamically binarized
  MNIST, Fashion-MNIST and Omniglot and continuous Frey faces, read from the canonical files;
  see :mod:`jvae.io.datasets`.

Every data failure raises one of two errors, whose message names the file or URL and the data
directory (and whether it came from ``$JVAE_DATA_DIR`` or the default), and says what to do: a
file that is empty, truncated, foreign or fails its checksum raises :class:`DataIntegrityError`
(a ``ValueError``); files that are missing and may not, or cannot, be downloaded raise
:class:`DataUnavailableError` (a ``FileNotFoundError``). A failed download leaves neither a
partial file nor a directory it created, and files already present are never replaced.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import zipfile
import zlib
from typing import NamedTuple

import numpy as np
import sklearn.datasets

from jvae.io import download as _download
from jvae.io.download import DataIntegrityError, DataUnavailableError

DATASETS = ("binarized_mnist", "digits", "mnist-dynamic", "fashion_mnist", "omniglot", "frey")
_ALIASES = {"mnist": "binarized_mnist"}
_MORE = {"mnist-dynamic": "load_mnist_dynamic", "fashion_mnist": "load_fashion_mnist",
         "omniglot": "load_omniglot", "frey": "load_frey"}  # name: loader in jvae.io.datasets

MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist"
MNIST_NPZ = "binarized_mnist.npz"
MNIST_PIXELS = 784
MNIST_SPLITS = {
    "train": (50000, "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"),
    "valid": (10000, "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"),
    "test": (10000, "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"),
}
_LINE_BYTES = 2 * MNIST_PIXELS  # 784 digits, 783 spaces, one newline.

DIGITS_SPLIT = (1197, 300, 300)

_FIX = ("set JVAE_DATA_DIR to a directory holding binarized_mnist.npz or the three files "
        "binarized_mnist_{train,valid,test}.amat")


class Dataset(NamedTuple):
  """Train/valid/test splits of a data set.

  Attributes:
    name: canonical name, one of :data:`DATASETS`.
    train: ``float32`` array of shape ``(N_train, D)``: values in {0, 1} when ``binarize`` is
      ``"static"``, probabilities in [0, 1] when it is ``"dynamic"``, continuous values when None.
    valid: ``float32`` array of shape ``(N_valid, D)``; in {0, 1} unless ``binarize`` is None.
    test: ``float32`` array of shape ``(N_test, D)``; in {0, 1} unless ``binarize`` is None.
    event_shape: shape of one example, ``(D,)``.
    image_shape: ``(height, width)`` with ``height * width == D`` for pictures, else None.
    labels: class labels ``(train, valid, test)``, ``int32`` arrays of shapes ``(N_train,)``,
      ``(N_valid,)``, ``(N_test,)``, or None for a data set without them.
    binarize: how the data are binary. ``"static"``: every split is binary already (one fixed
      draw, e.g. Larochelle's MNIST). ``"dynamic"``: ``train`` holds grey levels, to be drawn
      afresh as Bernoulli pixels for every training batch (e.g. with
      :func:`jvae.objectives.binarize.dynamic_binarization`), while ``valid`` and ``test`` are one
      fixed, seeded draw each, so every evaluation sees the same binary images. None: continuous
      data (e.g. Frey faces for a Gaussian likelihood), nothing is binary. Defaults to
      ``"static"``, what every Dataset was before the field existed.
  """

  name: str
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray
  event_shape: tuple[int, ...]
  image_shape: tuple[int, int] | None = None
  labels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
  binarize: str | None = "static"


def default_data_dir() -> pathlib.Path:
  """``$JVAE_DATA_DIR`` if set and non-empty, else ``~/.cache/jvae``."""
  env = os.environ.get("JVAE_DATA_DIR")
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path.home() / ".cache" / "jvae"


def _resolve_data_dir(data_dir: str | os.PathLike | None) -> tuple[pathlib.Path, str]:
  """The data directory to use, and how messages name it: its path and where that came from."""
  if data_dir is not None:
    return pathlib.Path(data_dir), f"{data_dir} (given as data_dir)"
  origin = ("from $JVAE_DATA_DIR" if os.environ.get("JVAE_DATA_DIR")
            else "the default ~/.cache/jvae, as $JVAE_DATA_DIR is not set")
  return default_data_dir(), f"{default_data_dir()} ({origin})"


def load(name: str, *, data_dir: str | os.PathLike | None = None,
         download: bool = True) -> Dataset:
  """Loads a data set by name.

  Args:
    name: one of :data:`DATASETS` or the alias ``"mnist"`` (statically binarized MNIST).
    data_dir: directory for files on disk; defaults to :func:`default_data_dir`. Unused by
      ``"digits"``.
    download: whether missing files may be downloaded.

  Returns:
    The :class:`Dataset`; the loaders of :mod:`jvae.io.datasets` with their default options for
    ``"mnist-dynamic"``, ``"fashion_mnist"``, ``"omniglot"`` and ``"frey"``.

  Raises:
    ValueError: for an unknown name.
  """
  canonical = _ALIASES.get(name, name)
  if canonical == "binarized_mnist":
    return load_binarized_mnist(data_dir, download=download)
  if canonical == "digits":
    return load_digits()
  if canonical in _MORE:
    from jvae.io import datasets  # imports this module: loaded on first use only

    return getattr(datasets, _MORE[canonical])(data_dir, download=download)
  known = ", ".join(repr(n) for n in (*DATASETS, *_ALIASES))
  raise ValueError(f"unknown data set {name!r}; known names: {known}")


def load_digits() -> Dataset:
  """scikit-learn's 8×8 digits, binarized as ``pixel >= 8``, split 1,197/300/300.

  The split is the fixed permutation ``np.random.default_rng(0).permutation(1797)``: its first
  1,197 indices are train, the next 300 valid, the last 300 test.

  Returns:
    A :class:`Dataset` with arrays of shape ``(n, 64)``, event shape ``(64,)``, image shape
    ``(8, 8)``.
  """
  images = sklearn.datasets.load_digits().images  # (1797, 8, 8), values 0..16.
  x = (images.reshape(len(images), -1) >= 8).astype(np.float32)
  perm = np.random.default_rng(0).permutation(len(x))
  n_train, n_valid, _ = DIGITS_SPLIT
  train, valid, test = np.split(x[perm], [n_train, n_train + n_valid])
  return Dataset("digits", train, valid, test, (64,), (8, 8), binarize="static")


def load_binarized_mnist(data_dir: str | os.PathLike | None = None, *,
                         download: bool = True) -> Dataset:
  """Statically binarized MNIST (Larochelle & Murray 2011), verified against its checksums.

  Looks in ``data_dir`` for ``binarized_mnist.npz`` (keys ``train``/``valid``/``test``, ``uint8``
  of shape ``(N, 98)`` from ``np.packbits(axis=1)``), else for the canonical text files
  ``binarized_mnist_{split}.amat``, downloading missing ones from :data:`MNIST_URL` if
  ``download``. A download goes to a temporary file in ``data_dir`` that is renamed only once it
  is complete and verified; files already present are never replaced.

  Args:
    data_dir: directory holding the files; defaults to :func:`default_data_dir`.
    download: whether missing ``.amat`` files may be downloaded.

  Returns:
    A :class:`Dataset` with arrays of shape ``(N, 784)``, event shape ``(784,)``, image shape
    ``(28, 28)``.

  Raises:
    DataIntegrityError: a file is not an ``.npz`` archive or has the wrong size, layout, shape or
      sha256, whether it was on disk or just downloaded.
    DataUnavailableError: files are missing and ``download`` is False, a download failed, or a
      file cannot be read.
  """
  data_dir, where = _resolve_data_dir(data_dir)
  bad_file = (f"The data directory is {where}: delete the bad file so that the data can be "
              f"downloaded again, or {_FIX}.")
  npz = data_dir / MNIST_NPZ
  if npz.is_file():
    with _download.advice(bad_file):
      splits = _read_mnist_npz(npz)
  else:
    missing = [s for s in MNIST_SPLITS if not _amat_path(data_dir, s).is_file()]
    if missing and not download:
      names = ", ".join(_amat_path(data_dir, s).name for s in missing)
      absent = "" if data_dir.is_dir() else ", which does not exist"
      raise DataUnavailableError(
          f"binarized MNIST not found in the data directory {where}{absent}: looked for "
          f"{MNIST_NPZ} and the text files binarized_mnist_{{train,valid,test}}.amat (missing: "
          f"{names}). Call with download=True to fetch them from {MNIST_URL}, or {_FIX}.")
    splits = {}
    for split in MNIST_SPLITS:
      path = _amat_path(data_dir, split)
      if split in missing:
        splits[split] = _download_amat(path, split, where)
      else:
        with _download.advice(bad_file):
          splits[split] = _read_amat(path, split)
  return Dataset("binarized_mnist", splits["train"], splits["valid"], splits["test"],
                 (MNIST_PIXELS,), (28, 28), binarize="static")


def _amat_path(data_dir: pathlib.Path, split: str) -> pathlib.Path:
  return data_dir / f"binarized_mnist_{split}.amat"


def _read_amat(path: pathlib.Path, split: str, label: str | None = None) -> np.ndarray:
  """Parses and verifies one canonical ``.amat`` file into ``float32`` of shape ``(N, 784)``.

  Args:
    path: the file to read.
    split: key of :data:`MNIST_SPLITS` giving the expected row count and sha256.
    label: how error messages name the file; defaults to ``path``.
  """
  label = label or str(path)
  n, sha = MNIST_SPLITS[split]
  try:
    raw = path.read_bytes()
  except OSError as err:
    raise DataUnavailableError(f"{label}: cannot be read: {err}") from err
  if len(raw) != n * _LINE_BYTES:
    raise DataIntegrityError(
        f"{label}: has {len(raw)} bytes, expected {n * _LINE_BYTES} "
        f"({n} lines of {_LINE_BYTES} bytes)")
  lines = np.frombuffer(raw, np.uint8).reshape(n, _LINE_BYTES)
  digits = lines[:, 0::2]
  for what, bad in (
      ("a value other than '0'/'1'", (digits != ord("0")) & (digits != ord("1"))),
      ("a separator other than ' '", lines[:, 1:-1:2] != ord(" ")),
      ("a line end other than '\\n'", lines[:, -1:] != ord("\n"))):
    if bad.any():
      row, col = np.argwhere(bad)[0]
      raise DataIntegrityError(f"{label}: {what} on line {row + 1} (first at value {col + 1})")
  _check_sha(label, sha, hashlib.sha256(raw).hexdigest())
  return (digits - ord("0")).astype(np.float32)


def _read_mnist_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Unpacks and verifies every split of a packed ``.npz``; values are ``float32`` (N, 784)."""
  packed_width = -(-MNIST_PIXELS // 8)
  arrays = _read_npz(path)
  out = {}
  for split, (n, sha) in MNIST_SPLITS.items():
    label = f"{path}[{split!r}]"
    if split not in arrays:
      raise DataIntegrityError(f"{path}: no array {split!r} (has {sorted(arrays)})")
    packed = arrays[split]
    if packed.dtype != np.uint8 or packed.shape != (n, packed_width):
      raise DataIntegrityError(
          f"{label}: is {packed.dtype} of shape {packed.shape}, "
          f"expected uint8 of shape {(n, packed_width)}")
    bits = np.unpackbits(packed, axis=1)[:, :MNIST_PIXELS]
    _check_sha(label, sha, hashlib.sha256(_render_amat(bits)).hexdigest(),
               what="sha256 of its canonical text")
    out[split] = bits.astype(np.float32)
  return out


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Every array of an ``.npz`` archive, never unpickling; DataIntegrityError for anything else."""
  try:
    archive = np.load(path, allow_pickle=False) if zipfile.is_zipfile(path) else None
    if isinstance(archive, np.lib.npyio.NpzFile):
      with archive:
        return {name: archive[name] for name in archive.files}
  except (zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error, KeyError) as err:
    raise DataIntegrityError(
        f"{path}: not a readable .npz archive ({type(err).__name__}: {err})") from err
  raise DataIntegrityError(f"{path}: not an .npz archive (a zip file of .npy arrays)")


def _render_amat(bits: np.ndarray) -> bytes:
  """The canonical text bytes of a {0, 1} array of shape ``(N, 784)``."""
  text = np.empty((bits.shape[0], 2 * bits.shape[1]), np.uint8)
  text[:, 0::2] = ord("0") + bits
  text[:, 1::2] = ord(" ")
  text[:, -1] = ord("\n")
  return text.tobytes()


def _check_sha(label: str, expected: str, got: str, what: str = "sha256") -> None:
  if got != expected:
    raise DataIntegrityError(f"{label}: {what} mismatch: expected {expected}, got {got}")


def _download_amat(path: pathlib.Path, split: str, where: str) -> np.ndarray:
  """Downloads ``path`` from :data:`MNIST_URL`, verifies it, then moves it into place.

  See :func:`jvae.io.download.fetch`: ``path`` only ever appears complete and verified.

  Args:
    path: where the file belongs.
    split: key of :data:`MNIST_SPLITS`.
    where: how messages name the data directory.

  Raises:
    DataIntegrityError: the downloaded bytes fail verification.
    DataUnavailableError: the download failed.
  """
  url = f"{MNIST_URL.rstrip('/')}/{path.name}"
  return _download.fetch(url, path, where=where, fix=_FIX,
                         check=lambda tmp, label: _read_amat(tmp, split, label=label))
