"""What the sandbox is told about its own denials: the run's most recent ones, each with its reason, the rule
that made it and a hint the agent can act on.

Why: a refusal reaches the agent as a bare errno ("Permission denied"), an HTTP 403 or a refused DNS answer,
and the enforcement points cannot print into its terminal. The FUSE mount serves this text as a read-only
file (`ifc.enforce.fs.DENIALS_NAME`, its path in the agent's `IFC_DENIALS`), in both isolations and under
`ifc mount`.

What it may hold: only what the run itself asked for and what its own policy answered — the operation, the
object it named (a path, an endpoint, a DNS name), the reason, the rule (its text and line, not the host's
path of the policy), the policy's message, the agent's own grants for that operation, and the objects whose
labels make up the run's taint (names the run has read, never their content). Nothing of a file or a secret
value is in a decision, so nothing of one is here. Names are printed with control characters and bytes that
are not UTF-8 escaped (`\\xNN`), so a name cannot forge a line.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

LIMIT = 50  # denials kept (the newest): enough to find the one that just happened, small to read

_GRANTS_SHOWN = 12
# refusals that are no flow question: what the agent can do about each
_RULE_HINTS = {
    "containment: symlink": "a symlink may point only inside the workspace or into read-only system trees (/usr, "
                            "/bin, /lib*, /sbin, /opt); use a relative link inside the workspace",
    "containment: hard link": "this file has names outside the workspace and could not be copied before the "
                              "change: write a copy of it under a new name instead",
    "containment: device": "device nodes cannot be made in the workspace (FIFOs and sockets can)",
    "containment: xattr": "`security.*` and `trusted.*` attributes cannot be set in the workspace",
    "containment: address": "loopback, private, link-local and metadata addresses are reachable only where the "
                            "policy names them by address",
    "containment: ip literal": "connect by the host name the policy lists, not by an IP address",
    "backing: permission": "the file on the host is immutable or append-only: only the user can change that",
    "error": "an internal error in the sandbox refused this; tell the user (the run's mount.log has details)",
    "ifc: denials file": "this file is the sandbox's own read-only report; it cannot be changed or removed",
}


@dataclass(frozen=True)
class DenialNote:
    """One denial, as the agent may read it."""

    ts: float
    subject: str
    op: str
    target: str
    reason: str
    rule: str | None
    rule_at: str | None  # `policy.flow:LINE:COL` (the file's name only)
    message: str | None
    hint: str | None


def note(decision, agent=None, needed: str | None = None) -> DenialNote:
    """The note for a denial `decision` (an `ifc.monitor.Decision`), with the hint for its kind of rule;
    `needed` is the grant its operation needs (a rename needs `write`)."""
    rule = decision.rule
    at = None
    if decision.rule_span:
        where, sep, pos = str(decision.rule_span).rpartition(":")
        file, _, line = where.rpartition(":")
        at = f"{os.path.basename(file)}:{line}:{pos}" if sep and file else str(decision.rule_span)
    return DenialNote(time.time(), decision.subject, decision.op, decision.target, decision.reason, rule, at,
                      decision.message, _hint(decision, agent, needed or decision.op))


def error_note(subject: str, op: str, target: str, reason: str) -> DenialNote:
    return DenialNote(time.time(), subject, op, target, reason, "error", None, None, _RULE_HINTS["error"])


def _hint(decision, agent, needed: str) -> str | None:
    rule = decision.rule or ""
    if rule in _RULE_HINTS:
        return _RULE_HINTS[rule]
    if rule.startswith("egress: "):
        return "the egress hook refused this request itself (it could not be relayed safely); the reason says why"
    if rule.startswith("token"):
        # the verifier lists the refusing block's rights in the reason (`caps.verifier`: "(it allows `op X`, ...)")
        allowed = _token_rights(decision.reason, needed)
        if allowed is None:
            return ("the token presented does not grant it (the run's token carries the agent's grants; a process "
                    "with its own IFC_TOKEN has only that token's rights)")
        return _grants_hint("the token presented (the run's, unless this process has its own IFC_TOKEN)", needed,
                            allowed)
    if rule.startswith("agent ") and agent is not None:
        return _grants_hint(f"agent `{agent.name}`", needed, agent.patterns(needed))
    if decision.tainted_by:
        sources = "; ".join(f"`{part}` from {_clean(obj)}" for part, obj in decision.tainted_by)
        return (f"what this run has read decides where its data may go and what it may change: {sources}. A "
                "run's taint never goes down; a new run that does not read it starts clean")
    return None


def _token_rights(reason: str, needed: str) -> list[str] | None:
    _, found, rights = reason.partition("(it allows ")
    if not found:
        return None
    return [pattern for op, pattern in re.findall(r"`(\w+) ([^`]+)`", rights) if op == needed]


def _grants_hint(who: str, needed: str, patterns) -> str:
    patterns = sorted(patterns)
    if not patterns:
        return f"{who} has no `{needed}` grant at all: ask the user if the task needs one"
    shown = ", ".join(patterns[:_GRANTS_SHOWN]) + (", ..." if len(patterns) > _GRANTS_SHOWN else "")
    return f"{who} may {needed} only: {shown} — work there, or ask the user if the task needs more"


def _clean(text: str) -> str:
    """One line of text: control characters and bytes that are not UTF-8 (surrogate escapes) as `\\xNN`."""
    out = []
    for ch in str(text):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\x{code & 0xFF:02x}" if code < 0x100 else f"\\u{code:04x}")
        elif ch == "\\":
            out.append("\\\\")
        else:
            out.append(ch)
    return "".join(out)


class RecentDenials:
    """The run's newest denials (bounded), and how many there were in all. Callers hold the monitor's lock."""

    def __init__(self, limit: int = LIMIT):
        self.notes: deque[DenialNote] = deque(maxlen=limit)
        self.total = 0

    def add(self, item: DenialNote) -> None:
        self.notes.append(item)
        self.total += 1

    def snapshot(self) -> tuple[int, tuple[DenialNote, ...]]:
        return self.total, tuple(self.notes)


def render(total: int, notes: Iterable[DenialNote]) -> bytes:
    """The text the mount serves: a header, then one block per denial, newest last."""
    notes = list(notes)
    lines = [f"# ifc-sandbox: this run's denials, newest last ({len(notes)} shown of {total}).",
             "# Each reached the program as EACCES/EPERM, an HTTP 403 (X-Ifc-Denied) or a refused DNS answer."]
    if not notes:
        lines.append("# none so far")
    for item in notes:
        who = "" if item.subject == "session" else f"  [{_clean(item.subject)}]"
        lines.append("")
        lines.append(f"{time.strftime('%H:%M:%S', time.localtime(item.ts))}  denied {item.op} "
                     f"{_clean(item.target)}{who}")
        lines.append(f"  reason: {_clean(item.reason)}")
        if item.rule:
            lines.append(f"  rule:   {_clean(item.rule)}" + (f" ({_clean(item.rule_at)})" if item.rule_at else ""))
        if item.message:
            lines.append(f"  why:    {_clean(item.message)}")
        if item.hint:
            lines.append(f"  hint:   {_clean(item.hint)}")
    return ("\n".join(lines) + "\n").encode("utf-8")
