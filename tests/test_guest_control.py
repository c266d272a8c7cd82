"""The host end of the guest's control channel, without a VM: what the guest says becomes run state and process
records, garbage costs one line of attribution and never the run, window sizes go down, and a denial is matched
to the guest command that was running."""

from __future__ import annotations

import socket
import sqlite3
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ifc.monitor.events import EventLog
from ifc.monitor.guestprocs import ARRIVAL_SLACK, GuestProcess, attribute, read_guest_processes
from vmm.control import Control


def _hex(*argv: str) -> str:
    return b"\0".join(a.encode() for a in argv).hex() + "00"


@pytest.fixture
def channel(tmp_path):
    EventLog(tmp_path / "events.db").close()  # the FUSE daemon makes the log before QEMU starts
    control = Control(tmp_path / "ctl.sock", tmp_path / "control.log", tmp_path / "events.db")
    control.start()
    guest = socket.socket(socket.AF_UNIX)
    guest.connect(str(tmp_path / "ctl.sock"))
    yield control, guest, tmp_path
    guest.close()
    control.close()


def _finish(control: Control, guest: socket.socket) -> None:
    guest.shutdown(socket.SHUT_WR)
    control.drain(5)


def test_lifecycle_lines_become_state_and_the_log(channel):
    control, guest, tmp = channel
    guest.sendall(b"booted\nready\nexit 3\n")
    _finish(control, guest)
    assert control.ready_at is not None and control.status == 3 and control.error is None
    assert (tmp / "control.log").read_text() == "booted\nready\nexit 3\n"


def test_process_reports_are_recorded_and_garbage_is_skipped(channel):
    control, guest, tmp = channel
    lines = [f"proc exec 7 1 1000 {_hex('cat', '.env')}", "proc exec 8 7 1000", "proc exec x y z",
             "proc exec 9 1 1000 zz-not-hex", "proc exit 7 0", "proc exit 7", "\xff\xfe proc", "proc lost",
             "exit 0"]
    guest.sendall("\n".join(lines).encode("utf-8", "surrogateescape") + b"\n")
    _finish(control, guest)
    rows = read_guest_processes(sqlite3.connect(tmp / "events.db"))
    assert [(p.pid, p.argv, p.status) for p in rows] == [(7, ("cat", ".env"), 0), (8, (), None)]
    assert rows[1].command == "(pid 8, exited before it could be read)"
    assert control.status == 0
    meta = dict(sqlite3.connect(tmp / "events.db").execute("SELECT key, value FROM meta"))
    assert meta["guest_process_reports"].startswith("incomplete")  # the report shows it
    assert "proc exec" not in (tmp / "control.log").read_text()  # the lifecycle goes to the log, processes to the db


def test_an_overlong_line_is_dropped(channel):
    control, guest, _ = channel
    guest.sendall(b"x" * 100_000 + b"\nready\n")
    _finish(control, guest)
    assert control.ready_at is not None


def test_window_sizes_go_down(channel, tmp_path):
    import os
    import pty

    control, guest, _ = channel
    deadline = time.monotonic() + 5
    while control._conn is None and time.monotonic() < deadline:
        time.sleep(0.01)
    master, slave = pty.openpty()
    try:
        import fcntl
        import struct
        import termios

        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 120, 0, 0))
        control.send_winsize(slave)
        assert guest.recv(100) == b"winsize 33 120\n"
    finally:
        os.close(master)
        os.close(slave)


def _proc(pid: int, started: float, ended: float | None, uid: int = 1000) -> GuestProcess:
    return GuestProcess(pid, 1, uid, (f"cmd{pid}",), started, ended)


def test_attribution_prefers_what_was_running_then_what_arrived_just_after():
    shell = _proc(1, 0.0, None)
    earlier = _proc(2, 1.0, 1.5)  # gone before the decision
    running = _proc(3, 2.0, 3.0)
    late = _proc(4, 2.1, 2.2)  # its exec report arrived just after the decision
    root = _proc(5, 1.9, None, uid=0)  # init's own helper
    assert [p.pid for p in attribute([shell, earlier, running, late, root], 2.05)] == [3, 1, 4]
    assert attribute([_proc(6, 2.05 + ARRIVAL_SLACK + 0.01, None)], 2.05) == []


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 10), st.booleans()), max_size=20), st.floats(0, 110))
def test_every_candidate_was_alive_and_the_first_started_last_before(spans, ts):
    processes = [_proc(i, start, start + length if ended else None) for i, (start, length, ended) in enumerate(spans)]
    found = attribute(processes, ts)
    assert all(p.alive_at(ts) for p in found)
    started_before = [p for p in found if p.started <= ts]
    if started_before:
        assert found[0].started == max(p.started for p in started_before)


def test_a_token_in_a_guest_argv_is_not_stored(channel):
    control, guest, tmp = channel
    token = "ifc1_" + "A" * 200
    guest.sendall(f"proc exec 7 1 1000 {_hex('curl', '-x', f'http://ifc:{token}@10.0.2.100:3128', 'x')}\n".encode())
    _finish(control, guest)
    (process,) = read_guest_processes(sqlite3.connect(tmp / "events.db"))
    assert token not in process.command and "(token redacted)" in process.command
