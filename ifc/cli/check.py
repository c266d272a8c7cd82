"""`ifc check FILE... [--workspace DIR]`: the pre-run audit of policies (and optionally a workspace)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from ifc import __version__
from ifc.check import CODES, check
from ifc.cli import ExitCode
from ifc.diagnostics import Diagnostic, Severity
from ifc.policy import compile_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="lint policies, trace flows statically, audit a workspace",
                       description="Check .flow policies: syntax, names, lints, static flow paths; with "
                       "--workspace, label every file and flag secrets that are not labelled secret.")
    p.add_argument("files", nargs="+", metavar="FILE", help="policy files")
    p.add_argument("--workspace", metavar="DIR", help="label every file under DIR and audit it")
    p.add_argument("--list", action="store_true", help="with --workspace: print every file and its label")
    p.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    p.add_argument("--fail-on", choices=("error", "warning"), default="error",
                   help="exit 1 when findings at or above this severity exist (default: error)")
    p.add_argument("--max-errors", type=int, default=50, metavar="N", help="show at most N diagnostics per file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ifc.cli.render import render_text

    threshold = Severity.ERROR if args.fail_on == "error" else Severity.WARNING
    all_diags: list[Diagnostic] = []
    sources: dict[str, str] = {}
    broken = False
    summaries = []
    audits = []
    for file in args.files:
        result = compile_file(file)
        for parsed in result.files:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                sources[parsed.path] = Path(parsed.path).read_text(encoding="utf-8")
        checked = check(result)
        diags = list(checked.diagnostics)
        if result.policy is None:
            broken = True
        elif args.workspace:
            audit = _audit(result.policy, Path(args.workspace), args.list)
            if audit is None:
                return ExitCode.USAGE
            audits.append((file, audit))
            diags.extend(audit.diagnostics)
        all_diags.extend(diags[: args.max_errors])
        hidden = len(diags) - args.max_errors
        summaries.append(_summary(file, result.policy, diags, hidden))
    if args.format == "json":
        json.dump({"diagnostics": [_diag_json(d) for d in all_diags],
                   "workspace": [_audit_json(f, a) for f, a in audits]}, sys.stdout, indent=2)
        print()
    elif args.format == "sarif":
        from ifc.check.sarif import to_sarif

        json.dump(to_sarif(all_diags, tool_version=__version__, rules=CODES, base_dir=Path.cwd()), sys.stdout,
                  indent=2)
        print()
    else:
        text = render_text(all_diags, sources)
        if text:
            print(text, end="" if text.endswith("\n") else "\n")
        for file, audit in audits:
            print(_audit_table(file, audit, args.workspace))
        for line in summaries:
            print(line)
    if broken:
        return ExitCode.USAGE
    if any(d.severity >= threshold for d in all_diags):
        return ExitCode.FINDINGS
    return ExitCode.OK


def _audit(policy, root: Path, want_files: bool):
    from ifc.check.workspace import audit_workspace

    if not root.is_dir():
        print(f"ifc check: error: workspace `{root}` is not a directory", file=sys.stderr)
        return None
    return audit_workspace(policy, root, want_files=want_files)


def _summary(file: str, policy, diags: list[Diagnostic], hidden: int) -> str:
    errors = sum(d.severity is Severity.ERROR for d in diags)
    warnings = sum(d.severity is Severity.WARNING for d in diags)
    notes = sum(d.severity is Severity.NOTE for d in diags)
    counts = f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    if notes:
        counts += f", {notes} note{'s' * (notes != 1)}"
    shape = ""
    if policy is not None:
        shape = (f" ({len(policy.file_rules)} file rules, {len(policy.endpoint_rules)} endpoint rules, "
                 f"{len(policy.flow_rules)} flow rules, {len(policy.agents_)} agent{'s' * (len(policy.agents_) != 1)})")
    more = f"; {hidden} more not shown (--max-errors)" if hidden > 0 else ""
    return f"{file}: {counts}{shape}{more}"


def _audit_table(file: str, audit, root: str) -> str:
    lines = [f"workspace {root}: {audit.total} files labelled by {file}"]
    width = max([len(label) for label, _ in audit.counts] + [5])
    lines.append(f"  {'label':<{width}}  files")
    lines += [f"  {label:<{width}}  {count:>5}" for label, count in audit.counts]
    if audit.files:
        lines.append("")
        lines += [f"  {label:<{width}}  {path}" for path, label in audit.files]
    for path, reason in audit.skipped:
        lines.append(f"  skipped {path}: {reason}")
    if audit.sentinels:
        lines += ["", "  served with sentinels (each value replaced in the sandbox; swapped back only on the way to "
                  "its binding's hosts):"]
        for found in audit.sentinels:
            if found.problem:
                lines.append(f"  {found.path}: {found.problem}")
                continue
            comments = f", {found.comments} comment(s)" if found.comments else ""
            lines.append(f"  {found.path} ({found.format}, {len(found.keys)} value(s){comments})")
            lines += [f"    {key}: {where}" for key, where in found.keys]
    return "\n".join(lines)


def _diag_json(d: Diagnostic) -> dict:
    return {
        "code": d.code, "severity": str(d.severity), "message": d.message, "help": d.help,
        "file": d.span.file, "line": d.span.line, "column": d.span.column,
        "end_line": d.span.end_line, "end_column": d.span.end_column,
        "related": [{"file": r.span.file, "line": r.span.line, "column": r.span.column, "message": r.message}
                    for r in d.related],
    }


def _audit_json(file: str, audit) -> dict:
    return {"policy": file, "total": audit.total, "counts": dict(audit.counts),
            "files": [{"path": p, "label": lbl} for p, lbl in audit.files],
            "skipped": [{"path": p, "reason": r} for p, r in audit.skipped],
            "sentinels": [{"path": s.path, "format": s.format, "problem": s.problem, "comments": s.comments,
                           "keys": [{"key": k, "to": w} for k, w in s.keys]} for s in audit.sentinels]}
