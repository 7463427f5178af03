"""The `agentqat` command line: `parser` builds the arguments, `commands` and `deploy_commands` (export,
engine-costs) hold one handler per command (argument parsing into one session call), `main` runs one and turns a
UserError into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from agentqat.cli.commands import _quiet_libraries

_quiet_libraries()  # before the parser's imports: tqdm reads TQDM_DISABLE once, when it is imported

from agentqat.cli.parser import build_parser  # noqa: E402
from agentqat.errors import UserError  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UserError as error:
        print(f"agentqat {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"agentqat {args.command}: interrupted", file=sys.stderr)
        return 130
