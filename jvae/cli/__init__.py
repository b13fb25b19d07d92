"""The ``jvae`` command line (layer 6): ``args`` parses, ``run`` does, ``main`` dispatches."""

from jvae.cli.main import main

__all__ = ["main"]
