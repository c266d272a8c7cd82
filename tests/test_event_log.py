"""The event log keeps working when a write fails, and keeps names that are not UTF-8 exactly.

Real SQLite throughout: a flush is made to fail half-way by a trigger that aborts on one row, and a write
is made to fail by another connection holding the file's write lock. On a real FUSE mount: the name that
used to wedge the log (`b"\\xff"`: every later operation EACCES, later denials unrecorded, a traceback at
unmount), and `ifc mount`'s exit status and last line when its log failed.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from fuse_support import FUSE, POLICY, REAL_MOUNTS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ifc.enforce.mount import Daemon
from ifc.monitor import EventLog, Monitor, Request
from ifc.monitor.events import LogFailure, open_readonly, read_events
from ifc.policy import load_policy, shipped_policy
from ifc.report import RENDERERS, load_run

ROOT = Path(__file__).resolve().parent.parent


def _other(path: Path) -> sqlite3.Connection:
    """A second connection, as `ifc report` or a crash-recovery would see the file."""
    return sqlite3.connect(path, isolation_level=None)


# ------------------------------------------------------------------------------------------ names

NAMES = st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b and b"/" not in b
                                                  and b not in (b".", b".."))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=NAMES)
def test_any_name_round_trips_through_record_and_load(name):
    target = "src/" + os.fsdecode(name)  # what FUSE hands the monitor
    with tempfile.TemporaryDirectory() as run:
        log = EventLog(Path(run) / "events.db")
        log.set_meta(workspace=f"/ws/{os.fsdecode(name)}")
        log.record(kind="deny", subject="session", op="write", target=target, allowed=False,
                   reason=f"no grant covering {target}", cmdline=f"vim {target}", path=[["subject:session", "write",
                                                                                        f"file:{target}"]])
        log.record(kind="label", subject="session", op="write", target=target, allowed=True, reason="floated",
                   object_label="secret")
        log.count_allow("session", "read", target)
        log.close()
        assert log.failures == 0
        loaded = load_run(run)
    (denial,) = loaded.denials
    assert os.fsencode(denial.target) == b"src/" + name
    assert denial.target == target and denial.reason == f"no grant covering {target}"
    assert denial.cmdline == f"vim {target}" and denial.path[0].target == f"file:{target}"
    assert loaded.labels[0].target == target
    assert [a.object for a in loaded.allows] == [target]
    assert loaded.meta["workspace"] == f"/ws/{os.fsdecode(name)}"
    shown = json.loads(RENDERERS["json"](loaded))  # the JSON report carries the exact string too
    assert shown["denials"][0]["target"] == target


def test_the_report_shows_undecodable_bytes_readably(tmp_path):
    log = EventLog(tmp_path / "events.db")
    log.record(kind="deny", subject="session", op="create", target=os.fsdecode(b"caf\xe9-\xff"), allowed=False,
               reason="no grant")
    log.close()
    run = load_run(tmp_path)
    for fmt in ("md", "html"):
        text = RENDERERS[fmt](run)
        assert "caf\\xe9-\\xff" in text, fmt
        text.encode("utf-8")  # nothing a terminal or a browser could not take
    # a lone surrogate no file name can hold (a JSON `\ud800` escape) is kept exactly, shown as `\ud800`
    log = EventLog(tmp_path / "events.db")
    log.record(kind="deny", subject="s\ud800", op="dns", target="x", allowed=False, reason="r")
    log.close()
    run = load_run(tmp_path)
    assert run.denials[1].subject == "s\ud800"
    assert "s\\ud800" in RENDERERS["md"](run)


def test_ordinary_text_stays_text_in_the_file(tmp_path):
    """Only what is not UTF-8 becomes a BLOB: any SQLite tool reads an ordinary log as before."""
    log = EventLog(tmp_path / "events.db")
    log.record(kind="deny", subject="session", op="read", target="naïve.txt", allowed=False, reason="r")
    log.record(kind="deny", subject="session", op="read", target=os.fsdecode(b"\xff"), allowed=False, reason="r")
    log.close()
    types = _other(tmp_path / "events.db").execute("SELECT typeof(target) FROM events ORDER BY id").fetchall()
    assert types == [("text",), ("blob",)]


# ------------------------------------------------------------------------------------------ failures

def _abort_on(db_path: Path, obj: str) -> None:
    _other(db_path).execute(f"CREATE TRIGGER boom BEFORE INSERT ON allows WHEN NEW.object = '{obj}' "
                            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")


def test_a_flush_that_fails_half_way_commits_nothing_and_leaves_the_log_usable(tmp_path):
    db = tmp_path / "events.db"
    log = EventLog(db, flush_every=1000)
    seen: list[LogFailure] = []
    log.on_failure = seen.append
    log.count_allow("session", "read", "a")
    log.flush()
    _abort_on(db, "c")
    for obj in ("a", "b", "c", "d"):  # "a" and "b" are written before "c" aborts the flush
        log.count_allow("session", "read", obj)
    with pytest.raises(sqlite3.IntegrityError):
        log.flush()
    assert log.failures == 1 and seen[0].reason.startswith("IntegrityError: refused by the test")
    other = _other(db)
    assert other.execute("SELECT object, count FROM allows").fetchall() == [("a", 1)], "half a flush committed"
    event = log.record(kind="deny", subject="session", op="write", target="x", allowed=False, reason="r")
    assert other.execute("SELECT kind FROM events WHERE id = ?", (event,)).fetchall() == [("deny",)]
    other.execute("DROP TRIGGER boom")
    log.flush()  # the counts the failed flush held were kept
    assert sorted(other.execute("SELECT object, count FROM allows")) == [("a", 2), ("b", 1), ("c", 1), ("d", 1)]
    log.close()


def test_an_allow_whose_flush_fails_is_denied_and_not_counted(tmp_path):
    db = tmp_path / "events.db"
    policy = load_policy(shipped_policy("default"))
    log = EventLog(db, flush_every=2)
    monitor = Monitor(policy, agent=policy.agents["coder"], log=log)
    _abort_on(db, "src/b.py")
    assert monitor.decide(Request("read", "src/a.py")).allowed
    failed = monitor.decide(Request("read", "src/b.py"))
    assert not failed.allowed and "the event log failed" in failed.reason
    assert monitor.decide(Request("read", "src/c.py")).allowed, "the log recovered by itself: no wedge"
    _other(db).execute("DROP TRIGGER boom")
    assert monitor.decide(Request("read", "src/d.py")).allowed
    monitor.close()
    rows = dict(_other(db).execute("SELECT object, count FROM allows"))
    assert rows == {"src/a.py": 1, "src/c.py": 1, "src/d.py": 1}, "the denied read was logged as an allow"


def test_a_locked_log_fails_the_write_then_recovers(tmp_path):
    db = tmp_path / "events.db"
    log = EventLog(db, busy_timeout=0.05)
    holder = _other(db)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        log.record(kind="deny", subject="session", op="write", target="x", allowed=False, reason="r")
    holder.execute("ROLLBACK")
    event = log.record(kind="deny", subject="session", op="write", target="y", allowed=False, reason="r")
    assert holder.execute("SELECT target FROM events WHERE id = ?", (event,)).fetchall() == [("y",)]
    assert log.failures == 1
    log.close()


def test_close_never_raises_and_counts_the_lost_flush(tmp_path):
    db = tmp_path / "events.db"
    log = EventLog(db)
    _abort_on(db, "a")
    log.count_allow("session", "read", "a")
    log.close()
    assert log.failures == 1 and log.first_failure is not None
    log.close()  # twice is fine


# ------------------------------------------------------------------------------------------ a real mount

def _real_mount(test):
    for mark in REAL_MOUNTS:
        test = mark(test)
    return test


@_real_mount
def test_a_name_that_is_not_utf8_no_longer_wedges_the_log(tmp_path):
    ws, run, mnt = tmp_path / "ws", tmp_path / "run", tmp_path / "mnt"
    for d in (ws, run, mnt):
        d.mkdir()
    (ws / "src").mkdir()
    (ws / "src" / "a.py").write_text("x = 1\n")
    root = os.fsencode(mnt)
    with Daemon(["--policy", str(POLICY), "--run-dir", str(run), "--fuse", FUSE, str(ws), str(mnt)], str(mnt),
                log_path=str(run / "mount.log")) as daemon:
        with pytest.raises(PermissionError):  # denied: `coder` may not create at the top
            open(root + b"/\xff", "w").close()
        open(root + b"/src/\xff", "w").close()  # allowed
        for i in range(1100):  # past the daemon's flush of aggregated allows (every 1000)
            open(mnt / "src" / f"f{i}.py", "w").close()
        assert (mnt / "src" / "a.py").read_text() == "x = 1\n", "a later operation behaves normally"
        with pytest.raises(PermissionError):
            open(mnt / "LATER", "w").close()
        live = open_readonly(run / "events.db")  # committed while the mount still serves
        assert [os.fsencode(e.target) for e in read_events(live, "deny")] == [b"\xff", b"LATER"]
        live.close()
        status = daemon.stop()
    log = (run / "mount.log").read_text()
    assert status == 0 and "Traceback" not in log, log
    report = subprocess.run([sys.executable, "-m", "ifc", "report", str(run)], capture_output=True, text=True,
                            cwd=ROOT)
    assert report.returncode == 0, report.stderr
    assert "`\\xff`" in report.stdout and "`src/\\xff`" in report.stdout and "`LATER`" in report.stdout
    loaded = load_run(run)
    assert [os.fsencode(d.target) for d in loaded.denials] == [b"\xff", b"LATER"]
    assert b"src/\xff" in {os.fsencode(a.object) for a in loaded.allows}


@_real_mount
def test_ifc_mount_exits_3_and_says_why_when_its_log_failed(tmp_path):
    ws, run, mnt = tmp_path / "ws", tmp_path / "run", tmp_path / "mnt"
    for d in (ws, run, mnt):
        d.mkdir()
    with Daemon(["--policy", str(POLICY), "--run-dir", str(run), "--fuse", FUSE, str(ws), str(mnt)], str(mnt),
                log_path=str(run / "mount.log")) as daemon:
        holder = _other(run / "events.db")
        holder.execute("BEGIN EXCLUSIVE")  # the daemon's write waits its busy timeout (5 s), then fails
        with pytest.raises(PermissionError):
            open(mnt / "TOP", "w").close()  # denied by policy; the denial cannot be committed
        holder.execute("ROLLBACK")
        with pytest.raises(PermissionError):
            open(mnt / "LATER", "w").close()
        status = daemon.stop()
    log = (run / "mount.log").read_text()
    assert status == 3, log
    last = log.rstrip("\n").splitlines()[-1]
    assert re.fullmatch(r"ifc mount: error: the event log failed 1 time\(s\), first at \d\d:\d\d:\d\d "
                        r"\(OperationalError: database is locked\); the operations it could not log were denied "
                        r"and are missing from the report", last), log
    assert [d.target for d in load_run(run).denials] == ["LATER"]


def test_ifc_decide_exits_3_and_says_why_when_its_log_failed(tmp_path, capsys):
    """`ifc decide --run-dir` checks its log like `ifc mount` does: a denial it could not record is not silent."""
    from ifc.cli import main

    run = tmp_path / "run"
    run.mkdir()
    EventLog(run / "events.db").close()  # the schema, then a trigger refusing the one denial this run makes
    _other(run / "events.db").execute("CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.kind = 'deny' "
                                      "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    code = main(["decide", "--policy", str(shipped_policy("default")), "--run-dir", str(run), "read", ".env",
                 "connect", "smtp.gmail.com:587"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert re.search(r"ifc decide: error: the event log failed 1 time\(s\), first at \d\d:\d\d:\d\d \(.*refused by "
                     r"the test.*\); the operations it could not log were denied", err), err
