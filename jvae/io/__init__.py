"""Layer 6: data sets, checkpoints, pictures and small file helpers."""

from jvae.io import checkpoint, conditional_data, data, files, images

__all__ = ["checkpoint", "conditional_data", "data", "files", "images"]
