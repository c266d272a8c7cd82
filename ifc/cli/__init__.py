"""`ifc` command line: argument parsing and printing only; each subcommand is a thin call.

Exit codes (shared by every subcommand):
  0  success, no findings at or above the failure level
  1  findings at or above `--fail-on` (check), a denied decision (decide), a failed verification (caps)
  2  usage error, unreadable input, or a policy that does not parse or compile
"""

from __future__ import annotations

import argparse
import enum
import importlib
import sys
from collections.abc import Sequence


class ExitCode(enum.IntEnum):
    OK = 0
    FINDINGS = 1
    USAGE = 2


SUBCOMMANDS = ("check", "fmt", "decide", "report", "caps", "mount", "proxy", "run", "vm", "labels", "init",
               "agent")


def _subcommands(only: str | None = None):
    """The subcommand modules, imported on demand: `ifc check` need not load the token code."""
    names = (only,) if only in SUBCOMMANDS else SUBCOMMANDS
    return tuple(importlib.import_module(f"ifc.cli.{name}") for name in names)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ifc",
        description="Information-flow control for AI agents: policies, tokens, enforcement.",
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _subcommands(only):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
