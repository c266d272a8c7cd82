"""Two processes writing one workspace's label store: no interleaving of their commits may lose or lower a label.

The races here are between a store's in-memory view and another process's commit. The deterministic tests
place the other store's commit just before each SQL statement one store executes in turn (SQLite's statement
trace fires before the statement takes its snapshot), so every gap between two statements is tried, not only
the ones a scheduler happens to hit; the stress test then runs real processes against each other.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ifc.monitor.labelstore import LabelStore, LabelStoreError
from ifc.policy.labels import Label

SECRET = Label(frozenset({"internal", "secret"}), 1)
INTERNAL = Label(frozenset({"internal"}), 1)
CUSTOMER = Label(frozenset({"customer"}), 1)


class Interleave:
    """Runs `commit` (another store's change) just before the `at`-th statement a connection executes.

    If that statement runs inside the connection's own write transaction the other store cannot commit (it
    would wait for the lock this thread holds), so the commit moves to the next statement where it can; one
    still pending when the traced call returns is made then (`finish`), after it, as it could be in a real run."""

    def __init__(self, other: LabelStore, commit: Callable[[LabelStore], None], at: int):
        self.other, self.commit, self.at = other, commit, at
        self.statements = 0
        self.done = False
        self.error: BaseException | None = None  # SQLite swallows what a trace callback raises: kept for `finish`
        other._db.execute("PRAGMA busy_timeout = 0")  # a locked store answers at once: try the next gap

    def __call__(self, sql: str) -> None:
        self.statements += 1
        if self.done or self.statements <= self.at:
            return
        try:
            self.commit(self.other)
        except LabelStoreError as exc:
            if "locked" not in str(exc):
                self.error = exc
            return
        except BaseException as exc:
            self.error = exc
            return
        self.done = True

    def finish(self) -> None:
        if self.error is not None:
            raise self.error
        if not self.done:
            self.commit(self.other)
            self.done = True


def _statements(run: Callable[[Callable[[str], None]], None]) -> int:
    """How many statements `run` executes when traced with a callback that only counts them."""
    seen: list[str] = []
    run(seen.append)
    assert seen, "nothing was traced: the interleavings below would test nothing"
    return len(seen)


def _open_traced(monkeypatch, db: Path, trace: Callable[[str], None], **kwargs) -> LabelStore:
    """Open a store whose connection is traced from its first statement (the open itself is a reader)."""
    real = sqlite3.connect

    def connect(*args, **kw):
        conn = real(*args, **kw)
        conn.set_trace_callback(trace)
        return conn

    with monkeypatch.context() as m:
        m.setattr(sqlite3, "connect", connect)
        store = LabelStore(db, **kwargs)
    store._db.set_trace_callback(None)
    return store


def test_a_store_opened_while_another_run_commits_never_lowers_a_label(tmp_path, monkeypatch):
    """A run opens the workspace's store while another run raises a new file: whatever gap of the open the
    commit lands in, the new run sees the label at its next look, and its own raises never overwrite it (a view
    with the name but not its object read the label as absent, and handed out that object's id again)."""
    def other_raises(other: LabelStore) -> None:
        other.raise_to("secret.txt", SECRET)

    count = _statements(lambda trace: _open_traced(monkeypatch, tmp_path / "count.db", trace).close())
    for at in range(count):
        db = tmp_path / f"l{at}.db"
        other = LabelStore(db)
        other.raise_to("warm", INTERNAL)
        interleave = Interleave(other, other_raises, at)
        mine = _open_traced(monkeypatch, db, interleave)
        interleave.finish()
        assert mine.get("secret.txt") == SECRET, f"commit before statement {at} of the open: label not seen"
        mine.raise_to("new.txt", CUSTOMER)
        assert LabelStore(db).snapshot() == {"warm": INTERNAL, "secret.txt": SECRET, "new.txt": CUSTOMER}, at


def test_one_look_never_sees_half_of_another_runs_commit(tmp_path):
    """Another run saves over a secret file (writes `x.tmp`, renames it over `x`: the monitor's raise and move,
    one commit). `x` is secret before and after; a look at the store made while that commit lands must see one
    or the other state, never the new name without its object (`x` read as unlabelled for a whole decision)."""
    def other_saves_over(other: LabelStore) -> None:
        with other.batch():
            other.raise_to("x.tmp", SECRET)
            other.rename("x.tmp", "x")

    def setup(db: Path) -> tuple[LabelStore, LabelStore]:
        other, mine = LabelStore(db), LabelStore(db)
        other.raise_to("x", SECRET)
        assert mine.get("x") == SECRET
        other.raise_to("warm", INTERNAL)  # so that the look below reloads
        return other, mine

    _, probe = setup(tmp_path / "count.db")
    count = _statements(lambda trace: (probe._db.set_trace_callback(trace), probe.refresh()))
    for at in range(count):
        other, mine = setup(tmp_path / f"l{at}.db")
        interleave = Interleave(other, other_saves_over, at)
        mine._db.set_trace_callback(interleave)
        mine.refresh()
        mine._db.set_trace_callback(None)
        with mine.pinned():  # one decision: the view the look loaded
            assert mine.get("x") == SECRET, f"commit before statement {at} of the look: `x` read unlabelled"
        interleave.finish()


def test_a_lower_records_every_tag_it_removes(tmp_path):
    """`ifc labels --lower` while a run raises the same file: the run's raise either lands on top of the
    lowered label or is part of what the lower replaced, recorded as its `old` label (and printed). Before, a
    raise committed between the lower's check and its transaction vanished without a record."""
    def other_raises(other: LabelStore) -> None:
        other.raise_to("f", CUSTOMER)

    def setup(db: Path) -> tuple[LabelStore, LabelStore]:
        other, mine = LabelStore(db), LabelStore(db)
        other.raise_to("f", SECRET)
        return other, mine

    _, probe = setup(tmp_path / "count.db")
    count = _statements(lambda trace: (probe._db.set_trace_callback(trace),
                                       probe.lower("f", INTERNAL, who="alice", reason="count")))
    for at in range(count):
        db = tmp_path / f"l{at}.db"
        other, mine = setup(db)
        interleave = Interleave(other, other_raises, at)
        mine._db.set_trace_callback(interleave)
        old = mine.lower("f", INTERNAL, who="alice", reason="test fixture")
        mine._db.set_trace_callback(None)
        interleave.finish()
        now = LabelStore(db).get("f")
        lowered = [c for c in LabelStore(db).history("f") if c.kind == "lower"]
        assert len(lowered) == 1 and lowered[0].old == old, at
        assert "customer" in now.secrecy or "customer" in old.secrecy, \
            f"commit before statement {at} of the lower: the raise of `customer` vanished unrecorded"
        assert now in (INTERNAL, INTERNAL.join(CUSTOMER)), (at, now)


def test_inodes_recorded_at_close_follow_the_names_as_committed(tmp_path):
    """A run closes its store after another run renamed a secret file over a name this run's view still gives
    to another object: the inode found at that name now is the secret file's, and must not be written to the
    object the stale view named (reopened, the inode map would send a later host-side rename of the secret file
    to that object's lower label)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    db = tmp_path / "l.db"
    (ws / "b").write_text("secret")
    other, mine = LabelStore(db, root=ws), LabelStore(db, root=ws)
    other.raise_to("b", SECRET)  # object 1, with b's inode
    mine.raise_to("a", INTERNAL)  # object 2, decided before `a` existed: no inode yet
    mine.link("a", "c")  # a second name keeps object 2 alive when `a` is renamed over
    other.rename("b", "a")  # the other run's monitor, then its rename(2)
    os.rename(ws / "b", ws / "a")
    mine.close()  # fills in inodes for objects that had none
    other.close()
    os.rename(ws / "a", ws / "moved")  # the owner, on the host, between runs
    again = LabelStore(db, root=ws)
    assert again.get("moved") == SECRET, "the secret file renamed on the host took the stale object's label"
    assert again.get("c") == INTERNAL


@pytest.mark.parametrize("op", ["get", "lower"])
def test_an_adoption_checks_the_inode_map_as_committed(tmp_path, op):
    """A name is adopted into the labelled object whose inode it has; if another run deleted that object
    meanwhile, the lookup (a monitor decision, or `ifc labels --lower`) must answer from the committed state,
    not fail with the stale view's object id."""
    ws = tmp_path / "ws"
    ws.mkdir()
    db = tmp_path / "l.db"
    (ws / "f").write_text("secret")
    other, mine = LabelStore(db, root=ws), LabelStore(db, root=ws)
    other.raise_to("f", SECRET)
    assert mine.get("f") == SECRET
    os.link(ws / "f", ws / "outside")  # a link made on the host: `outside` is adopted by inode

    def other_deletes(other: LabelStore) -> None:
        os.unlink(ws / "outside")
        other.delete("f")  # the last name and the last link: the object goes
        os.unlink(ws / "f")
        (ws / "outside").write_text("a new file")

    interleave = Interleave(other, other_deletes, 0)
    mine._db.set_trace_callback(interleave)
    with mine.pinned():  # the view predates the delete (a decision in flight)
        if op == "get":
            found = mine.get("outside")
        else:
            with pytest.raises(LabelStoreError, match="no floated label"):
                mine.lower("outside", INTERNAL, who="alice", reason="x")
            found = None
    mine._db.set_trace_callback(None)
    assert interleave.done
    assert found in (None, SECRET)
    assert LabelStore(db, root=ws).snapshot() == {}


def test_a_look_that_failed_is_made_again(tmp_path):
    """A look whose question to SQLite fails (an I/O error, a lock held past the timeout) fails that decision
    (the monitor denies it); the next look must ask again. The header it had read was kept as seen before
    asking, so the next look found it unchanged and kept the old view until some later commit."""
    db = tmp_path / "l.db"
    mine, other = LabelStore(db), LabelStore(db)
    assert mine.get("f") is None
    other.raise_to("f", SECRET)
    failing = [True]

    def deny_once(action: int, arg: str | None, *_) -> int:
        if action == sqlite3.SQLITE_PRAGMA and arg == "data_version" and failing:
            failing.clear()
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    mine._db.set_authorizer(deny_once)
    with pytest.raises(sqlite3.DatabaseError):
        mine.get("f")
    assert not failing, "the look did not ask SQLite: nothing was tested"
    assert mine.get("f") == SECRET, "a look after a failed one kept the view from before the commit"


_RACE_NAMES = ("a", "b", "c", "d/e")
_race_op = st.one_of(
    st.tuples(st.just("raise"), st.sampled_from(_RACE_NAMES), st.sampled_from((SECRET, INTERNAL, CUSTOMER))),
    st.tuples(st.sampled_from(("rename", "link", "save")), st.sampled_from((*_RACE_NAMES, "d")),
              st.sampled_from(_RACE_NAMES)),
    st.tuples(st.just("delete"), st.sampled_from(_RACE_NAMES), st.none()),
    st.tuples(st.just("lower"), st.sampled_from(_RACE_NAMES), st.sampled_from((INTERNAL, CUSTOMER))))


def _apply(store: LabelStore, op: tuple, reason: str = "race") -> Label | None:
    """One change as a run (or `ifc labels --lower`) makes it; a refused lower is an outcome, not a failure.
    Returns the label a lower replaced."""
    kind, a, b = op
    try:
        if kind == "raise":
            store.raise_to(a, b)
        elif kind == "rename":
            store.rename(a, b)
        elif kind == "link":
            store.link(a, b)
        elif kind == "save":  # the monitor's rename: the content's raise and the move, one transaction
            with store.batch():
                store.raise_to(a, store.get(a) or INTERNAL)
                store.rename(a, b)
        elif kind == "delete":
            store.delete(a)
        else:
            return store.lower(a, b, who="alice", reason=reason)
    except LabelStoreError as exc:
        if "locked" in str(exc):
            raise
    return None


@settings(max_examples=40, deadline=None)
@given(st.lists(_race_op, max_size=6), _race_op, _race_op)
@example([("raise", "a", SECRET)], ("lower", "a", INTERNAL), ("raise", "a", CUSTOMER))  # `ifc labels` and a run
@example([("raise", "a", SECRET), ("raise", "b", CUSTOMER)], ("rename", "a", "b"), ("save", "b", "a"))
def test_two_changes_racing_end_as_one_after_the_other(before, mine_op, other_op):
    """Whichever gap of one store's change another store's change lands in (each in turn), the store ends as if
    one had been made after the other (each change is one transaction, checked on what is committed), a lower
    records the label it replaced in that order, and the first store's view is that state at its next look.
    Compared with both serial orders replayed on in-memory stores."""
    import tempfile

    def replay(first: tuple, second: tuple, mine_first: bool) -> tuple[dict[str, Label], Label | None]:
        store = LabelStore()
        for op in before:
            _apply(store, op)
        replaced = _apply(store, first)
        later = _apply(store, second)
        return store.snapshot(), replaced if mine_first else later

    serial = (replay(mine_op, other_op, True), replay(other_op, mine_op, False))
    for at in range(64):
        with tempfile.TemporaryDirectory() as d:
            db = Path(d) / "l.db"
            other, mine = LabelStore(db), LabelStore(db)
            for op in before:
                _apply(other, op)
            interleave = Interleave(other, lambda store: _apply(store, other_op, "other"), at)
            mine._db.set_trace_callback(interleave)
            replaced = _apply(mine, mine_op, "mine")
            mine._db.set_trace_callback(None)
            after_all = not interleave.done  # every gap was tried: this time the other change came after
            interleave.finish()
            found = LabelStore(db).snapshot()
            recorded = [c.old for c in LabelStore(db).history() if c.kind == "lower" and c.reason == "mine"]
            assert recorded == ([] if replaced is None else [replaced]), at
            assert (found, replaced) in serial, (at, found, replaced, serial)
            assert mine.snapshot() == found, at
            other.close()
            mine.close()
        if after_all:
            break


# ------------------------------------------------------------------------------------------ SQLite's locks
_DMS = 128  # the byte of the -shm file whose read lock says "in use" (os_unix.c: UNIX_SHM_DMS, (22 + 8) * 4 + 8)
_PROBE = """
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
flock = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, int(sys.argv[2]), 1, 0))
kind, _, _, _, pid = struct.unpack("hhqqi4x", flock)
print({fcntl.F_UNLCK: "none", fcntl.F_RDLCK: "shared", fcntl.F_WRLCK: "exclusive"}[kind], pid)
"""


def _dms_lock(db: Path) -> tuple[str, int]:
    """The lock another process sees on the WAL index's in-use byte, and who holds it (F_GETLK only reports
    other processes' locks, hence the child)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PROBE, f"{db}-shm", str(_DMS)], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], int(out[1])


def test_closing_a_store_keeps_the_locks_of_the_others_in_the_process(tmp_path):
    """POSIX drops every lock a process holds on a file when any descriptor of that file is closed. Each store
    read the WAL index through a descriptor of its own and closed it with the store, so closing (or dropping)
    one store took away the locks SQLite held for the process's other connections: the next process to open the
    database took itself for the first, truncated the index under the live mapping and rebuilt it (SIGBUS in
    the store's process; found by the stress test below)."""
    import gc

    db = tmp_path / "l.db"
    kept = LabelStore(db)
    kept.raise_to("f", SECRET)
    assert _dms_lock(db) == ("shared", os.getpid()), "SQLite's claim on the index is not where it should be"
    LabelStore(db).close()
    assert _dms_lock(db) == ("shared", os.getpid()), "closing one store dropped the other's lock"
    dropped = LabelStore(db)
    dropped.get("f")
    del dropped
    gc.collect()
    assert _dms_lock(db) == ("shared", os.getpid()), "dropping one store dropped the other's lock"
    assert kept.get("f") == SECRET
    kept.close()


def test_a_store_finalized_while_another_opens_does_not_hang(tmp_path, monkeypatch):
    """A store is closed by its finalizer when dropped, and the collector runs finalizers wherever an allocation
    happens: once inside `wal_index.acquire`, which held the module's lock that the finalizer's release then
    waited for in the same thread. The suite hung there for good (py-spy: in
    `test_one_look_never_sees_half_of_another_runs_commit`). Here the last reference goes at that very point."""
    import gc
    import threading

    from ifc.monitor import wal_index

    db = tmp_path / "l.db"
    kept = LabelStore(db)
    kept.raise_to("f", SECRET)
    doomed = [LabelStore(db)]

    class DropsInsideAcquire:
        """`os` for `wal_index`, whose `stat` of the index lets go of the doomed store first."""

        def __getattr__(self, name):
            return getattr(os, name)

        def stat(self, name, *args, **kwargs):
            if doomed:
                doomed.clear()
                gc.collect()  # the doomed store's finalizer runs here, in the middle of `acquire`
            return os.stat(name, *args, **kwargs)

    monkeypatch.setattr(wal_index, "os", DropsInsideAcquire())
    opened: list[LabelStore] = []
    opener = threading.Thread(target=lambda: opened.append(LabelStore(db)), daemon=True)
    opener.start()
    opener.join(30)
    assert not opener.is_alive(), "opening a store hung on a finalizer run inside wal_index.acquire"
    assert not doomed and opened, "the store was not dropped inside acquire, or the open failed"
    monkeypatch.undo()
    opened[0].raise_to("g", INTERNAL)
    kept.refresh()
    assert kept.get("g") == INTERNAL and opened[0].get("f") == SECRET
    opened[0].close()
    kept.close()
    assert not wal_index._open, "an index descriptor outlived every store that used it"


def test_a_commit_whose_writer_died_between_the_header_copies_is_seen(tmp_path):
    """SQLite writes the WAL index's header twice at a commit, the second copy first. A writer killed between
    the two leaves a committed transaction (its frames are in the WAL) with the first copy as it was; the next
    reader that asks SQLite finds the copies differ and rebuilds the header. A look comparing the first copy
    only skipped asking, and missed that commit until another connection started a transaction. The state is
    made here as the kill leaves it (a child writes the old first copy back), since the window is a few
    instructions wide."""
    import subprocess
    import sys

    db = tmp_path / "l.db"
    mine, other = LabelStore(db), LabelStore(db)
    other.raise_to("warm", INTERNAL)
    assert mine.get("warm") == INTERNAL
    first = os.pread(mine._shm, 48, 0)  # the first copy as mine last saw it (not a new descriptor: see above)
    other.raise_to("f", SECRET)
    subprocess.run([sys.executable, "-c", "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); "
                    "os.pwrite(fd, bytes.fromhex(sys.argv[2]), 0)", f"{db}-shm", first.hex()], check=True)
    assert os.pread(mine._shm, 48, 0) == first and os.pread(mine._shm, 96, 0)[48:] != first
    assert mine.get("f") == SECRET, "a committed raise was not seen"
    assert LabelStore(db).snapshot() == {"warm": INTERNAL, "f": SECRET}


# ------------------------------------------------------------------------------------------ processes
WRITER = """
import random, sys
from ifc.monitor.labelstore import LabelStore
from ifc.policy.labels import Label
from tests.test_labelstore_concurrency import CHURN, STICKY, TAGS
db, seed, count, acks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), open(sys.argv[4], "a", buffering=1)
rng = random.Random(seed)
store = LabelStore(db)
kinds = ("raise", "save", "save", "churn", "rename", "delete", "link", "reopen")
for i in range(count):
    kind, tag = rng.choice(kinds), Label(frozenset({rng.choice(TAGS)}), 1)
    name, churn, other = rng.choice(STICKY), rng.choice(CHURN), rng.choice(CHURN + STICKY)
    if kind == "raise":
        store.raise_to(name, tag)
    elif kind == "save":  # an editor's save: the content (its old label and more) written aside, renamed over
        with store.batch():
            old = store.get(name)
            store.raise_to(f"tmp-{seed}-{i}", tag if old is None else old.join(tag))
            store.rename(f"tmp-{seed}-{i}", name)
    elif kind == "churn":
        store.raise_to(churn, tag)
    elif kind == "rename":
        store.rename(churn, rng.choice(CHURN))
    elif kind == "delete":
        store.delete(churn)
    elif kind == "link":  # never replaces a name: onto a sticky one only while it has none
        store.link(churn, other)
    else:  # a new run on the workspace opens the store while the others commit
        store.close()
        store = LabelStore(db)
    if kind in ("raise", "save"):
        acks.write(f"{name} {sorted(tag.secrecy)[0]}\\n")  # acknowledged: it must hold from now on
"""
STICKY = [f"s{i}" for i in range(8)]  # only raised, saved over with their label and more, or linked to
CHURN = [f"c{i}" for i in range(6)]  # raised, renamed among themselves, deleted, linked anywhere
TAGS = ["internal", "secret", "customer", "pii", "key"]


@pytest.mark.integration
def test_runs_racing_on_one_store_never_lower_a_label(tmp_path):
    """Four writer processes change overlapping names (raises, saves over, renames, deletes, links, reopening the
    store as a new run does) while this process looks at the store the way a monitor does (`refresh()`, then one
    pinned view) and now and then opens it afresh as `ifc labels` does; writers are killed with SIGKILL at random
    points and replaced. A name that is only ever raised must never be seen lower than it was seen before, and
    every raise a writer saw committed must be in the final store."""
    import random
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    db, rng = tmp_path / "l.db", random.Random(5)
    LabelStore(db).close()
    env = {**os.environ, "PYTHONPATH": str(root)}

    def start(n: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(rng.randrange(1 << 30)), "1500",
                                 str(tmp_path / f"acks{n}")], cwd=root, env=env)

    writers, started, kills = [start(n) for n in range(4)], 4, 0
    ids = list(range(4))  # which writer (its acks file) runs in each slot
    # the first eight writers are killed once they have acknowledged this many bytes of raises (~5 KB in a
    # whole run): mid-change, at a point the schedulers pick
    kill_at = {n: rng.randrange(100, 3000) for n in range(8)}
    seen: dict[str, Label] = {}
    looks = 0

    def observe(get: Callable[[str], Label | None], how: str) -> None:
        for name in STICKY:
            label, before = get(name), seen.get(name)
            assert before is None or (label is not None and before.flows_to(label)), \
                f"look {looks} ({how}): `{name}` went from {before} to {label}"
            if label is not None:
                seen[name] = label

    mine = LabelStore(db)
    try:
        while any(w.poll() is None for w in writers):
            looks += 1
            mine.refresh()
            with mine.pinned():
                observe(mine.get, "refresh, pinned")
            if looks % 20 == 0:
                fresh = LabelStore(db)
                observe(fresh.snapshot().get, "a fresh open")
                fresh.close()
            for slot, writer in enumerate(writers):
                acks = tmp_path / f"acks{ids[slot]}"
                if ids[slot] in kill_at and acks.exists() and acks.stat().st_size >= kill_at[ids[slot]]:
                    writer.send_signal(signal.SIGKILL)
                    writer.wait()
                    kills += 1
                    writers[slot], ids[slot], started = start(started), started, started + 1
        assert all(w.returncode in (0, -signal.SIGKILL) for w in writers), [w.returncode for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()
    final = LabelStore(db).snapshot()
    observe(final.get, "the end")
    acked = [line.split() for n in range(started) if (tmp_path / f"acks{n}").exists()  # none if killed early
             for line in (tmp_path / f"acks{n}").read_text().splitlines()]
    assert len(acked) > 1000 and kills >= 1, (len(acked), kills)  # the race was run, not skipped
    for name, tag in (a for a in acked if len(a) == 2):
        assert tag in final[name].secrecy, f"`{name}` lost `{tag}`, acknowledged by a writer: {final[name]}"
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchall() == [("ok",)]
