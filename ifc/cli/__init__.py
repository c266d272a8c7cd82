"""`ifc` command line: argument parsing and printing only; each subcommand is a thin call.

Exit codes (shared by every subcommand):
  0  success, no findings at or above the failure level
  1  findings at or above `--fail-on` (check), a denied decision (decide), a failed verification (caps)
  2  usage error, unreadable input, or a policy that does not parse or compile
"""

from __future__ import annotations

import argparse
import enum
import sys
from collections.abc import Sequence


class ExitCode(enum.IntEnum):
    OK = 0
    FINDINGS = 1
    USAGE = 2


def _subcommands():
    # Imported lazily so `ifc --help` stays fast and one broken subcommand cannot break the others.
    from ifc.cli import caps, check, decide, fmt, report

    return (check, fmt, decide, report, caps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ifc",
        description="Information-flow control for AI agents: policies, tokens, enforcement.",
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _subcommands():
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
