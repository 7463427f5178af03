"""`python -m agentqat.cli`: the command line."""

import sys

from agentqat.cli import main

sys.exit(main())
