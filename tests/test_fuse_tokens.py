"""A token that stops being valid mid-mount stops working at the next open: the filesystem keeps no decision
of its own, and the monitor's fast path knows about expiry and revocation (real mounts, policies/default.flow)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from fuse_support import POLICY, REAL_MOUNTS, ROOT

import caps
from ifc.enforce.mount import Daemon, is_stale, mounted_at
from ifc.monitor.events import open_readonly, read_events

pytestmark = REAL_MOUNTS


@pytest.fixture
def base():
    path = tempfile.mkdtemp(prefix="ifc-tokens-", dir="/dev/shm")
    for name in ("ws", "mnt", "run"):
        os.makedirs(os.path.join(path, name))
    Path(path, "ws", "notes.txt").write_text("notes\n")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def denials(run: str) -> list:
    db = open_readonly(Path(run, "events.db"))
    try:
        return list(read_events(db, "deny"))
    finally:
        db.close()


def _refused(path: str) -> bool:
    try:
        Path(path).read_text()
    except PermissionError as exc:
        assert exc.errno == errno.EACCES
        return True
    return False


def _read_refused(path: str) -> None:
    assert _refused(path), f"{path} was read"


def test_an_expired_session_token_stops_the_next_read(base):
    host = caps.HostKey.generate()
    caps.write_key(os.path.join(base, "host.key"), host)
    expires = int(time.time()) + 4
    token = caps.mint(host, rights=["read **"], audience="run-expiry", expires=expires)
    mnt, run = os.path.join(base, "mnt"), os.path.join(base, "run")
    daemon = Daemon(["--policy", str(POLICY), "--token", token, "--key", os.path.join(base, "host.key.pub"),
                     "--audience", "run-expiry", "--run-dir", run, os.path.join(base, "ws"), mnt], mnt,
                    log_path=os.path.join(base, "daemon.log"))
    try:
        notes = os.path.join(mnt, "notes.txt")
        assert Path(notes).read_text() == "notes\n"
        assert Path(notes).read_text() == "notes\n"  # a repeat: the answer the monitor's fast path keeps
        time.sleep(max(0.0, expires - time.time()) + 0.5)
        _read_refused(notes)
    finally:
        assert daemon.stop() == 0
    assert any(e.target == "notes.txt" and "expired" in e.reason for e in denials(run))


def test_a_revoked_session_token_stops_the_next_read(base):
    mnt, run = os.path.join(base, "mnt"), os.path.join(base, "run")
    with open(os.path.join(base, "daemon.log"), "wb") as err:
        child = subprocess.Popen([sys.executable, str(ROOT / "tests" / "revocable_mount.py"),
                                  os.path.join(base, "ws"), mnt, run], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=err, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not (mounted_at(mnt) or "").startswith("fuse") or is_stale(mnt):
            assert child.poll() is None and time.monotonic() < deadline, Path(base, "daemon.log").read_text()
            time.sleep(0.02)
        notes = os.path.join(mnt, "notes.txt")
        assert Path(notes).read_text() == "notes\n"
        assert Path(notes).read_text() == "notes\n"
        child.stdin.write("revoke\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "revoked"
        _read_refused(notes)
    finally:
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0
    assert mounted_at(mnt) is None
    assert any(e.target == "notes.txt" and "revoked" in e.reason for e in denials(run))


def _within(seconds: float, done, failure: str) -> None:
    """Wait until `done()` holds (the mount looks at its revocation list every 0.25 s); fail with `failure`."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


def test_ifc_caps_revoke_stops_a_live_mount_and_a_list_it_cannot_read_stops_every_token(base):
    """End to end from the command line: `ifc caps revoke` on the list the mount follows (`--revocations`)
    refuses the token's next open — a warm one, answered by the monitor's cache and the compiled fast path
    until then. A list the mount can no longer read hides revocations: nothing is honoured until it reads again."""
    host = caps.HostKey.generate()
    caps.write_key(os.path.join(base, "host.key"), host)
    revoked = os.path.join(base, "revoked.json")
    token = caps.mint(host, rights=["read **"], audience="run-live", expires=int(time.time()) + 3600)
    other = caps.mint(host, rights=["read **"], audience="run-live", expires=int(time.time()) + 3600)
    mnt, run = os.path.join(base, "mnt"), os.path.join(base, "run")
    daemon = Daemon(["--policy", str(POLICY), "--token", token, "--key", os.path.join(base, "host.key.pub"),
                     "--revocations", revoked, "--audience", "run-live", "--run-dir", run, os.path.join(base, "ws"),
                     mnt], mnt, log_path=os.path.join(base, "daemon.log"))
    notes = os.path.join(mnt, "notes.txt")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        for _ in range(3):
            assert Path(notes).read_text() == "notes\n"
        proc = subprocess.run([sys.executable, "-m", "ifc", "caps", "revoke", "-", "--list", revoked], input=token,
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
        assert proc.returncode == 0 and "revoked" in proc.stdout, proc.stderr
        _within(5, lambda: _refused(notes), f"{notes} still readable after the revocation")
        # the process with its own token still reads (its token was not revoked) ...
        read = [sys.executable, "-c", f"print(open({notes!r}).read(), end='')"]
        assert subprocess.run(read, env={**env, "IFC_TOKEN": other}, capture_output=True, text=True,
                              timeout=60).stdout == "notes\n"

        def other_reads() -> bool:
            return subprocess.run(read, env={**env, "IFC_TOKEN": other}, capture_output=True,
                                  timeout=60).returncode == 0

        Path(revoked).write_text("{ damaged")  # ... until the list cannot be read
        _within(5, lambda: not other_reads(), "a token was honoured while the revocation list was unreadable")
        caps.RevocationList(1, frozenset(caps.revocation_ids(token)[-1:])).save(revoked)
        _within(5, other_reads, "the list is readable again, but the token is still refused")
        _read_refused(notes)  # the revoked one stays revoked
    finally:
        assert daemon.stop() == 0
    reasons = [e.reason for e in denials(run) if e.target == "notes.txt"]
    assert any("revoked" in r for r in reasons) and any("cannot be read" in r for r in reasons), reasons
