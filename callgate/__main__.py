"""`python -m callgate` is the `callgate` command."""

import sys

from server.cli import main

sys.exit(main())
