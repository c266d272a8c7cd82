"""`ifc decide --policy P OP TARGET [OP TARGET ...]`: a dry run of a sequence of operations.

Each step goes through the reference monitor, so the taint one step leaves is what the next step is
judged by — the same way a real run is judged. `session NAME` switches to another subject of the same run
(its own authority; the run's taint, which every subject of a run shares); `run NAME` starts a new run on the
same workspace (untainted, but it sees the labels earlier writes floated); with `--run-dir` the run's event
log and label store are written there for `ifc report`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ifc.cli import ExitCode
from ifc.cli.common import Usage, error, load_policy_and_agent, log_failures
from ifc.monitor import Decision, EventLog, LabelStore, Monitor, Request
from ifc.monitor.monitor import ALL_OPS, TWO_PATH_OPS

STEP_OPS = (*ALL_OPS, "session", "run")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "decide", help="dry-run a sequence of operations against a policy",
        description="Decide each OP TARGET in order, carrying the taint forward. OP is one of "
        + ", ".join(STEP_OPS) + ". TARGET is a workspace path, an endpoint (`smtp.gmail.com:587`, "
        "`https://api.github.com`), `OLD=>NEW` for rename and link, `SECRET@ENDPOINT` for send, a host "
        "name for dns, a subject name for session (same run, same taint), and a name for run (a new run on "
        "the same workspace: a clean taint, the floated labels). Exits 1 when any step is denied.",
        epilog="example: ifc decide --policy policies/default.flow read .env connect smtp.gmail.com:587")
    p.add_argument("--policy", required=True, metavar="P")
    p.add_argument("--agent", metavar="NAME",
                   help="whose grants apply (default: the policy's first agent; `none` checks flows only)")
    p.add_argument("--holds", action="append", default=[], metavar="CAPABILITY",
                   help="act as if holding this declassify/endorse capability (repeatable)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--run-dir", metavar="DIR", help="write the event log and label store here (for ifc report)")
    p.add_argument("steps", nargs="+", metavar="OP TARGET")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if len(args.steps) % 2:
        return _usage(f"`{args.steps[-1]}` has no target", "give operations as pairs: OP TARGET")
    pairs = list(zip(args.steps[::2], args.steps[1::2], strict=True))
    for op, _ in pairs:
        if op not in STEP_OPS:
            return _usage(f"unknown operation `{op}`", "operations are " + ", ".join(STEP_OPS))
    try:
        policy, agent = load_policy_and_agent(args.policy, args.agent)
    except Usage as exc:
        return _usage(exc.message, exc.help)
    for name in args.holds:
        if name not in policy.capabilities:
            return _usage(f"no capability `{name}` in {args.policy}")
    monitor = _monitor(policy, agent, args)
    decisions = []
    subject = "session"
    try:
        for op, target in pairs:
            if op == "session":
                subject = target
                continue
            if op == "run":
                monitor = Monitor(policy, agent=agent, held=monitor.held, labels=monitor.labels, log=monitor.log,
                                  policy_path=monitor.policy_path, audience=monitor.audience)
                subject = "session"
                continue
            dest = None
            if op in TWO_PATH_OPS:
                target, _, dest = target.partition("=>")
            decisions.append(monitor.decide(Request(op, target, subject=subject, dest=dest or None,
                                                    cmdline="ifc decide")))
    finally:
        monitor.close()
    if args.format == "json":
        json.dump({"policy": args.policy, "agent": agent.name if agent else None,
                   "steps": [d.to_dict() for d in decisions]}, sys.stdout, indent=2)
        print()
    else:
        print(f"policy {args.policy}" + (f", agent {agent.name}" if agent else ", flows only (no agent)"))
        for d in decisions:
            print(_render(d))
    failed = log_failures("decide", monitor.log)
    return failed or (ExitCode.FINDINGS if any(not d.allowed for d in decisions) else ExitCode.OK)


def _monitor(policy, agent, args) -> Monitor:
    held = frozenset(args.holds)
    if not args.run_dir:
        return Monitor(policy, agent=agent, held=held, policy_path=args.policy)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = EventLog(run_dir / "events.db")
    log.set_meta(policy=args.policy, policy_digest=policy.digest, agent=agent.name if agent else "",
                 source="ifc decide")
    (run_dir / "policy.flow").write_text(Path(args.policy).read_text(encoding="utf-8"), encoding="utf-8")
    return Monitor(policy, agent=agent, held=held, labels=LabelStore(run_dir / "labels.db"), log=log,
                   policy_path=args.policy, audience=run_dir.name)


def _render(d: Decision) -> str:
    verdict = "allow" if d.allowed else "DENY "
    who = "" if d.subject == "session" else f"[{d.subject}] "
    lines = [f"{d.step:>3}. {verdict} {who}{d.op} {d.target}"]
    if d.object_label:
        lines.append(f"       label:  {d.object_label}")
    lines.append(f"       why:    {d.reason}")
    if d.rule:
        lines.append(f"       rule:   {d.rule}" + (f"  ({d.rule_span})" if d.rule_span else ""))
    if d.message and not d.allowed:
        lines.append(f"       policy says: \"{d.message}\"")
    if d.capabilities_used:
        lines.append(f"       via:    {', '.join(d.capabilities_used)}")
    if d.taint_after != d.taint_before or not d.allowed:
        lines.append(f"       taint:  {d.taint_after}")
    if d.tainted_by and (not d.allowed or d.taint_after != d.taint_before):
        origin = ", ".join(f"{tag} from {obj}" for tag, obj in d.tainted_by)
        lines.append(f"       from:   {origin}")
    if d.path:
        lines.append(f"       path:   {d.explanation}")
    if d.cutoff is not None:
        lines.append("       model:  the agent's own model (`as model`): out of reach for the rest of the run")
    if d.fix and not d.allowed:
        for key, value in d.fix.items():
            for one in value if isinstance(value, list) else [value]:
                lines.append(f"       fix ({key}): {one}")
    return "\n".join(lines)


def _usage(message: str, help: str | None = None) -> int:
    return error("decide", message, help)
