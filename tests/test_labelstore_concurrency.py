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
