"""`python -m callgate` is the `callgate` command."""

import sys

from server.cli.main import main

sys.exit(main())
