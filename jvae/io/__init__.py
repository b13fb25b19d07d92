"""Layer 6: data sets, checkpoints, pictures and small file helpers."""

from jvae.io import checkpoint, data, files, images

__all__ = ["checkpoint", "data", "files", "images"]
