"""Read a run directory, read-only, into plain dataclasses.

A run directory is what a sandbox run or `ifc decide --run-dir` leaves: `events.db` (the event log,
`ifc.monitor.events`) and a copy of the policy as `policy.flow`. Only `events.db` is
needed; it is opened read-only (see `_open`), so reading a report never creates, migrates or locks
anything, and a log that a live run is still writing can be read too.

Everything here is data from the log, which holds attacker-influenced strings (paths, hosts, command
lines): renderers must escape every field. Names that were not valid UTF-8 come back exactly as the monitor saw
them (`str` with `surrogateescape` surrogates, see `ifc.monitor.events`); renderers show those bytes as
`\\xNN` (`ifc.report.svg.clean`), and the JSON report keeps them as `\\udcNN` escapes.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path

from caps import redact
from ifc.errors import UserError
from ifc.monitor.egressowners import owner_of, read_egress_owners
from ifc.monitor.events import from_sql, open_readonly, read_events, read_meta
from ifc.monitor.guestprocs import attribute, read_guest_processes
from ifc.monitor.provenance import Hop, draw

EVENTS_DB = "events.db"
POLICY_COPY = "policy.flow"
GUEST_CANDIDATES = 4  # guest commands listed per denial


class ReportError(UserError):
    """The run directory cannot be read; `message` is one line for `ifc report: error: ...`."""


@dataclass(frozen=True)
class Denial:
    id: int
    ts: float
    subject: str
    op: str
    target: str
    reason: str
    rule: str | None = None
    rule_span: str | None = None
    rule_source: str | None = None  # the rule's line, from the run's copy of the policy
    message: str | None = None
    object_label: str | None = None
    taint: str | None = None  # the run's taint when it asked
    token_id: str | None = None
    token_block: int | None = None
    pid: int | None = None
    cmdline: str | None = None
    path: tuple[Hop, ...] = ()
    fix_policy: str | None = None
    fix_mint: str | None = None
    fix_lower: tuple[str, ...] = ()  # `ifc labels WS --lower ...` for labels a write floated up
    fix_named: tuple[str, ...] = ()  # files whose blocking label the policy gives by name
    # microVM runs: the guest commands alive when it was decided, most likely first (see ifc.monitor.guestprocs)
    guest: tuple[str, ...] = ()
    # namespace runs, egress: the hook's peer (`egress from ...`) when `pid`/`cmdline` name the sandbox process
    # that held the connection (ifc.monitor.egressowners: exact, from the host kernel's socket table)
    relayed_from: str | None = None

    @property
    def explanation(self) -> str:
        return draw(self.path)


@dataclass(frozen=True)
class ModelCutoff:
    """The agent lost its own model (an `as model` endpoint): `ts` is when (the read that raised the taint past
    the endpoint's clearance), `reason` says what was read and which rule refuses (`ifc.monitor.cutoff`)."""

    id: int
    ts: float
    subject: str
    endpoint: str
    reason: str
    rule: str | None = None
    rule_span: str | None = None
    message: str | None = None
    taint: str | None = None
    path: tuple[Hop, ...] = ()
    fix_lower: tuple[str, ...] = ()
    fix_named: tuple[str, ...] = ()

    @property
    def explanation(self) -> str:
        return draw(self.path)


@dataclass(frozen=True)
class LabelChange:
    id: int
    ts: float
    subject: str
    op: str
    target: str
    label: str | None
    reason: str
    taint: str | None = None  # the run's taint, when the log has it
    pid: int | None = None
    cmdline: str | None = None


@dataclass(frozen=True)
class Declassification:
    """A declassification or an endorsement (`kind`), made through a capability the policy names."""

    id: int
    ts: float
    kind: str
    subject: str
    op: str
    target: str
    reason: str
    message: str | None = None
    taint: str | None = None
    pid: int | None = None
    cmdline: str | None = None


@dataclass(frozen=True)
class HostConfigChange:
    """A change to host-executed configuration (`ifc.policy.hostcfg`), allowed or not: the monitor logs each one
    as an event of its own, since an allowed one is otherwise only a count and a tool on the host will run it."""

    id: int
    ts: float
    subject: str
    op: str
    target: str
    allowed: bool
    reason: str  # `KIND: why the monitor decided so`
    message: str | None = None  # the policy's (or the list's) words, for a refusal
    taint: str | None = None
    pid: int | None = None
    cmdline: str | None = None


@dataclass(frozen=True)
class TokenUse:
    id: int
    ts: float
    subject: str
    token_id: str
    reason: str
    pid: int | None = None
    cmdline: str | None = None


@dataclass(frozen=True)
class OtherEvent:
    """An event of a kind this report does not know (a newer monitor); listed, never dropped."""

    id: int
    ts: float
    kind: str
    subject: str
    op: str
    target: str
    allowed: bool
    reason: str


@dataclass(frozen=True)
class SentinelsServed:
    """A secret file served with sentinels (`ifc.secretfiles`): how many of its values were replaced the first
    time the sandbox saw them, and their keys (never the values). Also listed among `others` in reports."""

    id: int
    ts: float
    target: str
    replaced: int
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class AllowCount:
    subject: str
    op: str
    object: str
    count: int
    first_ts: float
    last_ts: float


@dataclass(frozen=True)
class Run:
    path: str
    meta: dict[str, str]
    denials: tuple[Denial, ...] = ()
    labels: tuple[LabelChange, ...] = ()
    declassifications: tuple[Declassification, ...] = ()
    tokens: tuple[TokenUse, ...] = ()
    hostcfg: tuple[HostConfigChange, ...] = ()
    cutoffs: tuple[ModelCutoff, ...] = ()
    others: tuple[OtherEvent, ...] = ()
    allows: tuple[AllowCount, ...] = ()
    sentinels: tuple[SentinelsServed, ...] = ()
    kind_counts: dict[str, int] = field(default_factory=dict)  # events per kind, in log order of first use

    @property
    def name(self) -> str:
        return Path(self.path).name or self.path


# ------------------------------------------------------------------------------------------- loading


def load_run(run_dir: str | Path) -> Run:
    """Read `run_dir` or raise `ReportError` with a one-line reason."""
    root = Path(run_dir)
    db_path = root / EVENTS_DB
    try:
        if not root.exists():
            raise ReportError(f"`{run_dir}` does not exist")
        if not root.is_dir():
            raise ReportError(f"`{run_dir}` is not a directory: give the run directory that holds {EVENTS_DB}")
        if not db_path.is_file():
            raise ReportError(f"`{run_dir}` is not a run directory: it has no {EVENTS_DB}")
    except OSError as exc:
        raise ReportError(f"cannot read `{run_dir}`: {exc.strerror or exc}") from None
    try:
        db = _open(db_path)
    except sqlite3.Error as exc:
        raise ReportError(f"cannot open `{db_path}`: {_sqlite_reason(exc)}") from None
    try:
        return _load(root, db)
    except sqlite3.Error as exc:
        raise ReportError(f"`{db_path}` is not a readable event log: {_sqlite_reason(exc)}") from None
    except (ValueError, TypeError, OverflowError) as exc:  # a column holding what the schema does not allow
        raise ReportError(f"`{db_path}` has a malformed event: {exc}") from None
    finally:
        db.close()


def _open(db_path: Path) -> sqlite3.Connection:
    """Read-only. A finished run (no `-wal` beside the log) is opened `immutable`: SQLite then creates no
    `-wal`/`-shm` files either, so the directory is left exactly as it was. A live run's log is opened
    `mode=ro`, sharing the writer's WAL index so that committed events are seen."""
    if Path(f"{db_path}-wal").exists():
        return open_readonly(db_path)
    return sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro&immutable=1", uri=True)


def _load(root: Path, db: sqlite3.Connection) -> Run:
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = [t for t in ("meta", "events") if t not in tables]
    if missing:
        raise ReportError(f"`{root / EVENTS_DB}` is not an ifc event log: no `{missing[0]}` table")
    meta = read_meta(db)
    policy_lines = _policy_lines(root)
    processes = read_guest_processes(db) if "guest_processes" in tables else []
    owners = read_egress_owners(db) if "egress_owners" in tables else {}
    denials, labels, declass, tokens, hostcfg, cutoffs, others = [], [], [], [], [], [], []
    sentinels: list[SentinelsServed] = []
    counts: dict[str, int] = {}
    for ev in read_events(db):
        ev = replace(ev, ts=float(ev.ts), pid=_int(ev.pid), token_block=_int(ev.token_block),
                     cmdline=redact(ev.cmdline) if ev.cmdline else ev.cmdline)  # logs from before redaction too
        counts[ev.kind] = counts.get(ev.kind, 0) + 1
        taint = ev.taint_after or ev.taint_before
        if ev.kind == "deny":
            fix = ev.fix if isinstance(ev.fix, dict) else {}
            owner = owner_of(owners, ev.cmdline, ev.ts)
            if owner is not None:
                ev = replace(ev, pid=owner.pid, cmdline=redact(owner.command))
            denials.append(Denial(
                id=ev.id, ts=ev.ts, subject=ev.subject, op=ev.op, target=ev.target, reason=ev.reason,
                rule=ev.rule, rule_span=ev.rule_span, rule_source=_rule_source(ev.rule_span, meta, policy_lines),
                message=ev.message, object_label=ev.object_label, taint=ev.taint_before or ev.taint_after,
                token_id=ev.token_id, token_block=ev.token_block, pid=ev.pid, cmdline=ev.cmdline,
                path=_hops(ev.path, ev.id, root), fix_policy=_text(fix.get("policy")), fix_mint=_text(fix.get("mint")),
                fix_lower=_texts(fix.get("lower")), fix_named=_texts(fix.get("named")),
                guest=tuple(redact(p.command) for p in attribute(processes, ev.ts)[:GUEST_CANDIDATES]),
                relayed_from=owner.peer if owner is not None else None))
        elif ev.kind == "label":
            labels.append(LabelChange(ev.id, ev.ts, ev.subject, ev.op, ev.target, ev.object_label, ev.reason,
                                      taint, ev.pid, ev.cmdline))
        elif ev.kind in ("declassify", "endorse"):
            declass.append(Declassification(ev.id, ev.ts, ev.kind, ev.subject, ev.op, ev.target, ev.reason,
                                            ev.message, taint, ev.pid, ev.cmdline))
        elif ev.kind == "hostcfg":
            hostcfg.append(HostConfigChange(ev.id, ev.ts, ev.subject, ev.op, ev.target, ev.allowed, ev.reason,
                                            ev.message, ev.taint_before or ev.taint_after, ev.pid, ev.cmdline))
        elif ev.kind == "cutoff":
            fix = ev.fix if isinstance(ev.fix, dict) else {}
            cutoffs.append(ModelCutoff(ev.id, ev.ts, ev.subject, ev.target, ev.reason, ev.rule, ev.rule_span,
                                       ev.message, ev.taint_before or ev.taint_after, _hops(ev.path, ev.id, root),
                                       _texts(fix.get("lower")), _texts(fix.get("named"))))
        elif ev.kind == "token":
            tokens.append(TokenUse(ev.id, ev.ts, ev.subject, ev.token_id or ev.target, ev.reason, ev.pid,
                                   ev.cmdline))
        else:
            if ev.kind == "sentinels" and isinstance(ev.path, dict):
                with contextlib.suppress(TypeError, ValueError):
                    sentinels.append(SentinelsServed(ev.id, ev.ts, ev.target, int(ev.path.get("replaced", 0)),
                                                     tuple(map(str, ev.path.get("keys") or ()))))
            others.append(OtherEvent(ev.id, ev.ts, ev.kind, ev.subject, ev.op, ev.target, ev.allowed, ev.reason))
    allows: list[AllowCount] = []
    if "allows" in tables:
        rows = db.execute("SELECT subject, op, object, count, first_ts, last_ts FROM allows "
                          "ORDER BY first_ts, subject, op, object")
        allows = [AllowCount(str(from_sql(s)), str(from_sql(o)), str(from_sql(obj)), int(c), float(f), float(la))
                  for s, o, obj, c, f, la in rows]
    return Run(path=str(root), meta=meta, denials=tuple(denials), labels=tuple(labels),
               declassifications=tuple(declass), tokens=tuple(tokens), hostcfg=tuple(hostcfg),
               cutoffs=tuple(sorted(cutoffs, key=lambda c: c.ts)), others=tuple(others),
               allows=tuple(allows), kind_counts=counts, sentinels=tuple(sentinels))


def _hops(path, event_id: int, root: Path) -> tuple[Hop, ...]:
    if not path:
        return ()
    if not isinstance(path, list) or not all(
            isinstance(h, list) and len(h) == 3 and all(isinstance(x, str) for x in h) for h in path):
        raise ReportError(f"`{root / EVENTS_DB}` has a malformed provenance path in event {event_id}")
    return tuple(Hop(*h) for h in path)


def _int(value) -> int | None:
    return None if value is None else int(value)


def _text(value) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def _texts(value) -> tuple[str, ...]:
    """A list of strings from a fix, or nothing (a log written before it had them, or a malformed one)."""
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def _policy_lines(root: Path) -> list[str]:
    try:
        return (root / POLICY_COPY).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def _rule_source(span: str | None, meta: dict[str, str], lines: list[str]) -> str | None:
    """The policy line a `FILE:LINE:COL` span points at, if FILE is the policy the run copied."""
    if not span or not lines:
        return None
    file, _, rest = span.rpartition(":")
    file, _, line = file.rpartition(":")
    if not line.isdigit() or not rest.isdigit() or file not in (meta.get("policy"), POLICY_COPY):
        return None
    number = int(line)
    return lines[number - 1].strip() if 1 <= number <= len(lines) else None


def _sqlite_reason(exc: sqlite3.Error) -> str:
    return str(exc).splitlines()[0] if str(exc) else "sqlite error"
