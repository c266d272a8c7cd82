"""`ifc labels WORKSPACE [--policy P] [--format text|json]`: the labels writes floated up in WORKSPACE,
each with why (which run, when, which subject running which command, carrying data from where), and every
declassification made by hand.

`ifc labels WORKSPACE --lower PATH [--from LABEL] --to LABEL --reason TEXT`: lower PATH's floated label to
LABEL (a policy label expression: `internal`, `secret + customer`, `public, trusted`; without an integrity
level it keeps the current one). With `--from`, only if PATH's label is still exactly that one: a run may
raise it between your review and the command, and what you never saw is then not lowered with it (the
commands a denial suggests carry it). A declassification a person makes: recorded with who, when, the old and new
label and the reason, shown by `ifc labels`, and in force from the next run on. It cannot lower below
the label the policy gives PATH by name, and it cannot raise.

The labels live outside the workspace, in the user's state directory (`$IFC_STATE_DIR`, else
`$XDG_STATE_HOME/ifc`, else `~/.local/state/ifc`), where the sandbox cannot reach them.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
import sys

from ifc.cli import ExitCode
from ifc.cli.common import Usage, error, load_policy_and_agent
from ifc.diagnostics import display
from ifc.policy.labels import Label

EPILOG = """exit codes:
  0  listed, or lowered
  2  usage error: no such workspace, no label to lower, a label the policy does not know, an unreadable store,
     a label that is no longer what --from says
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("labels", help="list a workspace's floated labels and why; lower one (declassify, logged)",
                       description=__doc__.split("\n\n", 1)[0].split(": ", 1)[1] + "\n\n" + __doc__.split("\n\n", 1)[1],
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workspace", metavar="WORKSPACE", help="the workspace directory (as given to `ifc run`)")
    p.add_argument("--policy", metavar="P",
                   help="names labels and parses --to (default: the policy of the workspace's last run)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--lower", metavar="PATH", help="the file (relative to WORKSPACE) whose label to lower")
    p.add_argument("--from", dest="expect", metavar="LABEL",
                   help="with --lower: the label you reviewed; nothing is lowered if the file's is another now")
    p.add_argument("--to", metavar="LABEL", help="with --lower: the new label")
    p.add_argument("--reason", metavar="TEXT", help="with --lower: why this is safe to release (recorded)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ifc.monitor.labelstore import LabelStoreError
    from ifc.monitor.workspace_store import open_store, store_path

    try:
        lowering = _check_lowering(args)
        if not os.path.isdir(args.workspace):
            raise Usage(f"workspace `{args.workspace}` is not a directory")
        if not lowering and not store_path(args.workspace).exists():
            return _print(args, {"workspace": os.path.realpath(args.workspace), "labels": [], "names": [],
                                 "declassified": []})
        store = open_store(args.workspace)
    except (Usage, LabelStoreError) as exc:
        return _error(getattr(exc, "message", str(exc)), getattr(exc, "help", None))
    try:
        lattice = _lattice(args.policy or store.meta("policy"), required=lowering)
        if lowering:
            return _lower(args, store, lattice)
        return _print(args, _listing(store, lattice))
    except (Usage, LabelStoreError) as exc:
        return _error(getattr(exc, "message", str(exc)), getattr(exc, "help", None))
    finally:
        store.close()


def _check_lowering(args: argparse.Namespace) -> bool:
    given = [flag for flag, value in (("--from", args.expect), ("--to", args.to), ("--reason", args.reason))
             if value is not None]
    if args.lower is None:
        if given:
            raise Usage(f"{', '.join(given)}: only with --lower PATH")
        return False
    if args.to is None or not (args.reason or "").strip():
        raise Usage("--lower PATH needs --to LABEL and --reason TEXT (a declassification says why)")
    if os.path.isabs(args.lower) or ".." in args.lower.split("/"):
        raise Usage(f"--lower `{args.lower}`: give the path relative to the workspace")
    return True


def _lattice(policy: str | None, required: bool):
    if policy is None:
        if required:
            raise Usage("no policy to read the label from", "pass --policy P")
        return None
    try:
        return load_policy_and_agent(policy, "none")[0].lattice
    except Usage:
        if required:
            raise
        return None  # the last run's policy is gone: list with raw tags


def parse_label(text: str, lattice, keep_integrity: int):
    """A label expression as `ifc labels --to` takes it: names joined by `+`, then `, LEVEL`."""
    from ifc.policy.labels import Label

    secrecy: frozenset[str] = frozenset()
    integrity = None
    for part in (p.strip() for chunk in text.split(",") for p in chunk.split("+")):
        kind = lattice.kind_of(part)
        if kind == "secrecy":
            secrecy |= lattice.tag_closure[part]
        elif kind == "integrity":
            integrity = lattice.integrity_rank[part]
        elif kind == "label":
            named = lattice.named_labels[part]
            secrecy |= named.secrecy
            integrity = named.integrity if integrity is None else min(integrity, named.integrity)
        elif part != lattice.chains_bottom_name():
            raise Usage(f"--to: `{part}` is not a label of the policy", "labels: " + ", ".join(lattice.all_names()))
    return Label(secrecy, keep_integrity if integrity is None else integrity)


def _lower(args, store, lattice) -> int:
    from ifc.monitor.labelstore import LabelChanged

    path = args.lower.strip("/")
    current, named = store.get(path), store.named(path)
    if current is None and named is not None:  # a name a tainted run made or removed
        current = Label(named, lattice.top_integrity)
    if current is None:
        raise Usage(f"`{path}` has no floated label in `{args.workspace}`", "see `ifc labels WORKSPACE`")
    new = parse_label(args.to, lattice, current.integrity)
    expect = None if args.expect is None else parse_label(args.expect, lattice, current.integrity)
    who = os.environ.get("SUDO_USER") or getpass.getuser()
    try:
        old = store.lower(path, new, who=who, reason=args.reason.strip(), expect=expect)
    except LabelChanged as exc:
        raise Usage(f"`{path}` is labelled `{_describe(exc.current, lattice, None)}`, not "
                    f"`{_describe(expect, lattice, None)}` as --from says: a run raised it since; nothing was lowered",
                    f"review it (`ifc labels {args.workspace}`) and lower again with --from what it is now") from None
    print(f"ifc labels: {path}: `{_describe(old, lattice, None)}` -> `{_describe(new, lattice, None)}` "
          f"(by {who}, recorded)")
    return ExitCode.OK


def _describe(label, lattice, fallback: str | None) -> str:
    """The label as the policy names it; raw tags and rank when there is no policy, or when the store was
    written under a policy with more integrity levels than this one."""
    if label is None:
        return ""
    if lattice is not None and 0 <= label.integrity < max(1, len(lattice.integrity_levels)):
        return lattice.describe(label)
    return fallback or ("+".join(sorted(label.secrecy)) or "public") + f"/{label.integrity}"


def _listing(store, lattice) -> dict:
    changes = store.history()
    by_object: dict[int | None, list] = {}
    for change in changes:
        by_object.setdefault(change.object, []).append(change)
    labels = []
    for path, label in sorted(store.snapshot().items()):
        oid = store.object_of(path)
        history = by_object.get(oid, [])
        named = next((c.label for c in reversed(history) if c.label and c.new == label), None)
        full = os.path.join(store.root, path)
        exists = os.path.lexists(full)  # gone: renamed or deleted outside a run
        labels.append({"path": path, "label": _describe(label, lattice, named), "exists": exists,
                       "directory": os.path.isdir(full) and not os.path.islink(full),
                       "tags": sorted(label.secrecy),
                       "integrity": label.integrity, "why": [_change(c, lattice) for c in history]})
    declassified = [_change(c, lattice) for c in changes if c.kind == "lower"]
    top = lattice.top_integrity if lattice is not None else 1  # names carry secrecy only
    names = [{"path": path, "label": _describe(Label(secrecy, top), lattice, None), "tags": sorted(secrecy),
              "exists": os.path.lexists(os.path.join(store.root, path))}
             for path, secrecy in sorted(store.named_snapshot().items())]
    return {"workspace": store.meta("workspace"), "store": str(store.path), "labels": labels,
            "names": names, "declassified": declassified}


def _change(c, lattice) -> dict:
    return {"kind": c.kind, "path": c.path, "when": _when(c.ts), "run": c.run, "subject": c.subject,
            "command": c.command, "source": c.source, "old": _describe(c.old, lattice, None) or None,
            "new": _describe(c.new, lattice, c.label) or None, "who": c.who, "reason": c.reason}


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds")


def _print(args, listing: dict) -> int:
    if args.format == "json":
        json.dump(listing, sys.stdout, indent=2)
        print()
        return ExitCode.OK
    lines = [] if listing["labels"] or listing["names"] else [f"{listing['workspace']}: no floated labels"]
    for entry in listing["labels"]:
        gone = "" if entry["exists"] else " (no such file now: kept, a file made there later gets it)"
        names = " (a directory: listing it reads this)" if entry["directory"] else ""
        lines.append(f"{entry['path'] or '/'}: {entry['label']}{gone}{names}")
        lines += ["  " + _sentence(c) for c in entry["why"]]
    if listing["names"]:
        lines.append("names a tainted run made or removed (a lookup of one, finding it or not, reads this):")
        lines += [f"  {e['path']}: {e['label']}" + ("" if e["exists"] else " (removed)") for e in listing["names"]]
    if listing["declassified"]:
        lines.append("declassified by hand:")
        lines += ["  " + _sentence(c) for c in listing["declassified"]]
    for line in lines:  # names and commands are a run's: escaped, so none can rewrite what the reviewer sees
        print(display(line))
    return ExitCode.OK


def _sentence(c: dict) -> str:
    """One change as a line: `raised to secret 2025-...: run R, session running `cp .env x`, secret from .env`."""
    if c["kind"] == "lower":
        return f"{c['when']} lowered {c['path']} from {c['old']} to {c['new']} by {c['who']}: {c['reason']}"
    verb = {"raise": "raised to", "rename": "renamed here", "link": "linked here", "adopt": "found here"}[c["kind"]]
    what = f"{verb} {c['new']}" if c["kind"] == "raise" else f"{verb} ({c['new']})"
    parts = [f"run {c['run']}" if c["run"] else None,
             f"by {c['subject']}" + (f" running `{c['command']}`" if c["command"] else "") if c["subject"] else None,
             c["source"], c["reason"]]
    return f"{c['when']} {what}: " + ", ".join(p for p in parts if p)


def _error(message: str, help: str | None = None) -> int:
    return error("labels", message, help)
