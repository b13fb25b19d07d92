import sys

from jvae._cli import main

sys.exit(main())
