"""Labels that writes floated up, kept per *object* so they follow renames and hard links.

The policy gives every path a base label; a write by a tainted subject raises the written object's
label (copying `.env` into `notes.txt` makes `notes.txt` secret). That raise belongs to the content,
not the name: renaming the file carries it, a hard link shares it, and it survives across runs when the
store is a file (SQLite). Labels only go up here; nothing but deleting the last name forgets one.

`version` counts changes, so a decision that depended on labels can be cached exactly until it moves.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from ifc.policy.labels import Label

_SCHEMA = """
CREATE TABLE IF NOT EXISTS names (path TEXT PRIMARY KEY, object INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS objects (id INTEGER PRIMARY KEY, secrecy TEXT NOT NULL, integrity INTEGER NOT NULL);
"""


class LabelStore:
    """Path → object → floated label. In memory, or persisted in SQLite when given a file."""

    def __init__(self, path: str | Path | None = None):
        self._lock = threading.Lock()
        self._names: dict[str, int] = {}
        self._objects: dict[int, Label] = {}
        self._next = 1
        self.version = 0
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            for oid, secrecy, integrity in self._db.execute("SELECT id, secrecy, integrity FROM objects"):
                self._objects[oid] = Label(frozenset(filter(None, secrecy.split(","))), integrity)
                self._next = max(self._next, oid + 1)
            self._names = dict(self._db.execute("SELECT path, object FROM names"))

    def get(self, path: str) -> Label | None:
        oid = self._names.get(path)
        return None if oid is None else self._objects.get(oid)

    def snapshot(self) -> dict[str, Label]:
        return {path: self._objects[oid] for path, oid in self._names.items() if oid in self._objects}

    def raise_to(self, path: str, label: Label) -> None:
        with self._lock:
            self.version += 1
            oid = self._names.get(path)
            if oid is None:
                oid = self._next
                self._next += 1
                self._names[path] = oid
                self._write("INSERT OR REPLACE INTO names VALUES (?, ?)", (path, oid))
            self._objects[oid] = label
            self._write("INSERT OR REPLACE INTO objects VALUES (?, ?, ?)",
                        (oid, ",".join(sorted(label.secrecy)), label.integrity))

    def rename(self, src: str, dst: str, dst_label: Label | None = None) -> None:
        """Move the name; the object (and its label) goes with it. Renaming over a file drops that name.

        Renaming a name onto itself, or onto another name of the same object, changes nothing (POSIX)."""
        with self._lock:
            if src == dst or (src in self._names and self._names.get(dst) == self._names[src]):
                return
            self.version += 1
            self._drop(dst)
            oid = self._names.pop(src, None)
            self._write("DELETE FROM names WHERE path = ?", (src,))
            for child in [p for p in self._names if p.startswith(src + "/")]:  # a directory's contents move too
                moved = dst + child[len(src):]
                self._names[moved] = self._names.pop(child)
                self._write("UPDATE names SET path = ? WHERE path = ?", (moved, child))
            if oid is not None:
                self._names[dst] = oid
                self._write("INSERT OR REPLACE INTO names VALUES (?, ?)", (dst, oid))

    def link(self, src: str, dst: str) -> None:
        """A hard link shares the object: a later raise through either name is seen through both.

        link(2) never replaces an existing name (EEXIST), so an existing `dst` keeps its own object."""
        with self._lock:
            oid = self._names.get(src)
            if oid is None or src == dst or dst in self._names:
                return
            self.version += 1
            self._names[dst] = oid
            self._write("INSERT OR REPLACE INTO names VALUES (?, ?)", (dst, oid))

    def delete(self, path: str) -> None:
        with self._lock:
            if path in self._names:
                self.version += 1
            self._drop(path)

    def _drop(self, path: str) -> None:
        oid = self._names.pop(path, None)
        if oid is None:
            return
        self._write("DELETE FROM names WHERE path = ?", (path,))
        if oid not in self._names.values():
            self._objects.pop(oid, None)
            self._write("DELETE FROM objects WHERE id = ?", (oid,))

    def _write(self, sql: str, args: tuple) -> None:
        if self._db is not None:
            self._db.execute(sql, args)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
