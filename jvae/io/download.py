"""Verified downloads into the data directory (layer 6).

One rule for every data file jvae fetches: the bytes stream into a temporary ``.part`` file
beside their destination, are verified (size and digests, and optionally parsed), and only then
renamed into place with ``os.replace``. On any failure the temporary file, and every directory
made for it, is removed again, so a destination only ever appears complete and verified. A file
already present is never replaced: :func:`fetch` refuses one, and :func:`obtain` verifies it
instead.

Where files come from is each loader's module constant (``jvae.io.data.MNIST_URL``,
``jvae.io.datasets.MNIST_URL``, ...): a base URL to which the file name is appended. Any URL
``urllib`` opens works, ``file://`` included, so a local mirror is used by setting the constant.

Failures raise :class:`DataIntegrityError` (a ``ValueError``: wrong size or digest, a foreign or
damaged file) or :class:`DataUnavailableError` (a ``FileNotFoundError``: missing and not to be,
or not able to be, downloaded); messages name the file or URL and the data directory and say what
to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import itertools
import os
import pathlib
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

_CHUNK = 1 << 20


class DataIntegrityError(ValueError):
  """A data file is malformed or does not match its expected size or checksum."""


class DataUnavailableError(FileNotFoundError):
  """Data files are missing, or unreadable, and may not or could not be downloaded."""


class Remote(NamedTuple):
  """A file known by its name, size and digests; every digest given is checked.

  At least one digest is required: a file is never accepted on its size alone.

  Attributes:
    name: the file name, appended to a base URL and to the local folder.
    size: its size in bytes, or None where no size is published.
    sha256: hex sha256 of the file, or None.
    md5: hex md5 of the file, or None.
    git_blob_sha1: hex SHA-1 git gives the file as a blob (``git hash-object``: the SHA-1 of
      ``b"blob <size>\\0"`` followed by the bytes), as a repository's tree lists it, or None.
  """

  name: str
  size: int | None = None
  sha256: str | None = None
  md5: str | None = None
  git_blob_sha1: str | None = None


def digests(path: str | os.PathLike) -> dict[str, Any]:
  """The size and every digest :class:`Remote` knows of the file at ``path``, read once.

  Returns:
    A dict with keys ``size`` (int), ``sha256``, ``md5`` and ``git_blob_sha1`` (hex strings).
  """
  size = os.path.getsize(path)
  sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
  git = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      for h in (sha256, md5, git):
        h.update(chunk)
  return {"size": size, "sha256": sha256.hexdigest(), "md5": md5.hexdigest(),
          "git_blob_sha1": git.hexdigest()}


def verify(path: str | os.PathLike, expected: Remote, label: str | None = None) -> None:
  """Checks the file at ``path`` against the size and every digest in ``expected``.

  Args:
    path: the file.
    expected: what it must match; at least one digest must be set.
    label: how messages name the file; defaults to ``path``.

  Raises:
    ValueError: ``expected`` has no digest (a programming error, never a data one).
    DataIntegrityError: the size or a digest differs.
    DataUnavailableError: the file cannot be read.
  """
  label = label or str(path)
  wanted = {k: getattr(expected, k) for k in ("sha256", "md5", "git_blob_sha1")}
  if all(v is None for v in wanted.values()):
    raise ValueError(f"{expected.name}: no digest to verify it by; refusing to trust its size")
  try:
    got = digests(path)
  except OSError as err:
    raise DataUnavailableError(f"{label}: cannot be read: {err}") from err
  if expected.size is not None and got["size"] != expected.size:
    raise DataIntegrityError(f"{label}: has {got['size']} bytes, expected {expected.size}")
  for kind, want in wanted.items():
    if want is not None and got[kind] != want.lower():
      raise DataIntegrityError(f"{label}: {kind} mismatch: expected {want}, got {got[kind]}")


def fetch(url: str, path: str | os.PathLike, *, where: str, fix: str,
          expected: Remote | None = None,
          check: Callable[[pathlib.Path, str], Any] | None = None) -> Any:
  """Downloads ``url`` to ``path``, verifying it before it is moved into place.

  The bytes stream into a temporary file beside ``path``, in a directory made only once the
  source answers; it is checked against ``expected`` and then passed to ``check``; only if both
  pass is it renamed to ``path``. On any failure that file and the directories made for it are
  removed again.

  Args:
    url: the source; ``file://`` URLs work as well.
    path: where the file belongs; it must not exist.
    where: how messages name the data directory.
    fix: what else the user can do, ending the messages (e.g. "set JVAE_DATA_DIR to ...").
    expected: the size and digests to verify.
    check: ``check(tmp_path, label)`` parses or verifies the download further, raising a
      :class:`DataIntegrityError` naming ``label`` if it is bad; its result is returned.

  Returns:
    What ``check`` returned, else ``path`` as a ``pathlib.Path``.

  Raises:
    FileExistsError: ``path`` already exists (it is never replaced).
    ValueError: neither ``expected`` nor ``check`` is given.
    DataIntegrityError: the downloaded bytes fail verification.
    DataUnavailableError: the download failed.
  """
  path = pathlib.Path(path)
  if expected is None and check is None:
    raise ValueError("fetch needs expected digests or a check: it never keeps unverified bytes")
  if os.path.lexists(path):
    raise FileExistsError(f"{path} already exists; a download never replaces a file")
  from tqdm.auto import tqdm  # only when downloading: no widget warning on plain imports

  result = path
  try:
    with _part_file(path) as tmp:
      with urllib.request.urlopen(url, timeout=60) as response:
        path.parent.mkdir(parents=True, exist_ok=True)
        total = int(response.headers.get("Content-Length") or 0) or None
        with open(tmp, "xb") as f, tqdm(total=total, unit="B", unit_scale=True,
                                        desc=path.name) as bar:
          while chunk := response.read(_CHUNK):
            f.write(chunk)
            bar.update(len(chunk))
      label = f"{url} (downloaded for {path})"
      with advice(f"The download was discarded; the data directory is {where}. Try again "
                  f"later, or {fix}."):
        if expected is not None:
          verify(tmp, expected, label)
        if check is not None:
          result = check(tmp, label)
      if os.path.lexists(path):
        raise FileExistsError(f"{path} appeared during the download; it is left as it is")
      os.replace(tmp, path)
  except (OSError, http.client.HTTPException) as err:
    reason = err.reason if type(err) is urllib.error.URLError else err
    raise DataUnavailableError(
        f"could not download {url} into the data directory {where}: {reason}. Check the network "
        f"connection and try again, or {fix}.") from err
  return result


def obtain(folder: str | os.PathLike, base_url: str, files: Sequence[Remote], *, download: bool,
           what: str, where: str, fix: str) -> list[pathlib.Path]:
  """Every file of ``files`` in ``folder``, verified; missing ones downloaded from ``base_url``.

  Files present are verified on every call (never replaced); missing ones are fetched from
  ``base_url + "/" + name`` with :func:`fetch` when ``download`` is True.

  Args:
    folder: the local directory of the files.
    base_url: the source directory URL.
    files: the files wanted.
    download: whether missing files may be downloaded.
    what: the data set's name for messages, e.g. "MNIST".
    where: how messages name the data directory.
    fix: what else the user can do, ending the messages.

  Returns:
    The paths, in the order of ``files``.

  Raises:
    DataIntegrityError: a file on disk or downloaded fails verification.
    DataUnavailableError: files are missing and ``download`` is False, or a download failed.
  """
  folder = pathlib.Path(folder)
  paths = [folder / f.name for f in files]
  missing = [f.name for f, p in zip(files, paths, strict=True) if not p.is_file()]
  if missing and not download:
    absent = "" if folder.is_dir() else ", which does not exist"
    raise DataUnavailableError(
        f"{what} not found in {folder}{absent} (data directory {where}): missing "
        f"{', '.join(missing)}. Call with download=True to fetch them from {base_url}, or {fix}.")
  bad_file = (f"The data directory is {where}: delete the bad file so that it can be downloaded "
              f"again, or {fix}.")
  for f, p in zip(files, paths, strict=True):
    if f.name in missing:
      fetch(f"{base_url.rstrip('/')}/{f.name}", p, where=where, fix=fix, expected=f)
    else:
      with advice(bad_file):
        verify(p, f)
  return paths


@contextlib.contextmanager
def advice(text: str):
  """Appends ``text``, what to do, to the message of a data error raised inside."""
  try:
    yield
  except (DataIntegrityError, DataUnavailableError) as err:
    raise type(err)(f"{err}. {text}") from err.__cause__


@contextlib.contextmanager
def _part_file(path: pathlib.Path):
  """Yields a temporary name beside ``path``, removed on leaving.

  Directories above it that did not exist on entry are removed as well if they are still empty.
  """
  new_dirs = list(itertools.takewhile(lambda d: not d.exists(),
                                      (path.parent, *path.parent.parents)))
  tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
  try:
    yield tmp
  finally:
    tmp.unlink(missing_ok=True)
    for directory in new_dirs:  # Deepest first; one still holding files keeps its parents.
      try:
        directory.rmdir()
      except OSError:
        break
