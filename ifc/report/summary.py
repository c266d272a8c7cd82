"""What a reviewer reads first: counts, the most denied targets, and the taint timeline.

Computed from a loaded `Run`, shared by every renderer so the Markdown, HTML and JSON agree.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from ifc.report.load import Run

TOP_TARGETS = 10
KIND_ORDER = ("deny", "label", "declassify", "endorse", "token", "hostcfg")


@dataclass(frozen=True)
class TimelineEntry:
    """One step of the taint story: a label change, a declassification or endorsement, or a denial."""

    id: int
    ts: float
    kind: str
    subject: str
    op: str
    target: str
    text: str
    label: str | None  # the object's label after a label change; the object's label for a denial
    taint: str | None  # the run's taint at that moment, when the log has it


@dataclass(frozen=True)
class Summary:
    kind_counts: tuple[tuple[str, int], ...]
    allows_total: int
    allows_distinct: int
    top_denied: tuple[tuple[str, int], ...]
    timeline: tuple[TimelineEntry, ...]
    first_ts: float | None
    last_ts: float | None


def summarize(run: Run) -> Summary:
    counts = dict.fromkeys(KIND_ORDER, 0)
    counts.update(run.kind_counts)
    top = Counter(d.target for d in run.denials)
    timeline = [TimelineEntry(e.id, e.ts, "label", e.subject, e.op, e.target, e.reason, e.label, e.taint)
                for e in run.labels]
    timeline += [TimelineEntry(e.id, e.ts, e.kind, e.subject, e.op, e.target, e.reason, None, e.taint)
                 for e in run.declassifications]
    timeline += [TimelineEntry(d.id, d.ts, "deny", d.subject, d.op, d.target, d.reason, d.object_label, d.taint)
                 for d in run.denials]
    timeline.sort(key=lambda e: e.id)
    times = [e.ts for e in (*run.denials, *run.labels, *run.declassifications, *run.tokens, *run.hostcfg,
                            *run.cutoffs, *run.others)]
    times += [t for a in run.allows for t in (a.first_ts, a.last_ts)]
    return Summary(
        kind_counts=tuple(counts.items()),
        allows_total=sum(a.count for a in run.allows),
        allows_distinct=len(run.allows),
        top_denied=tuple(sorted(top.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_TARGETS]),
        timeline=tuple(timeline),
        first_ts=min(times) if times else None,
        last_ts=max(times) if times else None,
    )


def iso(ts: float | None) -> str:
    """UTC, to the millisecond: `2026-11-26T23:30:56.727Z`."""
    if ts is None:
        return "unknown"
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError, TypeError):
        return f"{ts} (not a valid time)"


def meta_value(key: str, value: str) -> str:
    """A run's meta value for display: `started` is a Unix time, shown like every other time here."""
    if key == "started":
        try:
            return iso(float(value))
        except ValueError:
            return value
    return value


OTHER_COMMAND_CHARS = 60  # the other candidates of a guest attribution are context: a long script is cut


def shortened(command: str, limit: int = OTHER_COMMAND_CHARS) -> str:
    flat = " ".join(command.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def guest_command(guest: tuple[str, ...]) -> str:
    """`cat .env (matched by time; 2 more running)`: the guest attribution of a denial, on one line."""
    if not guest:
        return ""
    also = f"; {len(guest) - 1} more running" if guest[1:] else ""
    return f"{guest[0]} (matched by time{also})"


def cutoff_line(cutoff) -> str:
    """`the agent lost its model https://api.anthropic.com:443 at 2026-...Z because it read `.env` (`secret`): ...`"""
    return f"the agent lost its model {cutoff.endpoint} at {iso(cutoff.ts)} because {cutoff.reason}"


def hostcfg_line(change) -> str:
    """`allowed write .git/config: git configuration: ...`: one change to host-executed configuration, on one line."""
    verdict = "allowed" if change.allowed else "DENIED"
    why = change.reason if change.allowed or not change.message else change.message
    return f"{verdict} {change.op} {change.target} by {change.subject}: {why}"


def process(pid: int | None, cmdline: str | None) -> str:
    """`pid 4242: python x.py`, or `unknown` for what the log does not say."""
    who = f"pid {pid}" if pid is not None else "pid unknown"
    return f"{who}: {cmdline}" if cmdline else (who if pid is not None else "unknown")
