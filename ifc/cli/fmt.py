"""`ifc fmt [--check] [--diff] FILE...`: rewrite `.flow` policies in the canonical layout.

Files are rewritten in place (atomically, keeping their mode) only when their layout changes. `--check`
and `--diff` never write: `--check` prints `would reformat FILE` and exits 1 if any file would change,
`--diff` prints what would change as a unified diff. `-` reads a policy from stdin and prints the
formatted policy to stdout. A file that does not parse is reported like `ifc check` reports it, left
untouched, and makes the exit status 2 (the other files are still formatted).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import sys
import tempfile
from collections import Counter

from ifc.cli import ExitCode
from ifc.cli.render import render_text
from ifc.diagnostics import sort_diagnostics
from ifc.lang.format import format_policy
from ifc.lang.parse import parse_text

STDIN = "-"
STDIN_NAME = "<stdin>"


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "fmt",
        help="rewrite .flow policies in the canonical layout",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="policy files; `-` for stdin")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; list the files that would change and exit 1 if any")
    parser.add_argument("--diff", action="store_true", help="write nothing; print a unified diff")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    status = ExitCode.OK
    for path in args.files:
        status = max(status, _format_one(path, check=args.check, diff=args.diff))
    return int(status)


def _format_one(path: str, *, check: bool, diff: bool) -> ExitCode:
    name = STDIN_NAME if path == STDIN else path
    try:
        text = sys.stdin.read() if path == STDIN else _read(path)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"{name}: error: cannot read: {reason}", file=sys.stderr)
        return ExitCode.USAGE
    result = parse_text(text, name)
    if not result.ok:
        sys.stderr.write(render_text(sort_diagnostics(result.diagnostics), {name: text}))
        return ExitCode.USAGE
    formatted = format_policy(result.file)
    problem = _verify(result, formatted, name)
    if problem:
        print(f"{name}: error: internal error in `ifc fmt`: {problem}; the file was left unchanged "
              "(please report this with the file)", file=sys.stderr)
        return ExitCode.USAGE
    changed = formatted != text
    if diff and changed:
        sys.stdout.write(_unified_diff(text, formatted, name))
    if check:
        if changed:
            print(f"would reformat {name}")
            return ExitCode.FINDINGS
        return ExitCode.OK
    if diff:
        return ExitCode.OK
    if path == STDIN:
        sys.stdout.write(formatted)
    elif changed:
        try:
            _write_atomically(path, formatted)
        except OSError as exc:
            print(f"{name}: error: cannot write: {exc.strerror or exc}", file=sys.stderr)
            return ExitCode.USAGE
    return ExitCode.OK


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8")


def _verify(result, formatted: str, name: str) -> str | None:
    """Belt and braces: the formatted text must parse to the same rules with the same comments."""
    again = parse_text(formatted, name)
    if not again.ok:
        return "the formatted policy does not parse"
    if again.file.items != result.file.items:
        return "the formatted policy has different rules"
    before = Counter(c.text.rstrip() for c in result.file.comments)
    if Counter(c.text.rstrip() for c in again.file.comments) != before:
        return "the formatted policy has different comments"
    return None


def _unified_diff(before: str, after: str, name: str) -> str:
    out = []
    for line in difflib.unified_diff(_lines(before), _lines(after),
                                     fromfile=f"{name} (original)", tofile=f"{name} (formatted)"):
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def _lines(text: str) -> list[str]:
    """Lines split at `\n` only (`str.splitlines` also splits at form feeds and the like)."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _write_atomically(path: str, text: str) -> None:
    """Write a temporary file next to the target and rename it over it, so a reader never sees half a
    policy; a symlink is followed (its target is rewritten) and the file mode is kept."""
    target = os.path.realpath(path)
    mode = os.stat(target).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.",
                               suffix=".fmt-tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
