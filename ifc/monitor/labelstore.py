"""Labels that writes floated up, kept per *object* so they follow renames and hard links.

The policy gives every path a base label; a write by a tainted subject raises the written object's
label (copying `.env` into `notes.txt` makes `notes.txt` secret). That raise belongs to the content,
not the name: renaming the file carries it, a hard link shares it, and it survives across runs because
the store is the *workspace's* (see `ifc.monitor.workspace_store`), not the run's.

Labels only go up here, with two exceptions a person makes: deleting the last name of a file, and
`lower` (a declassification by hand, `ifc labels --lower`), which is recorded with who, when and why.

Crash safety: every change is one SQLite transaction, so a `kill -9` at any point leaves the store as it
was before the change or after it, never in between (a name without its object would read as unlabelled).
A workspace's store (`durable`) also waits for the disk at each commit, so a raise survives power loss —
except a deletion: forgetting a label is committed without the wait (`synchronous=NORMAL`; durable once the
WAL next reaches the disk). Power lost just after one may undo it, leaving a label on a name that no longer
exists, or that a later file gets: the safe direction (`ifc labels --lower` undoes it). Waiting made `rm -rf`
of files a tainted run wrote one fsync each (~180 µs on this machine's disk, issue 16).
A raise joins with what the *database* holds inside the transaction, so two runs raising the same object
at once never lower each other's raise. Other processes' commits are picked up on the next lookup
(`PRAGMA data_version`).

Renames and links made outside the sandbox (by the owner, between runs) are not seen by the monitor, so
each object also remembers the backing file's (device, inode): a name the store does not know whose inode
belongs to a labelled object is adopted into it. A reused inode can over-label a new file; that is the
safe direction, and `ifc labels --lower` undoes it.

`version` counts changes, so a decision that depended on labels can be cached exactly until it moves.
The monitor looks for other processes' commits once per decision (`refresh()`, before it keys its cache of
repeated decisions by `version`, so a repeat is never answered past a label another run raised) and then
`pinned()` keeps that one view for the whole decision. A change that finds nothing to
change (deleting or renaming a name that has no label, the common case) is no transaction and leaves
`version` alone.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ifc.monitor import wal_index
from ifc.monitor.events import from_sql, to_sql
from ifc.policy.labels import Label

_SCHEMA = """
CREATE TABLE IF NOT EXISTS names (path TEXT PRIMARY KEY, object INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS objects (id INTEGER PRIMARY KEY, secrecy TEXT NOT NULL, integrity INTEGER NOT NULL,
                                    dev INTEGER, ino INTEGER);
CREATE TABLE IF NOT EXISTS history (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL,
                                    object INTEGER, path TEXT NOT NULL, old TEXT, new TEXT, label TEXT,
                                    run TEXT, subject TEXT, command TEXT, source TEXT, who TEXT, reason TEXT);
CREATE INDEX IF NOT EXISTS history_object ON history (object);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS named (path TEXT PRIMARY KEY, secrecy TEXT NOT NULL);
"""

BUSY_TIMEOUT_MS = 30_000  # another run's transaction is milliseconds; waiting beats failing a write


def _retry_locked(step, seconds: float = BUSY_TIMEOUT_MS / 1000):
    """Run one step of opening the store, again while another process holds the lock: two runs opening a new
    store at once race on switching it to WAL, and SQLite answers that race with `database is locked` at once,
    without calling the busy handler."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _close(db: sqlite3.Connection, wal: wal_index.WalIndex | None) -> None:
    """Close a store's connection, then let go of its WAL index: in that order, since closing the index's
    descriptor while the connection is open would drop the connection's locks (see `ifc.monitor.wal_index`)."""
    try:
        db.close()
    finally:
        if wal is not None:
            wal_index.release(wal)


class LabelStoreError(Exception):
    """The store cannot be opened or a change cannot be made (the caller fails closed)."""


class LabelChanged(LabelStoreError):
    """A lowering's expected label is not the file's: `current` is what it has now."""

    def __init__(self, path: str, current: Label):
        super().__init__(f"`{path}` is no longer labelled as expected")
        self.path, self.current = path, current


@dataclass(frozen=True)
class Why:
    """Provenance of a label change, stored with it: who wrote, running what, carrying data from where."""

    subject: str | None = None
    command: str | None = None
    source: str | None = None  # `secret from .env`
    label: str | None = None  # the new label as the policy names it (`secret`), for `ifc labels`
    who: str | None = None  # a person lowering a label
    reason: str | None = None


@dataclass(frozen=True)
class Change:
    """One recorded label change (a row of `history`)."""

    seq: int
    ts: float
    kind: str  # raise | rename | link | adopt | lower
    path: str
    old: Label | None
    new: Label | None
    label: str | None
    run: str | None
    subject: str | None
    command: str | None
    source: str | None
    who: str | None
    reason: str | None
    object: int | None


def encode(label: Label | None) -> str | None:
    return None if label is None else ",".join(sorted(label.secrecy)) + "/" + str(label.integrity)


def decode(text: str | None) -> Label | None:
    if text is None:
        return None
    secrecy, _, integrity = text.rpartition("/")
    return Label(frozenset(filter(None, secrecy.split(","))), int(integrity))


class _Pinned:
    """`LabelStore.pinned()`: a class, not a generator, since it wraps decisions (~0.4 µs, not ~3)."""

    __slots__ = ("store",)

    def __init__(self, store: LabelStore):
        self.store = store

    def __enter__(self) -> LabelStore:
        self.store._lock.acquire()
        self.store._pinned += 1
        return self.store

    def __exit__(self, *exc) -> None:
        self.store._pinned -= 1
        self.store._lock.release()


class LabelStore:
    """Path → object → floated label. In memory, or persisted in SQLite when given a file.

    `root`: the backing directory the paths are relative to, so objects can be found again by inode after
    renames and links made outside the sandbox. `run`: names the run in each change's provenance."""

    def __init__(self, path: str | Path | None = None, *, root: str | Path | None = None, run: str | None = None,
                 durable: bool = False):
        self._lock = threading.RLock()
        self._durable = durable
        self._names: dict[str, int] = {}
        self._objects: dict[int, Label] = {}
        self._inodes: dict[tuple[int, int], int] = {}
        # names a tainted run made or removed, with the secrecy it held (`named`): whether they are there is its data
        self._named_by: dict[str, frozenset[str]] = {}
        # bookkeeping for the hot paths, derived from the three maps above (`_index`): the names each object
        # has, the inodes each object owns, and how many names lie beneath each directory prefix
        self._named: dict[int, set[str]] = {}
        self._inodes_of: dict[int, set[tuple[int, int]]] = {}
        self._beneath: dict[str, int] = {}
        self._pinned = 0
        self._wal: wal_index.WalIndex | None = None  # its header is read to skip `PRAGMA data_version`
        self._shm: int | None = None  # the WAL index's descriptor, read on every look
        self._shm_seen = b""
        self._closer: weakref.finalize | None = None  # closes the connection, then the index: closed or dropped
        self._pinned_view = _Pinned(self)
        self._next = 1
        self.version = 0
        # called, under the store's lock, whenever `version` moves: with the names whose label may have changed, or
        # None when any may have (another process's commit was loaded)
        self.on_change: list[Callable[[frozenset[str] | None], None]] = []
        self._touched: set[str] = set()  # names whose label the transaction under way changes
        self.root = None if root is None else os.fspath(root)
        self.run = run
        self.path = None if path is None else Path(path)
        self._db: sqlite3.Connection | None = None
        self._seen = 0
        self._depth = 0
        if path is not None:
            try:
                self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                           timeout=BUSY_TIMEOUT_MS / 1000)
                self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                mode = _retry_locked(lambda: self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0])
                # FULL: a committed raise survives power loss too, not only a killed process
                self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                _retry_locked(lambda: self._db.executescript(_SCHEMA))
                columns = {row[1] for row in self._db.execute("PRAGMA table_info(objects)")}
                for column in ("dev", "ino") if "dev" not in columns else ():  # a store from before inodes
                    self._db.execute(f"ALTER TABLE objects ADD COLUMN {column} INTEGER")
                self._load()
                self._record_inodes()
                self._wal = wal_index.acquire(self.path) if str(mode).lower() == "wal" else None
                self._shm = None if self._wal is None else self._wal.fd
                self._closer = weakref.finalize(self, _close, self._db, self._wal)
            except sqlite3.Error as exc:
                raise LabelStoreError(f"cannot open the label store `{path}`: {exc}") from None

    # ------------------------------------------------------------------------------------ reading
    def get(self, path: str) -> Label | None:
        with self._lock:
            if not self._pinned:
                self._sync()
            oid = self._names.get(path)
            if oid is None and self._inodes and self.root is not None:
                oid = self._adopt(path)
            return None if oid is None else self._objects.get(oid)

    def named(self, path: str) -> frozenset[str] | None:
        """The secrecy of the tainted run that made or removed the name `path` (`mark_named`), or None: a lookup of
        the name, finding it there or not, reads that."""
        with self._lock:
            if not self._pinned:
                self._sync()
            return self._named_by.get(path)

    def mark_named(self, path: str, secrecy: frozenset[str] | None) -> None:
        """A run holding `secrecy` made or removed the name `path` (joined with what was recorded: never lower);
        None: a run holding nothing beyond its directory's label made it again, so whether it is there says nothing
        of an earlier run's any more."""
        def joined() -> frozenset[str] | None:
            old = self._named_by.get(path)
            return None if secrecy is None else (old or frozenset()) | secrecy

        with self._lock:
            if not self._pinned:
                self._sync()
            if self._named_by.get(path) == joined():
                return  # nothing to record: no transaction
        with self._lock, self._transaction():  # again, on what the database holds
            self._set_named(path, joined())

    def named_snapshot(self) -> dict[str, frozenset[str]]:
        """Every name a tainted run made or removed, with what it held (`ifc labels` lists them)."""
        with self._lock:
            return dict(self._named_by)

    def _set_named(self, path: str, secrecy: frozenset[str] | None) -> None:
        """Record (None or nothing left: forget) what the name `path` says of the run that made or removed it; in a
        transaction."""
        if not secrecy:
            self._named_by.pop(path, None)
        else:
            self._named_by[path] = secrecy
        if self._db is not None:
            if not secrecy:
                self._db.execute("DELETE FROM named WHERE path = ?", (to_sql(path),))
            else:
                self._db.execute("INSERT OR REPLACE INTO named (path, secrecy) VALUES (?, ?)",
                                 (to_sql(path), ",".join(sorted(secrecy))))
        self._touched.add(path)

    def object_of(self, path: str) -> int | None:
        """The object `path` names (names of one object share its label and its history)."""
        return self._names.get(path)

    def names(self, path: str) -> frozenset[str]:
        """Every name of `path`'s object (hard links), `path` among them; just `path` when it has no object."""
        with self._lock:
            oid = self._names.get(path)
            return frozenset(self._named.get(oid, ())) | {path} if oid is not None else frozenset({path})

    def refresh(self) -> None:
        """Pick up what other processes committed (cheap when nothing was: see `_sync`)."""
        if self._db is not None:
            with self._lock:
                self._sync()

    def watch(self) -> tuple[int, bytes] | None:
        """How a reader outside this object tells that nobody has committed since the store last looked: the WAL
        index's descriptor and its header at that look (`_sync`; the descriptor is the store's, never to be
        closed by the reader), or None when the store has no database (then only this process changes it, and
        `on_change` says when). Raises LookupError for a database whose index cannot be read: such a store asks
        SQLite on every look, which nothing outside it can do."""
        with self._lock:
            if self._db is None:
                return None
            if self._shm is None or len(self._shm_seen) != wal_index.HEADER:
                raise LookupError("the label store's WAL index cannot be read")
            return self._shm, self._shm_seen

    def _moved(self, names: frozenset[str] | None) -> None:
        self.version += 1
        for moved in self.on_change:
            moved(names)

    def pinned(self) -> _Pinned:
        """One view of the store for a whole decision (a context manager), for a caller that has just called
        `refresh()`: no lookup inside looks for other processes' commits again, so none sees one made meanwhile.
        Changes inside still join with what the database holds under its write lock (`_transaction`)."""
        return self._pinned_view

    @contextlib.contextmanager
    def batch(self):
        """Several changes as one transaction (one commit, one `version` step): all of them or none."""
        with self._lock, self._transaction():
            yield self

    def snapshot(self) -> dict[str, Label]:
        with self._lock:
            self._sync()
            return {path: self._objects[oid] for path, oid in self._names.items() if oid in self._objects}

    def history(self, path: str | None = None) -> list[Change]:
        """Recorded changes, oldest first; for `path`, those of the object it names now (and of its old names)."""
        if self._db is None:
            return []
        sql = ("SELECT seq, ts, kind, path, old, new, label, run, subject, command, source, who, reason, object "
               "FROM history")
        args: tuple = ()
        if path is not None:
            sql += " WHERE path = ? OR object = (SELECT object FROM names WHERE path = ?)"
            args = (to_sql(path), to_sql(path))
        rows = self._db.execute(sql + " ORDER BY seq", args).fetchall()
        return [Change(r[0], r[1], r[2], from_sql(r[3]), decode(r[4]), decode(r[5]), *map(from_sql, r[6:]))
                for r in rows]

    def meta(self, key: str) -> str | None:
        if self._db is None:
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    # ------------------------------------------------------------------------------------ changes
    def raise_to(self, path: str, label: Label, why: Why | None = None) -> None:
        """Make `path`'s object at least `label` (joined with what the database holds: never lower)."""
        with self._lock, self._transaction():
            oid = self._names.get(path)
            old = None if oid is None else self._objects.get(oid)
            if oid is None:
                oid = self._new_object()
                self._put_name(path, oid)
            new = label if old is None else old.join(label)
            self._put_object(oid, new, self._inode(path))
            self._log("raise", path, oid, old, new, why)

    def moves(self, src: str, dst: str) -> bool:
        """Whether renaming `src` to `dst` changes what the store holds (a label on either name or beneath `src`)."""
        with self._lock:
            if not self._pinned:
                self._sync()
            return src in self._names or dst in self._names or src + "/" in self._beneath

    def rename(self, src: str, dst: str, dst_label: Label | None = None, why: Why | None = None) -> None:
        """Move the name; the object (and its label) goes with it. Renaming over a file drops that name.

        Renaming a name onto itself, or onto another name of the same object, changes nothing (POSIX)."""
        if not self.moves(src, dst):
            return  # nothing labelled moves: no transaction (most renames in a workspace)
        with self._lock, self._transaction():
            if src == dst or (src in self._names and self._names.get(dst) == self._names[src]):
                return
            self._drop(dst)
            oid = self._names.get(src)
            if oid is not None:
                self._del_name(src)
            children = [p for p in self._names if p.startswith(src + "/")] if src + "/" in self._beneath else ()
            for child in children:  # a directory's contents move too
                moved, coid = dst + child[len(src):], self._names[child]
                self._del_name(child)
                self._put_name(moved, coid)
            if oid is not None:
                self._put_name(dst, oid)
                self._log("rename", dst, oid, None, self._objects.get(oid), why, reason=f"from {src}")

    def link(self, src: str, dst: str, why: Why | None = None) -> None:
        """A hard link shares the object: a later raise through either name is seen through both.

        link(2) never replaces an existing name (EEXIST), so an existing `dst` keeps its own object."""
        with self._lock, self._transaction():
            oid = self._names.get(src)
            if oid is None or src == dst or dst in self._names:
                return
            self._put_name(dst, oid)
            self._log("link", dst, oid, None, self._objects.get(oid), why, reason=f"to {src}")

    def delete(self, path: str) -> None:
        with self._lock:
            if not self._pinned:
                self._sync()
            if path not in self._names:
                return  # nothing labelled goes: no transaction (most deletions in a workspace)
        with self._lock, self._transaction(wait_for_disk=False):
            self._drop(path)

    def lower(self, path: str, label: Label, who: str, reason: str, expect: Label | None = None) -> Label:
        """A declassification a person makes: set `path`'s object to `label` (below what it has), recorded.
        Returns the old label. Raises `LabelStoreError` when `path` has no floated label or `label` is
        not below it (that would be a raise, which only writes make).

        Checked and made in one transaction, on the label as committed: a raise another run commits meanwhile is
        part of the returned (printed, recorded) old label, or lands on top of the new one, never dropped unseen.
        `expect`: the label the person reviewed; when the file's is another (a run raised it since), nothing is
        lowered (`LabelChanged`), so what they never saw is not declassified with what they did."""
        with self._lock, self._transaction():
            oid = self._names.get(path)
            if oid is None and self.root is not None:
                oid = self._adopt(path)
            old = None if oid is None else self._objects.get(oid)
            named = self._named_by.get(path)
            if old is None and named is not None:  # only a name a tainted run made or removed: lower that
                old = Label(named, label.integrity)
                if expect is not None and old != expect:
                    raise LabelChanged(path, old)
                self._set_named(path, named & label.secrecy)
                self._log("lower", path, None, old, label, Why(who=who, reason=reason))
                return old
            if old is None:
                raise LabelStoreError(f"`{path}` has no floated label")
            if expect is not None and old != expect:
                raise LabelChanged(path, old)
            if not label.flows_to(old):
                raise LabelStoreError(f"`{path}`: the new label is not below the current one")
            self._put_object(oid, label, None)
            if named is not None and not named <= label.secrecy:  # the person saw the name too: it goes as low
                self._set_named(path, named & label.secrecy)
            self._log("lower", path, oid, old, label, Why(who=who, reason=reason))
        return old

    def set_meta(self, **values: str) -> None:
        if self._db is not None:
            with self._lock, self._transaction():
                self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())

    def close(self) -> None:
        if self._db is not None:
            try:
                self._record_inodes()
            finally:
                self._db = self._shm = None
                if self._closer is not None:
                    self._closer()

    # ------------------------------------------------------------------------------------ internals
    @contextlib.contextmanager
    def _transaction(self, wait_for_disk: bool = True):
        """One transaction around a change (a nested call joins the outer one). On any error it rolls back
        and the in-memory view is reloaded from the database, so memory never claims what was not committed.
        `wait_for_disk=False`: a durable store commits it without syncing (a deletion, see the module's
        docstring)."""
        if self._depth:
            yield
            return
        self._depth = 1
        self._touched = set()
        lazy = self._durable and not wait_for_disk and self._db is not None
        try:
            if lazy:
                self._db.execute("PRAGMA synchronous=NORMAL")
            if self._db is not None:
                self._db.execute("BEGIN IMMEDIATE")
                self._sync()  # under the write lock: what another run committed is the base of this change
            yield
            if self._db is not None:
                self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                self._load()
            if isinstance(exc, sqlite3.Error):
                raise LabelStoreError(f"label store `{self.path}`: {exc}") from exc
            raise
        finally:
            self._depth = 0
            if lazy:  # raises wait for the disk again (or the store fails: never a lazy raise)
                try:
                    self._db.execute("PRAGMA synchronous=FULL")
                except sqlite3.Error as exc:
                    raise LabelStoreError(f"label store `{self.path}`: {exc}") from exc
        if self._db is not None:  # the commit moved the WAL index: look now, so `watch` is this view's own
            with contextlib.suppress(sqlite3.Error, OSError):  # (else the next look does)
                self._sync()
        self._moved(frozenset(self._touched))

    def _sync(self) -> None:
        """Reload when another process committed since we last looked (runs share the workspace's store).

        Every decision looks, and `PRAGMA data_version` costs a statement and two lock system calls (~3.6 µs),
        so the look first reads the header of SQLite's WAL index (https://sqlite.org/walformat.html; pread, not
        mapped: SQLite truncates the file when it rebuilds it, and a mapped page past the end would kill the
        daemon with SIGBUS). Every commit, by any connection, rewrites the header (its change counter `iChange`
        and `mxFrame` move); while its bytes are what they were at the last look, nothing was committed and
        there is nothing to ask; when they differ, the pragma decides. Both copies are compared: a writer
        writes the second first, so one killed between the two leaves a committed transaction with the first
        copy unchanged (the next reader's recovery rebuilds the header; the pragma is what starts one). A commit
        landing while the header is read is seen now or at the next look, like one landing just after it. A
        short read just means "ask"."""
        if self._db is None:
            return
        header = b""
        if self._shm is not None:  # nobody committed since the last look: nothing to ask SQLite
            header = os.pread(self._shm, wal_index.HEADER, 0)
            if len(header) == wal_index.HEADER and header == self._shm_seen:
                return
        if self._db.execute("PRAGMA data_version").fetchone()[0] != self._seen:
            self._load()  # records the version of the snapshot it read
            self._moved(None)
        # the header read before the pragma (a commit after that read shows at the next look), and kept only once
        # the view is current: a look that failed asks again (`test_a_look_that_failed_is_made_again`)
        self._shm_seen = header

    def _load(self) -> None:
        """Replace the in-memory view with the database's, every table read from one snapshot.

        Why one: outside a transaction each statement is its own snapshot, and another run's commit landing
        between the read of `objects` and that of `names` gave a view with a name but not its object. The name
        read as unlabelled, and with no lock to re-sync under (the version read last already counted the commit)
        the object's id was handed out again to this run's next new object, whose raise then overwrote the other
        run's label (`test_a_store_opened_while_another_run_commits_never_lowers_a_label`)."""
        own = not self._db.in_transaction
        if own:
            self._db.execute("BEGIN")  # deferred: a read transaction, the snapshot every statement below sees
        try:
            objects: dict[int, Label] = {}
            inodes: dict[tuple[int, int], int] = {}
            for oid, secrecy, integrity, dev, ino in self._db.execute(
                    "SELECT id, secrecy, integrity, dev, ino FROM objects"):
                objects[oid] = Label(frozenset(filter(None, secrecy.split(","))), integrity)
                if dev is not None:
                    inodes[(dev, ino)] = oid
            names = {from_sql(path): oid for path, oid in self._db.execute("SELECT path, object FROM names")}
            named = {from_sql(path): frozenset(filter(None, secrecy.split(",")))
                     for path, secrecy in self._db.execute("SELECT path, secrecy FROM named")}
            # ids are never reused: a deleted object's history stays its own, not a later file's
            recorded = self._db.execute("SELECT MAX(object) FROM history").fetchone()[0] or 0
            seen = self._db.execute("PRAGMA data_version").fetchone()[0]
        finally:
            if own:
                self._db.execute("COMMIT")  # ends the read; nothing was written
        self._objects, self._inodes, self._names, self._named_by = objects, inodes, names, named
        self._next = max(max(objects, default=0), recorded) + 1
        self._index()
        self._seen = seen

    def _index(self) -> None:
        """Rebuild the bookkeeping of `_named`, `_inodes_of` and `_beneath` from the maps (after a reload)."""
        self._named, self._inodes_of, self._beneath = {}, {}, {}
        for path, oid in self._names.items():
            self._count(path, oid, 1)
        for inode, oid in self._inodes.items():
            self._inodes_of.setdefault(oid, set()).add(inode)

    def _count(self, path: str, oid: int, step: int) -> None:
        names = self._named.setdefault(oid, set())
        if step > 0:
            names.add(path)
        else:
            names.discard(path)
        if not names:
            del self._named[oid]
        cut = path.find("/")
        while cut != -1:
            prefix = path[:cut + 1]
            left = self._beneath.get(prefix, 0) + step
            if left:
                self._beneath[prefix] = left
            else:
                del self._beneath[prefix]
            cut = path.find("/", cut + 1)

    def _new_object(self) -> int:
        oid, self._next = self._next, self._next + 1
        return oid

    def _put_name(self, path: str, oid: int) -> None:
        old = self._names.get(path)
        if old is not None:
            self._count(path, old, -1)
        self._names[path] = oid
        self._count(path, oid, 1)
        self._touched.add(path)
        if self._db is not None:
            self._db.execute("INSERT OR REPLACE INTO names VALUES (?, ?)", (to_sql(path), oid))

    def _del_name(self, path: str) -> None:
        old = self._names.pop(path, None)
        if old is not None:
            self._count(path, old, -1)
            self._touched.add(path)
        if self._db is not None:
            self._db.execute("DELETE FROM names WHERE path = ?", (to_sql(path),))

    def _put_object(self, oid: int, label: Label, inode: tuple[int, int] | None) -> None:
        if self._objects.get(oid) != label:
            self._touched.update(self._named.get(oid, ()))
        self._objects[oid] = label
        if inode is not None:
            before = self._inodes.get(inode)
            if before is not None and before != oid:
                self._inodes_of.get(before, set()).discard(inode)
            self._inodes[inode] = oid
            self._inodes_of.setdefault(oid, set()).add(inode)
        if self._db is not None:
            self._db.execute("INSERT INTO objects (id, secrecy, integrity, dev, ino) VALUES (?, ?, ?, ?, ?) "
                             "ON CONFLICT (id) DO UPDATE SET secrecy = excluded.secrecy, integrity = "
                             "excluded.integrity, dev = coalesce(excluded.dev, dev), ino = coalesce(excluded.ino, ino)",
                             (oid, ",".join(sorted(label.secrecy)), label.integrity, *(inode or (None, None))))

    def _drop(self, path: str) -> None:
        """Forget a name; its object goes with its last name, unless the file has other links on disk
        (made outside the sandbox, so not in `names`): then the object stays, found by its inode."""
        oid = self._names.get(path)
        if oid is None:
            return
        self._del_name(path)
        if self._named.get(oid):
            return
        st = self._stat(path)
        if st is not None and st.st_nlink > 1 and (st.st_dev, st.st_ino) in self._inodes:
            return
        self._objects.pop(oid, None)
        for inode in self._inodes_of.pop(oid, ()):
            if self._inodes.get(inode) == oid:
                del self._inodes[inode]
        if self._db is not None:
            self._db.execute("DELETE FROM objects WHERE id = ?", (oid,))

    def _adopt(self, path: str) -> int | None:
        """A name the store does not know whose inode a labelled object has: renamed or linked outside.

        Looked up again inside the transaction: the view it was found in may predate another run's commit (a
        pinned decision's), which may have deleted that object or given the name one of its own."""
        inode = self._inode(path)
        if inode is None or inode not in self._inodes:
            return None
        with self._transaction():
            oid = self._names.get(path)
            if oid is not None:
                return oid
            oid = self._inodes.get(inode)
            if oid is None or oid not in self._objects:
                return None
            self._put_name(path, oid)
            self._log("adopt", path, oid, None, self._objects[oid], None,
                      reason="same file (inode) as a labelled object: renamed or linked outside the sandbox")
        return oid

    def _record_inodes(self) -> None:
        """Fill in inodes for objects that had none (a raise decided before the file existed).

        Found again inside the transaction: in a view older than another run's rename, a name can belong to an
        object it no longer names, and the inode found there (now another object's file) written to the stale
        object would send that file, renamed on the host later, to the stale object's label when adopted."""
        if self.root is None or self._db is None:
            return
        with self._lock:
            if not self._missing_inodes():
                return
            with self._transaction():
                for oid, inode in self._missing_inodes():
                    self._put_object(oid, self._objects[oid], inode)

    def _missing_inodes(self) -> list[tuple[int, tuple[int, int]]]:
        """(object, inode found at one of its names) for each object with no inode recorded."""
        missing = self._objects.keys() - set(self._inodes.values())
        return [(oid, inode) for path, oid in self._names.items() if oid in missing
                for inode in [self._inode(path)] if inode is not None]

    def _stat(self, path: str) -> os.stat_result | None:
        if self.root is None:
            return None
        try:
            return os.lstat(os.path.join(self.root, path))
        except (OSError, ValueError):
            return None

    def _inode(self, path: str) -> tuple[int, int] | None:
        st = self._stat(path)
        return None if st is None else (st.st_dev, st.st_ino)

    def _log(self, kind: str, path: str, oid: int, old: Label | None, new: Label | None, why: Why | None,
             reason: str | None = None) -> None:
        if self._db is None:
            return
        why = why or Why()
        self._db.execute(
            "INSERT INTO history (ts, kind, object, path, old, new, label, run, subject, command, source, who, "
            "reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), kind, oid, to_sql(path), encode(old), encode(new), why.label, self.run, why.subject,
             to_sql(why.command), to_sql(why.source), why.who, to_sql(why.reason or reason)))
