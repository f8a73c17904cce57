"""``python -m probe ...`` runs the ``probe`` command."""

import sys

from .cli import main

sys.exit(main())
