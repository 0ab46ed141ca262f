"""``python -m gdzoo`` is the ``gdzoo`` command."""

import sys

from .cli.main import main

sys.exit(main())
