"""The data sets of the VAE literature, from their canonical files (layer 6).

Every loader returns a :class:`jvae.io.data.Dataset` of ``float32`` arrays of shape ``(N, D)``
whose ``binarize`` field says how the data are binary:

* ``"mnist-dynamic"`` (:func:`load_mnist_dynamic`): MNIST binarized dynamically, as Burda et al.
  (2015) train on it. ``train`` holds grey levels in [0, 1], drawn afresh per training batch by
  the training code; ``valid`` and ``test`` are one fixed draw each (see :func:`fixed_draw`).
  Train/valid are the first 50,000 / last 10,000 of the 60,000 training images (the split of the
  static MNIST), or Burda's 59,600 / 400 with ``valid_size=400``; test is the 10,000 test images.
* ``"fashion_mnist"`` (:func:`load_fashion_mnist`): Fashion-MNIST, binarized the same way.
* ``"omniglot"`` (:func:`load_omniglot`): Burda's 28×28 Omniglot (``chardata.mat``), binarized
  the same way, split as Burda does: the 24,345 training images shuffled with
  ``np.random.RandomState(123)``, the last 1,345 of them valid; test is the 8,070 test images.
* ``"frey"`` (:func:`load_frey`): Frey faces, 1,965 grey 28×20 images as continuous values
  ``pixel / 255`` in [0, 1] (``binarize`` None, for a Gaussian likelihood), split 1,565/200/200.

Labels come with MNIST and Fashion-MNIST (digit/class 0–9) and Omniglot (alphabet 0–49), as
``Dataset.labels``. :func:`binarized_mnist_labels` labels Larochelle's statically binarized MNIST
after checking, image by image, that it is MNIST's train[:50000], train[50000:] and test.

Files live in subdirectories of the data directory (``$JVAE_DATA_DIR``, else ``~/.cache/jvae``):
``mnist/``, ``fashion_mnist/``, ``omniglot/``, ``frey/``. Missing ones are downloaded once from
the base URL constants below (:data:`MNIST_URL`, :data:`FASHION_MNIST_URL`, :data:`OMNIGLOT_URL`,
:data:`FREY_URL`; set one to a mirror, ``file://`` included, to download from elsewhere), with
:func:`jvae.io.download.fetch`; every file is verified against the published size and digests of
the ``*_FILES`` constants on every load, and files present are never replaced.
"""

from __future__ import annotations

import gzip
import math
import os
import pathlib
import struct
import zlib
from typing import NamedTuple

import numpy as np

from jvae.io import data as _data
from jvae.io import download as _download
from jvae.io.download import DataIntegrityError, DataUnavailableError, Remote

__all__ = ["DataIntegrityError", "DataUnavailableError", "FASHION_MNIST_FILES",
           "FASHION_MNIST_URL", "FREY_FILES", "FREY_SPLIT", "FREY_URL", "GreyImages",
           "MNIST_FILES", "MNIST_URL", "MNIST_VALID_SIZE", "MatchedLabels", "OMNIGLOT_FILES",
           "OMNIGLOT_URL", "OMNIGLOT_VALID_SIZE",
           "TEST_DRAW_SEED", "VALID_DRAW_SEED", "binarized_mnist_labels", "fixed_draw",
           "load_binarized_mnist_labelled", "load_fashion_mnist", "load_frey",
           "load_mnist_dynamic", "load_omniglot", "mnist_grey", "read_idx"]

# MNIST as TFDS fetches it. Sizes and sha256: tensorflow/datasets,
# tensorflow_datasets/url_checksums/mnist.txt (commit 31f1255e57e519a6c004f0b097a2f5cfcf0dde7d).
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist"
MNIST_FILES = {
    "train_images": Remote("train-images-idx3-ubyte.gz", 9912422, sha256=(
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609")),
    "train_labels": Remote("train-labels-idx1-ubyte.gz", 28881, sha256=(
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c")),
    "test_images": Remote("t10k-images-idx3-ubyte.gz", 1648877, sha256=(
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6")),
    "test_labels": Remote("t10k-labels-idx1-ubyte.gz", 4542, sha256=(
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6")),
}

# Fashion-MNIST from Zalando's bucket. Sizes and sha256: tensorflow/datasets,
# tensorflow_datasets/url_checksums/fashion_mnist.txt (commit
# 333639b37af6c6fedf3610a4a2d42f1c6ef6f7d5).
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
FASHION_MNIST_FILES = {
    "train_images": Remote("train-images-idx3-ubyte.gz", 26421880, sha256=(
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84")),
    "train_labels": Remote("train-labels-idx1-ubyte.gz", 29515, sha256=(
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845")),
    "test_images": Remote("t10k-images-idx3-ubyte.gz", 4422102, sha256=(
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073")),
    "test_labels": Remote("t10k-labels-idx1-ubyte.gz", 5148, sha256=(
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5")),
}

# Burda's Omniglot. No sha256 or size is published; two independent digests are checked:
# git_blob_sha1 is the blob id of datasets/OMNIGLOT/chardata.mat in the tree of yburda/iwae at
# commit 78a6075484bd7dd6f47a4bb9880d2295bc7a5220 (its only version), the file GitHub serves;
# md5 is DATASET_MD5 of a public tfsnippet-based loader (datasets/omniglot.py) that downloads the
# same file from raw.githubusercontent.com/yburda/iwae/master.
OMNIGLOT_URL = "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT"
OMNIGLOT_FILES = {
    "chardata": Remote("chardata.mat", None, md5="21ecaf34373511aa7691cf2e0802aa3d",
                       git_blob_sha1="016a3536ffe5e1d38e42563a18d7a78bfaf643ec"),
}

# Roweis's Frey faces. Size 1,100,584: lawrennd/ods pods/data_resources.yml (brendan_faces). md5:
# a public FreyFace loader that downloads from this URL (torchvision download_url, MD5 =
# '5aeb024d42b8a6091f30e5eb18c8a48d'). sha256: computed from lawrennd/datasets_mirror
# brendan_faces/frey_rawface.mat (blob 49f6866941bfaedd5be5444c64d440a885612e65), whose size and
# md5 match those two published values.
FREY_URL = "https://cs.nyu.edu/~roweis/data"
FREY_FILES = {
    "ff": Remote("frey_rawface.mat", 1100584, md5="5aeb024d42b8a6091f30e5eb18c8a48d", sha256=(
        "265a83a23adb081755cd3de375509828e690324d1d60f076b8ecebc840d59c64")),
}
FREY_SPLIT = (1565, 200, 200)  # train/valid/test sizes of np.random.default_rng(0).permutation

MNIST_VALID_SIZE = 10000  # the default valid split of MNIST and Fashion-MNIST; Burda uses 400
OMNIGLOT_VALID_SIZE = 1345  # Burda's

TEST_DRAW_SEED = 0  # test = fixed_draw(grey test images, TEST_DRAW_SEED)
VALID_DRAW_SEED = 1  # valid = fixed_draw(grey valid images, VALID_DRAW_SEED)

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801  # ubyte, 3 and 1 dimensions


class GreyImages(NamedTuple):
  """MNIST-style grey images and labels as read from the IDX files.

  Attributes:
    train_x: ``float32`` ``(60000, 784)``, ``pixel / 255`` in [0, 1], in file order.
    train_y: ``int32`` ``(60000,)`` labels 0–9.
    test_x: ``float32`` ``(10000, 784)``.
    test_y: ``int32`` ``(10000,)``.
  """

  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray


class MatchedLabels(NamedTuple):
  """Labels for statically binarized MNIST, with how well each split matched.

  Attributes:
    labels: ``int32`` ``(train, valid, test)`` label arrays, the order of ``Dataset.labels``.
    matched: for each of ``"train"``, ``"valid"``, ``"test"`` the fraction of its binary images
      consistent with the grey MNIST image at the same position.
  """

  labels: tuple[np.ndarray, np.ndarray, np.ndarray]
  matched: dict[str, float]


def read_idx(path: str | os.PathLike, *, magic: int | None = None,
             label: str | None = None) -> np.ndarray:
  """Parses an IDX file (LeCun's MNIST format), gzipped or not.

  The header is a magic number ``0x0000TTNN`` (TT the element type, NN the number of
  dimensions), then NN big-endian uint32 sizes, then the elements in C order.

  Args:
    path: the file; a name ending in ``.gz`` is decompressed.
    magic: the magic number required, e.g. ``0x00000803`` for uint8 images of 3 dimensions.
    label: how messages name the file; defaults to ``path``.

  Returns:
    The array, of the shape and type the header gives (native byte order).

  Raises:
    DataIntegrityError: not gzip when it should be, a wrong magic number, or a length that
      disagrees with the header.
    DataUnavailableError: the file cannot be read.
  """
  label = label or str(path)
  try:
    if str(path).endswith(".gz"):
      with gzip.open(path, "rb") as f:
        raw = f.read()
    else:
      raw = pathlib.Path(path).read_bytes()
  except (gzip.BadGzipFile, EOFError, zlib.error) as err:
    raise DataIntegrityError(f"{label}: not a readable gzip file ({err})") from err
  except OSError as err:
    raise DataUnavailableError(f"{label}: cannot be read: {err}") from err
  if len(raw) < 4:
    raise DataIntegrityError(f"{label}: {len(raw)} bytes, too short for an IDX header")
  found = int.from_bytes(raw[:4], "big")
  code, ndim = raw[2], raw[3]
  if raw[:2] != b"\0\0" or code not in _IDX_TYPES or ndim == 0:
    raise DataIntegrityError(f"{label}: not an IDX file (magic number 0x{found:08x})")
  if magic is not None and found != magic:
    raise DataIntegrityError(f"{label}: IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
  start = 4 + 4 * ndim
  if len(raw) < start:
    raise DataIntegrityError(f"{label}: truncated IDX header")
  shape = struct.unpack(f">{ndim}I", raw[4:start])
  dtype = np.dtype(_IDX_TYPES[code])
  if len(raw) - start != math.prod(shape) * dtype.itemsize:
    raise DataIntegrityError(
        f"{label}: {len(raw) - start} bytes of data, expected {math.prod(shape) * dtype.itemsize} "
        f"for shape {shape}")
  return np.frombuffer(raw, dtype, offset=start).reshape(shape).astype(dtype.newbyteorder("="))


def fixed_draw(probs: np.ndarray, seed: int) -> np.ndarray:
  """One seeded Bernoulli draw of ``probs``: pixel 1 where ``u < p``.

  ``u = np.random.default_rng(seed).random(probs.shape)`` (float64 uniforms in [0, 1)), so
  p = 0 always gives 0 and p = 1 always gives 1.

  Args:
    probs: probabilities in [0, 1], any shape, e.g. ``(N, D)``.
    seed: the generator's seed.

  Returns:
    ``float32`` {0, 1} array of the shape of ``probs``.
  """
  u = np.random.default_rng(seed).random(np.shape(probs))
  return (u < probs).astype(np.float32)


def mnist_grey(data_dir: str | os.PathLike | None = None, *, download: bool = True,
               fashion: bool = False) -> GreyImages:
  """MNIST's (or Fashion-MNIST's) four IDX files, verified and parsed.

  Args:
    data_dir: the data directory; defaults to :func:`jvae.io.data.default_data_dir`. The files
      are in its ``mnist/`` (``fashion_mnist/``) subdirectory.
    download: whether missing files may be downloaded from :data:`MNIST_URL`
      (:data:`FASHION_MNIST_URL`).
    fashion: Fashion-MNIST instead of MNIST.

  Returns:
    :class:`GreyImages`: grey levels ``pixel / 255`` of shape ``(N, 784)`` and labels.

  Raises:
    DataIntegrityError: a file fails its size or sha256, is not the IDX it should be, or
      images and labels disagree.
    DataUnavailableError: files are missing and ``download`` is False, or a download failed.
  """
  what, sub, url, files = (("Fashion-MNIST", "fashion_mnist", FASHION_MNIST_URL,
                            FASHION_MNIST_FILES) if fashion
                           else ("MNIST", "mnist", MNIST_URL, MNIST_FILES))
  paths = _obtain(data_dir, sub, url, files, download=download, what=what)
  out = []
  for split in ("train", "test"):
    images = read_idx(paths[f"{split}_images"], magic=_IMAGES_MAGIC)
    labels = read_idx(paths[f"{split}_labels"], magic=_LABELS_MAGIC)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
      raise DataIntegrityError(
          f"{paths[f'{split}_images']}: images of shape {images.shape} for "
          f"{len(labels)} labels, expected ({len(labels)}, 28, 28)")
    if labels.size and labels.max() > 9:
      raise DataIntegrityError(f"{paths[f'{split}_labels']}: a label {labels.max()} above 9")
    out += [images.reshape(len(images), 784).astype(np.float32) / np.float32(255),
            labels.astype(np.int32)]
  return GreyImages(*out)


def load_mnist_dynamic(data_dir: str | os.PathLike | None = None, *, download: bool = True,
                       valid_size: int | None = None) -> _data.Dataset:
  """Dynamically binarized MNIST (Burda et al. 2015), with labels.

  Args:
    data_dir: the data directory (files in its ``mnist/``).
    download: whether missing files may be downloaded.
    valid_size: how many of the last training images are valid: None for
      :data:`MNIST_VALID_SIZE`, 10,000 (the static MNIST's 50,000/10,000 split), or Burda's 400
      (59,600/400).

  Returns:
    A :class:`~jvae.io.data.Dataset` named ``"mnist-dynamic"`` with ``binarize="dynamic"``:
    ``train`` ``(60000 - valid_size, 784)`` grey levels in [0, 1]; ``valid``
    ``(valid_size, 784)`` = ``fixed_draw(grey, VALID_DRAW_SEED)`` and ``test`` ``(10000, 784)``
    = ``fixed_draw(grey, TEST_DRAW_SEED)``, binary; ``labels`` (train, valid, test); image
    shape ``(28, 28)``.

  Raises:
    ValueError: ``valid_size`` is not between 1 and the number of training images - 1.
    DataIntegrityError, DataUnavailableError: as :func:`mnist_grey`.
  """
  g = mnist_grey(data_dir, download=download)
  return _dynamic("mnist-dynamic", g, valid_size, MNIST_VALID_SIZE)


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, *, download: bool = True,
                       valid_size: int | None = None) -> _data.Dataset:
  """Fashion-MNIST binarized dynamically, with class labels 0–9.

  As :func:`load_mnist_dynamic` (same split rule, same draws), from the files in the data
  directory's ``fashion_mnist/``; the data set is named ``"fashion_mnist"``.
  """
  g = mnist_grey(data_dir, download=download, fashion=True)
  return _dynamic("fashion_mnist", g, valid_size, MNIST_VALID_SIZE)


def load_omniglot(data_dir: str | os.PathLike | None = None, *, download: bool = True,
                  valid_size: int | None = None) -> _data.Dataset:
  """Burda et al.'s 28×28 Omniglot, binarized dynamically, with alphabet labels.

  Replicates ``binarized_shuffled_omniglot`` of yburda/iwae ``datasets.py``: the images are
  ``reshape(data.T)`` with ``reshape(x) = x.reshape((-1, 28, 28)).reshape((-1, 784),
  order='F')`` (each image's pixels transposed), the training images are shuffled by
  ``np.random.RandomState(123).permutation``, their last ``valid_size`` are valid, the rest
  train; test is ``reshape(testdata.T)`` in file order.

  Args:
    data_dir: the data directory (``chardata.mat`` in its ``omniglot/``).
    download: whether a missing file may be downloaded from :data:`OMNIGLOT_URL`.
    valid_size: None for :data:`OMNIGLOT_VALID_SIZE`, Burda's 1,345.

  Returns:
    A :class:`~jvae.io.data.Dataset` named ``"omniglot"`` with ``binarize="dynamic"``: ``train``
    ``(24345 - valid_size, 784)`` grey levels in [0, 1], ``valid`` ``(valid_size, 784)`` and
    ``test`` ``(8070, 784)`` fixed draws as for MNIST, ``labels`` the alphabet index 0–49 (argmax
    of the one-hot columns of ``target``/``testtarget``), image shape ``(28, 28)``.

  Raises:
    DataIntegrityError: the file fails its digests or lacks the expected arrays.
    DataUnavailableError: the file is missing and ``download`` is False, or a download failed.
  """
  path = _obtain(data_dir, "omniglot", OMNIGLOT_URL, OMNIGLOT_FILES, download=download,
                 what="Omniglot")["chardata"]
  mat = _loadmat(path, ("data", "testdata", "target", "testtarget"))
  split = []
  for images, target in (("data", "target"), ("testdata", "testtarget")):
    x, t = mat[images], mat[target]
    if x.ndim != 2 or x.shape[0] != 784 or not np.issubdtype(x.dtype, np.number):
      raise DataIntegrityError(f"{path}: {images!r} is {x.dtype} of shape {x.shape}, "
                               "expected numbers of shape (784, N)")
    if not np.all((x >= 0) & (x <= 1)):
      raise DataIntegrityError(f"{path}: {images!r} has values outside [0, 1]")
    if t.ndim != 2 or t.shape[1] != x.shape[1] or not np.all(np.sort(t, 0)[-1] == 1):
      raise DataIntegrityError(f"{path}: {target!r} of shape {t.shape} is not one one-hot "
                               f"column per image of {images!r}")
    x = x.T.astype(np.float32).reshape((-1, 28, 28)).reshape((-1, 28 * 28), order="F")
    split += [x, np.argmax(t, axis=0).astype(np.int32)]
  train_x, train_y, test_x, test_y = split
  perm = np.random.RandomState(123).permutation(len(train_x))
  g = GreyImages(train_x[perm], train_y[perm], test_x, test_y)
  return _dynamic("omniglot", g, valid_size, OMNIGLOT_VALID_SIZE)


def load_frey(data_dir: str | os.PathLike | None = None, *,
              download: bool = True) -> _data.Dataset:
  """Frey faces (Roweis's ``frey_rawface.mat``) as continuous data in [0, 1].

  ``ff`` is ``uint8`` of shape ``(560, 1965)``, a column per image; images are ``ff.T / 255``,
  each row a 28×20 picture in C order. The split is fixed: the permutation
  ``np.random.default_rng(0).permutation(1965)``, its first 1,565 indices train, the next 200
  valid, the last 200 test (:data:`FREY_SPLIT`).

  Args:
    data_dir: the data directory (``frey_rawface.mat`` in its ``frey/``).
    download: whether a missing file may be downloaded from :data:`FREY_URL`.

  Returns:
    A :class:`~jvae.io.data.Dataset` named ``"frey"``, ``binarize=None``, arrays
    ``(n, 560)``, event shape ``(560,)``, image shape ``(28, 20)``, no labels.

  Raises:
    DataIntegrityError: the file fails its size or digests or is not the expected matrix.
    DataUnavailableError: the file is missing and ``download`` is False, or a download failed.
  """
  path = _obtain(data_dir, "frey", FREY_URL, FREY_FILES, download=download,
                 what="Frey faces")["ff"]
  ff = _loadmat(path, ("ff",))["ff"]
  if ff.dtype != np.uint8 or ff.ndim != 2 or ff.shape[0] != 560:
    raise DataIntegrityError(f"{path}: 'ff' is {ff.dtype} of shape {ff.shape}, "
                             "expected uint8 of shape (560, N)")
  if sum(FREY_SPLIT) != ff.shape[1]:
    raise DataIntegrityError(f"{path}: {ff.shape[1]} images, expected {sum(FREY_SPLIT)}")
  x = ff.T.astype(np.float32) / np.float32(255)
  perm = np.random.default_rng(0).permutation(len(x))
  train, valid, test = np.split(x[perm], np.cumsum(FREY_SPLIT[:2]))
  return _data.Dataset("frey", train, valid, test, (560,), (28, 20), binarize=None)


def binarized_mnist_labels(data_dir: str | os.PathLike | None = None, *, download: bool = True,
                           binarized: _data.Dataset | None = None,
                           min_fraction: float = 0.99) -> MatchedLabels:
  """Labels for Larochelle's statically binarized MNIST, after checking where it came from.

  The claim checked: its train/valid/test are, image by image, MNIST's train[:50000],
  train[50000:] and test, each pixel a Bernoulli draw of the grey level p. A binary image matches
  the grey image at its position when it has no 1 where p = 0 (impossible for such a draw; the
  image of another digit fails this almost surely) and its number of 1s is within 5 standard
  deviations (plus one) of the expected ``sum(p)`` (a blank or inverted image fails this).

  Args:
    data_dir: the data directory holding both data sets.
    download: whether missing files may be downloaded.
    binarized: the binarized MNIST; defaults to :func:`jvae.io.data.load_binarized_mnist`.
    min_fraction: the fraction of matched images each split needs.

  Returns:
    :class:`MatchedLabels`: the labels and the fraction matched per split.

  Raises:
    DataIntegrityError: a split matches for fewer than ``min_fraction`` of its images, or the
      split sizes do not add up to MNIST's.
    DataUnavailableError: as the loaders.
  """
  if binarized is None:
    binarized = _data.load_binarized_mnist(data_dir, download=download)
  g = mnist_grey(data_dir, download=download)
  n_train, n_valid, n_test = (len(binarized.train), len(binarized.valid), len(binarized.test))
  if n_train + n_valid != len(g.train_x) or n_test != len(g.test_x):
    raise DataIntegrityError(
        f"binarized MNIST has {n_train}/{n_valid}/{n_test} images, MNIST "
        f"{len(g.train_x)} training and {len(g.test_x)} test images: they cannot be the same")
  pairs = {"train": (binarized.train, g.train_x[:n_train], g.train_y[:n_train], "train[:50000]"),
           "valid": (binarized.valid, g.train_x[n_train:], g.train_y[n_train:], "train[50000:]"),
           "test": (binarized.test, g.test_x, g.test_y, "test")}
  matched, labels = {}, []
  for split, (binary, grey, y, source) in pairs.items():
    matched[split] = float(np.mean(_consistent(binary, grey))) if len(binary) else 1.0
    if matched[split] < min_fraction:
      raise DataIntegrityError(
          f"binarized MNIST {split}: only {matched[split]:.2%} of its {len(binary)} images are "
          f"consistent with MNIST {source} (need {min_fraction:.2%}): refusing to label it")
    labels.append(y)
  return MatchedLabels(tuple(labels), matched)


def load_binarized_mnist_labelled(data_dir: str | os.PathLike | None = None, *,
                                  download: bool = True,
                                  min_fraction: float = 0.99) -> _data.Dataset:
  """Statically binarized MNIST with ``labels`` from :func:`binarized_mnist_labels`.

  Returns:
    :func:`jvae.io.data.load_binarized_mnist`'s :class:`~jvae.io.data.Dataset` with ``labels``
    set; refused (DataIntegrityError) unless every split matches MNIST.
  """
  ds = _data.load_binarized_mnist(data_dir, download=download)
  found = binarized_mnist_labels(data_dir, download=download, binarized=ds,
                                 min_fraction=min_fraction)
  return ds._replace(labels=found.labels)


def _consistent(binary: np.ndarray, grey: np.ndarray) -> np.ndarray:
  """Per image ``(N,)`` bool: could ``binary`` be a Bernoulli draw of ``grey`` (both (N, D))?

  No 1 may stand where the grey level is 0, and the count of 1s must lie within
  ``5 sd + 1`` of its mean ``sum(p)`` (sd = ``sqrt(sum(p (1 - p)))``).
  """
  on = binary > 0.5
  p = grey.astype(np.float64)
  impossible = np.any(on & (p == 0), axis=1)
  deviation = np.abs(on.sum(axis=1) - p.sum(axis=1))
  return ~impossible & (deviation <= 5 * np.sqrt((p * (1 - p)).sum(axis=1)) + 1)


def _dynamic(name: str, g: GreyImages, valid_size: int | None, default: int) -> _data.Dataset:
  """Train grey, valid/test fixed draws: the last ``valid_size`` (None: ``default``) are valid."""
  valid_size = default if valid_size is None else valid_size
  n = len(g.train_x)
  if not 0 < valid_size < n:
    raise ValueError(f"valid_size={valid_size}: must be between 1 and {n - 1} for {n} "
                     "training images")
  cut = n - valid_size
  return _data.Dataset(
      name, g.train_x[:cut], fixed_draw(g.train_x[cut:], VALID_DRAW_SEED),
      fixed_draw(g.test_x, TEST_DRAW_SEED), (g.train_x.shape[1],), (28, 28),
      labels=(g.train_y[:cut], g.train_y[cut:], g.test_y), binarize="dynamic")


def _obtain(data_dir, sub: str, url: str, files: dict[str, Remote], *, download: bool,
            what: str) -> dict[str, pathlib.Path]:
  """The verified local paths of ``files`` (by key), downloading missing ones."""
  root, where = _data._resolve_data_dir(data_dir)
  names = ", ".join(f.name for f in files.values())
  fix = f"set JVAE_DATA_DIR to a directory whose {sub}/ holds {names}"
  paths = _download.obtain(root / sub, url, list(files.values()), download=download, what=what,
                           where=where, fix=fix)
  return dict(zip(files, paths, strict=True))


def _loadmat(path: pathlib.Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
  """The arrays ``keys`` of a MATLAB file; DataIntegrityError for anything unreadable."""
  import scipy.io  # only here: the other loaders need no scipy import

  try:
    mat = scipy.io.loadmat(path)
  # scipy raises NotImplementedError for a MATLAB v7.3 (HDF5) file, which no canonical file is.
  except (ValueError, TypeError, OSError, NotImplementedError, zlib.error,
          scipy.io.matlab.MatReadError) as err:
    raise DataIntegrityError(
        f"{path}: not a readable MATLAB file ({type(err).__name__}: {err})") from err
  missing = [k for k in keys if k not in mat]
  if missing:
    found = sorted(k for k in mat if not k.startswith("__"))
    raise DataIntegrityError(f"{path}: no array {', '.join(map(repr, missing))} (has {found})")
  return {k: np.asarray(mat[k]) for k in keys}
