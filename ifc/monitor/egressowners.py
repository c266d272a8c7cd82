"""Which sandbox process made each egress connection, in `--isolation namespace`: recorded by `ifc run`'s relay,
read by the report to name the command behind an egress denial.

Why a table of its own: the egress hook sees only the relay's end of a connection (`egress from 127.0.0.1:PORT`,
the relay's address on the host), and it runs in the mount daemon, another process. The relay finds the process
holding the client's socket in the sandbox's namespaces (`vmm.sockowner`: the kernel's socket table, not
anything the sandbox says) and records it here, keyed by that same `127.0.0.1:PORT`, before it forwards a byte
to the hook; a denial is then matched exactly by its peer (and, as ports are reused, the newest record made
before it). Attribution only: no decision reads this table. Tokens in an argv are redacted before storing.
"""

from __future__ import annotations

import json
import shlex
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ifc.monitor.attribution_log import AttributionLog, redacted_argv

SCHEMA = """
CREATE TABLE IF NOT EXISTS egress_owners (
    id INTEGER PRIMARY KEY,
    peer TEXT NOT NULL,            -- the relay's address on the host, as the hook logs it (`egress from PEER`)
    pid INTEGER NOT NULL,          -- the sandbox process holding the client socket (host PID namespace)
    argv TEXT NOT NULL,            -- JSON list
    ts REAL NOT NULL               -- when the relay recorded it, before forwarding any byte
);
CREATE INDEX IF NOT EXISTS egress_owners_peer ON egress_owners(peer);
"""
PEER_PREFIX = "egress from "  # how the hook's events name a connection's peer (ifc.enforce.egress)


@dataclass(frozen=True)
class EgressOwner:
    peer: str
    pid: int
    argv: tuple[str, ...]
    ts: float

    @property
    def command(self) -> str:
        return shlex.join(self.argv) if self.argv else f"(pid {self.pid})"


class EgressOwnerLog(AttributionLog):
    """The writer, used by the relay threads of `ifc run --isolation namespace` (one connection, locked)."""

    def __init__(self, path: str | Path):
        super().__init__(path, SCHEMA)

    def record(self, peer: str, pid: int, argv: Sequence[str], ts: float | None = None) -> None:
        self._execute("INSERT INTO egress_owners (peer, pid, argv, ts) VALUES (?, ?, ?, ?)",
                      (peer, pid, redacted_argv(argv), time.time() if ts is None else ts))


def read_egress_owners(db: sqlite3.Connection) -> dict[str, list[EgressOwner]]:
    """Every record by peer, oldest first; {} for a log without the table (not a namespace run)."""
    out: dict[str, list[EgressOwner]] = {}
    try:
        for peer, pid, argv, ts in db.execute("SELECT peer, pid, argv, ts FROM egress_owners ORDER BY id"):
            out.setdefault(peer, []).append(EgressOwner(peer, pid, tuple(json.loads(argv)), float(ts)))
    except (sqlite3.DatabaseError, ValueError):
        return {}
    return out


def owner_of(owners: dict[str, list[EgressOwner]], cmdline: str | None, ts: float) -> EgressOwner | None:
    """The process behind an event the hook logged with `cmdline` `egress from PEER` at `ts`: the newest record
    for that peer made before it (the relay records before it forwards), or None."""
    if not cmdline or not cmdline.startswith(PEER_PREFIX):
        return None
    before = [o for o in owners.get(cmdline.removeprefix(PEER_PREFIX), ()) if o.ts <= ts]
    return before[-1] if before else None
