"""A writer of one attribution table in the run's log (which process made a connection, which ran in the guest).

Its own connection, shared by the threads of `ifc run` that record (a relay per connection, the control channel)
under one lock; WAL, as the mount daemon and the hook write the same log from other processes. Attribution only:
no decision reads these tables, so `synchronous=NORMAL` is enough.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from caps import redact


class AttributionLog:
    def __init__(self, path: str | Path, schema: str):
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(schema)
        self._lock = threading.Lock()

    def _execute(self, sql: str, params: tuple) -> None:
        with self._lock:
            self._db.execute(sql, params)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def redacted_argv(argv: Sequence[str]) -> str:
    """An argv as stored: JSON, with every token in it redacted."""
    return json.dumps([redact(a) for a in argv])
