"""``python -m stress``: the long form of the hostile suite (see ``stress/run.py``)."""

import sys

from stress.run import main

sys.exit(main())
