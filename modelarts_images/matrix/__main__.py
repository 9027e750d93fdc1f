"""`python -m modelarts_images.matrix`: what `nox -s matrix` runs (see --help)."""

import sys

from modelarts_images.matrix.cli import main

sys.exit(main())
