"""``python -m shopfloor.sim grbl ...``."""

import sys

from shopfloor.sim.cli import main

sys.exit(main(sys.argv[1:]))
