"""`python -m loadtest`: the load-test harness (loadtest/harness.py)."""

import sys

from .harness import main

sys.exit(main())
