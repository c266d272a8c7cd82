"""The processes a microVM guest ran, as its control channel reported them, and which one a denial was.

Why this is needed: inside a microVM the workspace reaches the host over virtiofs and the network over
slirp forwards, neither of which carries the guest's pid, so the monitor sees the whole VM as one subject
(`session`). The guest daemon (`vmm/guest/ifc-guestd.c`) reports every exec and exit; `ifc run` writes them
here, in the run's `events.db`, with the host time they arrived. A denial is then matched by time to the
newest guest process alive when it was decided — exact for an agent that runs one command at a time, a
best guess when several run at once (all the candidates are kept). Tokens in an argv (a proxy URL) are
redacted before they are stored. The reports come from guest root,
outside the agent's reach, but they are attribution only: no decision ever depends on them.
"""

from __future__ import annotations

import json
import shlex
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ifc.monitor.attribution_log import AttributionLog, redacted_argv

SCHEMA = """
CREATE TABLE IF NOT EXISTS guest_processes (
    id INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    ppid INTEGER,
    uid INTEGER,
    argv TEXT NOT NULL,            -- JSON list; empty when the process was gone before it could be read
    started REAL NOT NULL,         -- host time the exec report arrived
    ended REAL,                    -- host time the exit report arrived
    status INTEGER                 -- the wait status
);
CREATE INDEX IF NOT EXISTS guest_processes_pid ON guest_processes(pid);
"""
# An exec report can reach the host a little after the file or network request the new process made (the
# two travel different paths out of the VM); a process that started this much after a denial still counts.
ARRIVAL_SLACK = 0.25


@dataclass(frozen=True)
class GuestProcess:
    pid: int
    ppid: int | None
    uid: int | None
    argv: tuple[str, ...]
    started: float
    ended: float | None = None
    status: int | None = None

    @property
    def command(self) -> str:
        return shlex.join(self.argv) if self.argv else f"(pid {self.pid}, exited before it could be read)"

    def alive_at(self, ts: float) -> bool:
        return self.started <= ts + ARRIVAL_SLACK and (self.ended is None or self.ended >= ts)


class GuestProcessLog(AttributionLog):
    """The writer, used by `ifc run`'s control-channel thread (its own connection to the run's log)."""

    def __init__(self, path: str | Path):
        super().__init__(path, SCHEMA)

    def started(self, pid: int, ppid: int | None, uid: int | None, argv: Sequence[str], ts: float | None = None):
        self._execute("INSERT INTO guest_processes (pid, ppid, uid, argv, started) VALUES (?, ?, ?, ?, ?)",
                      (pid, ppid, uid, redacted_argv(argv), time.time() if ts is None else ts))

    def ended(self, pid: int, status: int, ts: float | None = None) -> None:
        self._execute("UPDATE guest_processes SET ended = ?, status = ? WHERE id = (SELECT max(id) FROM "
                      "guest_processes WHERE pid = ? AND ended IS NULL)",
                      (time.time() if ts is None else ts, status, pid))

    def lost(self) -> None:
        """The guest kernel dropped process events: say so in the run's meta, which every report shows."""
        self._execute("INSERT OR REPLACE INTO meta VALUES ('guest_process_reports', ?)",
                      ("incomplete: the guest dropped process events, so some commands are missing",))


def read_guest_processes(db: sqlite3.Connection) -> list[GuestProcess]:
    """Every reported guest process, in exec order; [] for a log without the table (not a microVM run)."""
    try:
        rows = db.execute("SELECT pid, ppid, uid, argv, started, ended, status FROM guest_processes ORDER BY id")
        return [GuestProcess(pid, ppid, uid, tuple(json.loads(argv)), started, ended, status)
                for pid, ppid, uid, argv, started, ended, status in rows]
    except (sqlite3.DatabaseError, ValueError):
        return []


def attribute(processes: Iterable[GuestProcess], ts: float) -> list[GuestProcess]:
    """The agent's processes that may have made a request decided at `ts`, most likely first: those already
    running, newest first, then those whose exec report arrived just after (`ARRIVAL_SLACK`), earliest first.
    Root's are left out: in the guest only init and its helpers run as root, never the agent."""
    alive = [p for p in processes if p.alive_at(ts) and p.uid != 0]
    before = sorted((p for p in alive if p.started <= ts), key=lambda p: p.started, reverse=True)
    after = sorted((p for p in alive if p.started > ts), key=lambda p: p.started)
    return before + after
