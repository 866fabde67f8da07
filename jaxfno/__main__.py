"""``python -m jaxfno`` runs the command-line interface (where the console script is not
installed, e.g. the GPU image, which runs the project from its source tree)."""

import sys

from jaxfno.cli import main

sys.exit(main())
