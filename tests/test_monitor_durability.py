"""A `kill -9` of the monitor loses no committed denial.

A real child process runs the monitor with its event log in a run directory and makes denials as fast as it
can, printing each decision's event id only *after* `decide` returned (so only ids the enforcement point
could have acted on). The parent reads some of those lines, SIGKILLs the child mid-stream, and opens the
database: every id the child printed is there as a `deny`, and the database is consistent.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ifc.monitor.events import open_readonly, read_events

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent("""
    import sys
    from ifc.monitor import EventLog, LabelStore, Monitor, Request
    from ifc.policy import load_policy, shipped_policy

    run = sys.argv[1]
    policy = load_policy(shipped_policy("default"))
    monitor = Monitor(policy, agent=policy.agents["coder"], log=EventLog(f"{run}/events.db"),
                      labels=LabelStore(f"{run}/labels.db"))
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        # a mix: allows (aggregated, never printed), label changes, and denials of three kinds
        monitor.decide(Request("read", f"src/m{i % 7}.py", pid=i))
        if i % 10 == 0:
            monitor.decide(Request("read", ".env", subject=f"s{i}"))
            monitor.decide(Request("write", f"src/leak{i}.txt", subject=f"s{i}"))
        kind = i % 3
        if kind == 0:
            request = Request("connect", f"https://exfil{i}.example", pid=i, cmdline=f"curl exfil{i}")
        elif kind == 1:
            request = Request("write", f"ifc/x{i}.py", pid=i, cmdline=f"vim ifc/x{i}.py")
        else:
            request = Request("dns", f"q{i}.exfil.example", pid=i, cmdline="dig")
        decision = monitor.decide(request)
        assert not decision.allowed and decision.event is not None
        sys.stdout.write(f"{decision.event}\\n")
        sys.stdout.flush()
""")


def _run_child(run_dir: Path, lines_before_kill: int) -> tuple[list[int], int]:
    script = run_dir / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, str(script), str(run_dir)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    printed: list[int] = []
    try:
        assert child.stdout is not None
        first = child.stdout.readline()
        assert first.strip() == "ready", first + child.stderr.read()
        deadline = time.monotonic() + 60
        while len(printed) < lines_before_kill:
            line = child.stdout.readline()
            assert line, "child died early: " + child.stderr.read()
            printed.append(int(line))
            assert time.monotonic() < deadline
        os.kill(child.pid, signal.SIGKILL)
        # whatever the child managed to print before it died was printed after a decide returned
        rest = child.stdout.read()
        printed += [int(line) for line in rest.splitlines() if line.strip().isdigit()]
        # a partial last line (the kill landed inside write) is not a printed id: drop it if not newline-ended
        if rest and not rest.endswith("\n"):
            printed.pop()
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
    return printed, child.returncode


@pytest.mark.parametrize("lines_before_kill", [1, 250])
def test_kill_9_loses_no_printed_denial(tmp_path, lines_before_kill):
    printed, code = _run_child(tmp_path, lines_before_kill)
    assert code == -signal.SIGKILL
    assert len(printed) >= lines_before_kill
    assert (tmp_path / "events.db-wal").exists(), "the child was killed with its WAL still open"

    # the way a reviewer's `ifc report` reads it: read-only, recovering from the WAL
    db = open_readonly(tmp_path / "events.db")
    denials = {e.id: e for e in read_events(db, "deny")}
    missing = sorted(set(printed) - set(denials))
    assert not missing, f"{len(missing)} printed denials lost, e.g. {missing[:5]}"
    for event_id in printed:
        e = denials[event_id]
        assert not e.allowed and e.reason and e.pid is not None and e.cmdline
    assert len(printed) == len(set(printed)), "event ids are unique"
    db.close()


def test_the_database_is_consistent_after_kill_9(tmp_path):
    printed, _ = _run_child(tmp_path, 100)
    db = sqlite3.connect(tmp_path / "events.db")
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    kinds = dict(db.execute("SELECT kind, count(*) FROM events GROUP BY kind"))
    assert kinds["deny"] >= len(printed)
    assert kinds.get("label", 0) >= len(printed) // 10 - 1, "label changes are committed too"
    ids = [row[0] for row in db.execute("SELECT id FROM events ORDER BY id")]
    assert ids == sorted(set(ids))
    # the log stays usable: a new monitor run appends after the last committed event
    db.close()
    from ifc.monitor import EventLog, LabelStore, Monitor, Request
    from ifc.policy import load_policy, shipped_policy

    policy = load_policy(shipped_policy("default"))
    labels = LabelStore(tmp_path / "labels.db")
    assert labels.snapshot(), "floated labels committed before the kill survive it"
    log = EventLog(tmp_path / "events.db")
    m = Monitor(policy, log=log, labels=labels)
    d = m.decide(Request("connect", "https://after.example"))
    assert d.event > max(ids)
    m.close()
    check = sqlite3.connect(tmp_path / "labels.db")
    assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
