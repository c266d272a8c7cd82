"""`ifc init [--preset KIND] [DIR]`: write a starter policy for the repository at DIR (default: .).

It surveys the repository (`ifc.starter`: its kind, git remotes, package configuration, directories), labels
what the workspace audit finds secret-looking, checks the result with `ifc check`'s stages and the audit, and
writes it to DIR/.ifc/policy.flow (or --output), never over an existing file without --force.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ifc.cli import ExitCode
from ifc.cli.common import error

EPILOG = """exit codes:
  0  written; `ifc check POLICY --workspace DIR` passes with no errors or warnings
  2  usage error: DIR is no directory, the policy exists (use --force), the output is where the agent may write

example: ifc init --preset python ~/repo && ifc run --policy ~/repo/.ifc/policy.flow --workspace ~/repo --egress -- sh
"""


def register(sub: argparse._SubParsersAction) -> None:
    from ifc.starter import PRESETS

    p = sub.add_parser("init", help="write a starter policy for a repository",
                       description=__doc__.split("\n\n", 1)[0].split(": ", 1)[1] + "\n\n" + __doc__.split("\n\n", 1)[1],
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", nargs="?", default=".", metavar="DIR", help="the repository (default: .)")
    p.add_argument("--preset", action="append", choices=sorted(PRESETS), metavar="KIND",
                   help="the kind of project (" + ", ".join(sorted(PRESETS)) + "; repeatable); default: what "
                   "DIR's files say (pyproject.toml, package.json, ...)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="where to write it (default: DIR/.ifc/policy.flow); inside DIR only under .ifc/")
    p.add_argument("--force", action="store_true", help="replace an existing policy")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ifc.starter import DEFAULT_OUTPUT, StarterError, build

    root = Path(os.path.realpath(args.directory))
    if not root.is_dir():
        return error("init", f"`{args.directory}` is not a directory")
    output = Path(os.path.realpath(args.output)) if args.output else root / DEFAULT_OUTPUT
    guarded = root / DEFAULT_OUTPUT.parent
    if (output == root or root in output.parents) and guarded not in output.parents:
        return error("init", f"`{args.output}` is inside the repository, where the agent may write its own policy",
                     f"write it under {guarded}/ (no grant reaches it) or outside the repository")
    if output.exists() and not args.force:
        return error("init", f"`{output}` exists", "review or remove it, or pass --force to replace it")
    try:
        starter = build(root, args.preset or (), os.environ, output)
    except StarterError as exc:
        return error("init", str(exc))
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.tmp")
    partial.write_text(starter.text, encoding="utf-8")
    os.replace(partial, output)
    found = starter.survey
    facts = [", ".join(found.presets) or "no known project kind",
             f"forges: {', '.join(found.forges) or 'none'}", f"packages: {', '.join(found.packages) or 'none'}",
             f"{len(found.secrets)} secret-looking file(s) labelled secret"]
    print(f"ifc init: wrote {output} ({'; '.join(facts)})", file=sys.stderr)
    print(f"ifc init: next: ifc check {output} --workspace {root}", file=sys.stderr)
    return ExitCode.OK
