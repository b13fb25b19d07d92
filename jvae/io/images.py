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
