#!/usr/bin/env python3
"""Entry point kept for ``python bench/run.py``; the code is in the ``bench`` package.

Equivalent to ``python -m bench`` run from the checkout's top directory.
"""

import os
import sys

if __package__ in (None, ""):
    # Run as a script: sys.path[0] is bench/ itself; make the package importable instead.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from bench.cli import main  # noqa: E402 - after the sys.path fix above

if __name__ == "__main__":
    sys.exit(main())
