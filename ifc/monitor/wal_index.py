"""SQLite's WAL index (the database's `-shm` file), read beside SQLite without breaking SQLite's locks.

The label store reads the index's header to learn whether any connection committed since it last looked
(`LabelStore._sync`). That needs a descriptor of the `-shm` file of its own, and a descriptor of a file SQLite
locks is dangerous to close: POSIX drops *every* record lock a process holds on a file when *any* of its
descriptors for that file is closed (https://sqlite.org/howtocorrupt.html, 2.2). Closing one store's
descriptor while another connection in the process still used the database dropped that connection's locks on
the index: its claim that the index is in use (so the next process to open the database thought itself the
first, truncated the file and rebuilt it under the live mapping: SIGBUS in the store's process,
`test_runs_racing_on_one_store_never_lower_a_label`) and its WAL read marks (so a checkpoint could overwrite
frames it was reading).

So a process holds one descriptor per index file, shared by all its stores on that database, and closes it only
after the last of those stores has closed its connection. While a store's connection is open SQLite neither
truncates nor replaces the file (the store's connection holds the locks that say it is in use), so the
descriptor keeps reading the file SQLite uses.

A store is also closed by its finalizer, which the garbage collector may run in any thread at any allocation,
including one made while this module holds its lock (in `acquire`). The lock is not reentrant, and making it so
would let that release close the very index `acquire` is handing out; so a release made inside the critical
section is queued and done as the section ends.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HEADER = 96  # bytes: SQLite's WalIndexHdr twice (https://sqlite.org/walformat.html, 2.1)


@dataclass
class WalIndex:
    """The one descriptor of a `-shm` file in this process, and how many stores use it."""

    key: tuple[int, int]  # the file's (device, inode)
    fds: list[int] = field(default_factory=list)  # the first is read; any others wait to be closed with it
    users: int = 0

    @property
    def fd(self) -> int:
        return self.fds[0]


_lock = threading.Lock()
_open: dict[tuple[int, int], WalIndex] = {}
_inside = threading.local()  # `held` while this thread is in the critical section
_pending: list[WalIndex] = []  # releases made from inside it (by a finalizer), done as it ends


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with _lock:
        _inside.held = True
        try:
            yield
        finally:
            # a finalizer run by a collection inside the loop queues its release here too, and is done with it
            while _pending:
                _release(_pending.pop())
            _inside.held = False


def acquire(db_path: Path) -> WalIndex | None:
    """The WAL index of the database at `db_path`, for a store whose connection has it open (so it exists and
    stays the file SQLite uses). None if it cannot be opened: the store then asks SQLite on every look."""
    name = f"{db_path}-shm"
    with _locked():
        try:
            st = os.stat(name)
            index = _open.get((st.st_dev, st.st_ino))
            if index is None:
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
                fst = os.fstat(fd)
                # a file replaced between stat and open (it cannot be while the caller's connection holds it) is
                # kept under its own key: this descriptor too is closed only with that file's last user
                index = _open.setdefault((fst.st_dev, fst.st_ino), WalIndex((fst.st_dev, fst.st_ino)))
                index.fds.append(fd)
        except OSError:
            return None
        index.users += 1
        return index


def release(index: WalIndex) -> None:
    """A store is done with `index` (its connection already closed): the last user closes the descriptor."""
    if getattr(_inside, "held", False):
        _pending.append(index)
        return
    with _locked():
        _release(index)


def _release(index: WalIndex) -> None:
    index.users -= 1
    if index.users:
        return
    del _open[index.key]
    for fd in index.fds:
        os.close(fd)
