"""``python -m streams`` is the ``enforcer`` command."""

import sys

from .cli import main

sys.exit(main())
