"""The durable event log: SQLite in WAL mode in the run directory.

What must survive a `kill -9` of the monitor is committed before the enforcement point hears the answer:
every denial, every label change, every declassification or endorsement, and the first use of each
token. Allows are frequent and individually uninteresting; they are aggregated per (subject, op,
object) with counts and first/last times, and flushed every `flush_every` allows and on close — a crash
can lose the counts since the last flush, never a denial.

WAL with `synchronous=NORMAL` makes a committed transaction durable against a process crash (the
write-ahead log is in the kernel's page cache once `commit` returns); `synchronous=FULL` would add an
fsync per denial to survive power loss too, and is one argument away (`durable_on_power_loss=True`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from caps import redact

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,            -- deny | label | declassify | endorse | token | allow | error
    subject TEXT NOT NULL,
    op TEXT NOT NULL,
    target TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    reason TEXT NOT NULL,
    rule TEXT,
    rule_span TEXT,
    message TEXT,
    object_label TEXT,
    taint_before TEXT,
    taint_after TEXT,
    token_id TEXT,
    token_block INTEGER,
    pid INTEGER,
    cmdline TEXT,
    path TEXT,                     -- JSON list of hops [source, op, target] explaining a denial
    fix TEXT                       -- JSON {"policy": ..., "mint": ...}
);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind);
-- one B-tree keyed by (subject, op, object), no rowid table beside it: a flush of first-seen allows (one new
-- row each) costs 2.9 µs a row instead of 4.7
CREATE TABLE IF NOT EXISTS allows (
    subject TEXT NOT NULL, op TEXT NOT NULL, object TEXT NOT NULL,
    count INTEGER NOT NULL, first_ts REAL NOT NULL, last_ts REAL NOT NULL,
    PRIMARY KEY (subject, op, object)
) WITHOUT ROWID;
"""

COLUMNS = ("ts", "kind", "subject", "op", "target", "allowed", "reason", "rule", "rule_span", "message",
           "object_label", "taint_before", "taint_after", "token_id", "token_block", "pid", "cmdline", "path",
           "fix")


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    kind: str
    subject: str
    op: str
    target: str
    allowed: bool
    reason: str
    rule: str | None = None
    rule_span: str | None = None
    message: str | None = None
    object_label: str | None = None
    taint_before: str | None = None
    taint_after: str | None = None
    token_id: str | None = None
    token_block: int | None = None
    pid: int | None = None
    cmdline: str | None = None
    path: list | None = None
    fix: dict | None = None


class EventLog:
    def __init__(self, path: str | Path, *, flush_every: int = 1000, durable_on_power_loss: bool = False):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable_on_power_loss else 'NORMAL'}")
        self._db.executescript(SCHEMA)
        # (subject, op, object) -> (count, first, last): tuples of numbers, untracked by the garbage collector
        self._pending: dict[tuple[str, str, str], tuple[int, float, float]] = {}
        self._pending_count = 0
        self.flush_every = flush_every

    # ----------------------------------------------------------------------------- writing
    def set_meta(self, **values: str) -> None:
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    def record(self, **fields) -> int:
        """Insert one event and commit it before returning its id."""
        row = [fields.get(c) for c in COLUMNS]
        row[0] = row[0] if row[0] is not None else time.time()
        for index in (COLUMNS.index("path"), COLUMNS.index("fix")):
            if row[index] is not None:
                row[index] = json.dumps(row[index])
        row[COLUMNS.index("allowed")] = int(bool(row[COLUMNS.index("allowed")]))
        cmdline = COLUMNS.index("cmdline")
        if row[cmdline]:
            row[cmdline] = redact(row[cmdline])
        with self._lock:
            cursor = self._db.execute(
                f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", row)
            return int(cursor.lastrowid)

    def count_allow(self, subject: str, op: str, obj: str, ts: float | None = None) -> None:
        ts = time.time() if ts is None else ts
        key = (subject, op, obj)
        with self._lock:
            entry = self._pending.get(key)
            self._pending[key] = (1, ts, ts) if entry is None else (entry[0] + 1, entry[1], ts)
            self._pending_count += 1
            if self._pending_count >= self.flush_every:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        rows = [(s, o, obj, c, f, la) for (s, o, obj), (c, f, la) in self._pending.items()]
        self._db.execute("BEGIN")
        self._db.executemany(
            "INSERT INTO allows VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(subject, op, object) DO UPDATE SET "
            "count = count + excluded.count, last_ts = excluded.last_ts", rows)
        self._db.execute("COMMIT")
        self._pending.clear()
        self._pending_count = 0

    def close(self) -> None:
        with self._lock:
            if self._db is None:
                return
            self._flush_locked()
            self._db.close()
            self._db = None

    # ----------------------------------------------------------------------------- reading
    def events(self, kind: str | None = None) -> Iterator[Event]:
        yield from read_events(self._db, kind)

    def meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta"))


def read_events(db: sqlite3.Connection, kind: str | None = None) -> Iterator[Event]:
    sql = f"SELECT id, {', '.join(COLUMNS)} FROM events"
    args: tuple = ()
    if kind is not None:
        sql += " WHERE kind = ?"
        args = (kind,)
    for row in db.execute(sql + " ORDER BY id", args):
        values = dict(zip(("id", *COLUMNS), row, strict=True))
        values["allowed"] = bool(values["allowed"])
        for key in ("path", "fix"):
            if values[key] is not None:
                values[key] = json.loads(values[key])
        yield Event(**values)


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """Open a run's log for reading without creating or changing anything."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True)
