"""`ifc report RUN_DIR [--format md|html|json] [-o FILE]`: a run's event log, for reviewers.

Reads the run directory without changing it and prints (or writes to FILE) a summary — counts by
kind, the most denied targets, the taint timeline — and then every denial: when, which process, what,
why (rule, labels, token block), the provenance path (a graph in HTML), and the minimal fix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ifc.cli import ExitCode

EPILOG = """exit codes:
  0  the report was written (denials in the run are reported, not an error)
  2  usage error, or RUN_DIR is missing, not a run directory or its event log is unreadable

example: ifc report /tmp/run1 --format html -o run1.html
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="summarise a run's denials, taint and fixes for reviewers",
                       description="Render a run directory's event log: a summary (counts by kind, top denied "
                       "targets, taint timeline), then each denial with its rule, labels, provenance path "
                       "and the minimal fix. HTML is one self-contained file (inline CSS and SVG, no script).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (holds events.db)")
    p.add_argument("--format", choices=("md", "html", "json"), default="md", help="output format (default: md)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE instead of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ifc.report import RENDERERS, ReportError, load_run

    try:
        loaded = load_run(args.run_dir)
    except ReportError as exc:
        return _error(exc.message)
    text = RENDERERS[args.format](loaded)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            return _error(f"cannot write `{args.output}`: {exc.strerror or exc}")
        return ExitCode.OK
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8", "replace"))
    return ExitCode.OK


def _error(message: str) -> int:
    print(f"ifc report: error: {' '.join(message.split())}", file=sys.stderr)
    return ExitCode.USAGE
