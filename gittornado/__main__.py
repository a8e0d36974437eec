"""``python -m gittornado``: the ``gittornado`` command (the server, and its subcommands)."""

import sys

from .server.cli import main

sys.exit(main())
