"""``python -m jvae``: the ``jvae`` command."""

import sys

from jvae.cli import main

sys.exit(main())
