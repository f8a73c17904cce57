"""``python -m probe ...`` runs the ``probe`` command. Imports :mod:`probe.cli` only."""

import sys

from .cli import main

sys.exit(main())
