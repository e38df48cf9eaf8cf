"""``python -m passerelle``: the same as the ``passerelle`` command."""

import sys

from .cli import main

sys.exit(main())
