"""The durable event log: SQLite in WAL mode in the run directory.

What must survive a `kill -9` of the monitor is committed before the enforcement point hears the answer:
every denial, every label change, every declassification or endorsement, and the first use of each
token. Allows are frequent and individually uninteresting; they are aggregated per (subject, op,
object) with counts and first/last times, and flushed every `flush_every` allows and on close — a crash
can lose the counts since the last flush, never a denial.

WAL with `synchronous=NORMAL` makes a committed transaction durable against a process crash (the
write-ahead log is in the kernel's page cache once `commit` returns); `synchronous=FULL` would add an
fsync per denial to survive power loss too, and is one argument away (`durable_on_power_loss=True`).

Text that is not valid UTF-8. File names reach the monitor from FUSE as `str` decoded with
`surrogateescape` (the name `b"\\xff"` is `"\\udcff"`), and SQLite text cannot hold a lone surrogate. Such a
value is stored as a BLOB of its generalized UTF-8 (`surrogatepass`): the column's storage class is the flag
(text stays TEXT, so ordinary logs are unchanged and readable by any SQLite tool), and every Python string
round-trips exactly — not only the surrogates `surrogateescape` makes, also a `\\ud800` that a JSON escape in
`ifc decide`'s input can carry, which `surrogateescape` could not encode. `from_sql` undoes it on reading;
`os.fsencode` of the result gives the name's bytes back.

Failures. Every write is one transaction: a single event commits alone, and a flush of the aggregated
allows is `BEGIN ... COMMIT` with `ROLLBACK` on any error, so a failed flush leaves the log usable, keeps
everything committed before it, and keeps its counts pending for the next flush. The exception still
reaches the caller (the monitor turns it into a denial that says so); `failures` counts them, and
`on_failure` tells whoever launched the log (`ifc mount` reports it to `ifc run`), since a denial that could
not be logged is missing from the report.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from caps import redact

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,            -- deny | label | declassify | endorse | token | allow | error | hostcfg
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


def to_sql(value):
    """`value` as SQLite can store it: text that is not valid UTF-8 becomes a BLOB (see the module's doc)."""
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass")
    return value


def from_sql(value):
    """The inverse of `to_sql`: a BLOB in a text column is text that was not valid UTF-8."""
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


@dataclass(frozen=True)
class LogFailure:
    """A write the log could not make: when, and SQLite's (or the encoder's) one-line reason."""

    ts: float
    reason: str


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
    def __init__(self, path: str | Path, *, flush_every: int = 1000, durable_on_power_loss: bool = False,
                 busy_timeout: float = 5.0):
        """`busy_timeout`: how long a write waits for another connection's lock on the file before it fails
        (and the monitor denies): decisions wait behind it, so it is short."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                   timeout=busy_timeout)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable_on_power_loss else 'NORMAL'}")
        self._db.executescript(SCHEMA)
        # (subject, op, object) -> (count, first, last): tuples of numbers, untracked by the garbage collector
        self._pending: dict[tuple[str, str, str], tuple[int, float, float]] = {}
        self._pending_count = 0
        self.flush_every = flush_every
        self.failures = 0
        self.first_failure: LogFailure | None = None
        self.on_failure: Callable[[LogFailure], None] | None = None  # called (under the lock) on each failure

    # ----------------------------------------------------------------------------- writing
    def set_meta(self, **values: str) -> None:
        with self._lock:
            self._transaction("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                              [(k, to_sql(v)) for k, v in values.items()])

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
        row = [to_sql(value) for value in row]
        with self._lock:
            try:  # one statement in autocommit mode: its own transaction, undone by SQLite if it fails
                cursor = self._db.execute(
                    f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", row)
            except Exception as exc:
                self._failed(exc)
                raise
            return int(cursor.lastrowid)

    def count_allow(self, subject: str, op: str, obj: str, ts: float | None = None, count: int = 1) -> None:
        ts = time.time() if ts is None else ts
        key = (subject, op, obj)
        with self._lock:
            entry = self._pending.get(key)
            self._pending[key] = (count, ts, ts) if entry is None else (entry[0] + count, entry[1], ts)
            self._pending_count += count
            if self._pending_count >= self.flush_every:
                try:
                    self._flush_locked()
                except Exception:  # the monitor denies this one: it must not be counted as an allow later
                    if entry is None:
                        del self._pending[key]
                    else:
                        self._pending[key] = entry
                    self._pending_count -= count
                    raise

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        rows = [(to_sql(s), to_sql(o), to_sql(obj), c, f, la) for (s, o, obj), (c, f, la) in self._pending.items()]
        self._transaction(
            "INSERT INTO allows VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(subject, op, object) DO UPDATE SET "
            "count = count + excluded.count, last_ts = excluded.last_ts", rows)
        self._pending.clear()  # only once committed: a failed flush keeps its counts for the next one
        self._pending_count = 0

    def _transaction(self, sql: str, rows: list[tuple]) -> None:
        """`sql` for every row, all or nothing. Called with the lock held."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL, SQLITE_IOERR)
                    self._db.execute("ROLLBACK")
                raise
        except Exception as exc:
            self._failed(exc)
            raise

    def _failed(self, exc: Exception) -> None:
        failure = LogFailure(time.time(), f"{type(exc).__name__}: {' '.join(str(exc).split()) or 'no reason given'}")
        self.failures += 1
        if self.first_failure is None:
            self.first_failure = failure
        if self.on_failure is not None:
            self.on_failure(failure)

    def close(self) -> None:
        """Flush and close. Never raises: a last flush that fails is counted in `failures` (and told to
        `on_failure`) like any other, and whoever owns the log reports it — a traceback at unmount would
        report nothing and leave the connection open."""
        with self._lock:
            if self._db is None:
                return
            try:
                with contextlib.suppress(Exception):  # counted by `_failed`
                    self._flush_locked()
            finally:
                self._db.close()
                self._db = None

    # ----------------------------------------------------------------------------- reading
    def events(self, kind: str | None = None) -> Iterator[Event]:
        yield from read_events(self._db, kind)

    def meta(self) -> dict[str, str]:
        return read_meta(self._db)


def read_meta(db: sqlite3.Connection) -> dict[str, str]:
    return {str(from_sql(k)): str(from_sql(v)) for k, v in db.execute("SELECT key, value FROM meta")}


def read_events(db: sqlite3.Connection, kind: str | None = None) -> Iterator[Event]:
    sql = f"SELECT id, {', '.join(COLUMNS)} FROM events"
    args: tuple = ()
    if kind is not None:
        sql += " WHERE kind = ?"
        args = (kind,)
    for row in db.execute(sql + " ORDER BY id", args):
        values = dict(zip(("id", *COLUMNS), map(from_sql, row), strict=True))
        values["allowed"] = bool(values["allowed"])
        for key in ("path", "fix"):
            if values[key] is not None:
                values[key] = json.loads(values[key])
        yield Event(**values)


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """Open a run's log for reading without creating or changing anything."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True)
