"""`python -m engine`: the offline command line (engine.cli: check, compile and demo, no server)."""

import sys

from .cli import main

sys.exit(main())
