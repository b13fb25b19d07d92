"""Image grids written as PNG with the standard library only (layer 6)."""

from __future__ import annotations

import pathlib
import struct
import zlib

import numpy as np


def tile(images: np.ndarray, *, ncols: int = 8, pad: int = 1) -> np.ndarray:
  """Arrange ``(N, h, w)`` images with values in [0, 1] into one ``(H, W)`` uint8 grid."""
  images = np.clip(np.asarray(images, np.float64), 0.0, 1.0)
  if images.ndim != 3:
    raise ValueError(f"images must have shape (N, h, w), got {images.shape}")
  n, h, w = images.shape
  ncols = max(1, min(ncols, n))
  nrows = -(-n // ncols)
  grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad))
  for i, img in enumerate(images):
    r, c = divmod(i, ncols)
    top, left = pad + r * (h + pad), pad + c * (w + pad)
    grid[top:top + h, left:left + w] = img
  return np.round(grid * 255).astype(np.uint8)


def spread_indices(n: int, k: int) -> np.ndarray:
  """``k`` indices spread evenly over ``range(n)``, first and last included (all if n ≤ k).

  Test splits are often sorted by class (binarized MNIST's is), so the first k would all show
  one digit.
  """
  if n <= k:
    return np.arange(n)
  return np.round(np.linspace(0, n - 1, k)).astype(int)


# A 3×5 pixel font, enough for the row labels jvae draws ("#" is ink).
_FONT = {
    "A": (".#.", "#.#", "###", "#.#", "#.#"),
    "C": (".##", "#..", "#..", "#..", ".##"),
    "D": ("##.", "#.#", "#.#", "#.#", "##."),
    "E": ("###", "#..", "##.", "#..", "###"),
    "N": ("##.", "#.#", "#.#", "#.#", "#.#"),
    "O": (".#.", "#.#", "#.#", "#.#", ".#."),
    "R": ("##.", "#.#", "##.", "#.#", "#.#"),
    "T": ("###", ".#.", ".#.", ".#.", ".#."),
    " ": ("...", "...", "...", "...", "..."),
}
FONT_HEIGHT = 5


def text_bitmap(text: str) -> np.ndarray:
  """``text`` in the built-in 3×5 font as a ``(5, 4·len − 1)`` bool array (True is ink).

  The font has the letters A C D E N O R T and space; lower case is drawn as upper case.
  """
  glyphs = []
  for ch in text.upper():
    if ch not in _FONT:
      raise ValueError(f"the built-in font has no glyph for {ch!r} (it has {sorted(_FONT)})")
    glyphs.append(np.array([[c == "#" for c in row] for row in _FONT[ch]]))
  gap = np.zeros((FONT_HEIGHT, 1), bool)
  parts = [part for g in glyphs for part in (g, gap)][:-1]
  return np.concatenate(parts, axis=1) if parts else np.zeros((FONT_HEIGHT, 0), bool)


def label_rows(grid: np.ndarray, labels, *, cell_height: int, pad: int = 1) -> np.ndarray:
  """Prepends a white margin to a :func:`tile` grid with ``labels[r]`` in black beside row r.

  Args:
    grid: ``(H, W)`` uint8 grid from :func:`tile` with ``len(labels)`` rows of images.
    labels: one text per row (see :func:`text_bitmap` for the characters).
    cell_height: height h of one image; each label is centred on its row (h ≥ 5).
    pad: the ``pad`` the grid was tiled with.
  Returns:
    ``(H, W + margin)`` uint8, margin = widest label + 2·pad.
  """
  grid = np.asarray(grid, np.uint8)
  if cell_height < FONT_HEIGHT:
    raise ValueError(f"rows of height {cell_height} are lower than the font ({FONT_HEIGHT})")
  if grid.shape[0] != len(labels) * (cell_height + pad) + pad:
    raise ValueError(f"a grid of height {grid.shape[0]} does not have {len(labels)} rows of "
                     f"height {cell_height} and padding {pad}")
  bitmaps = [text_bitmap(label) for label in labels]
  margin = np.full((grid.shape[0], max(b.shape[1] for b in bitmaps) + 2 * pad), 255, np.uint8)
  for r, bitmap in enumerate(bitmaps):
    top = pad + r * (cell_height + pad) + (cell_height - FONT_HEIGHT) // 2
    region = margin[top:top + FONT_HEIGHT, pad:pad + bitmap.shape[1]]
    region[bitmap] = 0
  return np.concatenate([margin, grid], axis=1)


def write_png(path, grey: np.ndarray, *, scale: int = 1) -> pathlib.Path:
  """Write a ``(H, W)`` uint8 greyscale image as an 8-bit PNG, each pixel ``scale``×``scale``."""
  grey = np.asarray(grey, np.uint8)
  if grey.ndim != 2:
    raise ValueError(f"expected a (H, W) image, got shape {grey.shape}")
  if scale > 1:
    grey = np.kron(grey, np.ones((scale, scale), np.uint8))
  h, w = grey.shape
  raw = b"".join(b"\x00" + grey[r].tobytes() for r in range(h))

  def chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

  png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
         + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(png)
  return path


def read_png(path) -> np.ndarray:
  """Read back a greyscale PNG written by :func:`write_png` (for tests and tools)."""
  data = pathlib.Path(path).read_bytes()
  if data[:8] != b"\x89PNG\r\n\x1a\n":
    raise ValueError(f"{path} is not a PNG file")
  pos, idat, size = 8, b"", None
  while pos < len(data):
    (length,) = struct.unpack(">I", data[pos:pos + 4])
    kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
    if kind == b"IHDR":
      size = struct.unpack(">II", body[:8])
    elif kind == b"IDAT":
      idat += body
    pos += 12 + length
  w, h = size
  rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, w + 1)
  return rows[:, 1:].copy()
