"""Every name POSIX allows (any bytes but NUL and `/`, invalid UTF-8 and newlines included, up to NAME_MAX)
round-trips through the mount, and a denied operation on it is logged under exactly that name."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from fuse_support import POLICY, REAL_MOUNTS
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ifc.enforce.mount import Daemon
from ifc.monitor.events import open_readonly, read_events

pytestmark = REAL_MOUNTS

NAME_MAX = 255
names = st.binary(min_size=1, max_size=NAME_MAX).filter(lambda b: b"/" not in b and b"\0" not in b
                                                         and b not in (b".", b".."))


@pytest.fixture(scope="module")
def mounted():
    base = tempfile.mkdtemp(prefix="ifc-names-", dir="/dev/shm")
    ws, mnt, run = (os.path.join(base, n) for n in ("ws", "mnt", "run"))
    os.makedirs(os.path.join(ws, "src"))
    os.makedirs(os.path.join(ws, "vendor"))  # no write rule covers it: every create there is refused
    os.mkdir(mnt)
    daemon = Daemon(["--policy", str(POLICY), "--agent", "coder", "--run-dir", run, ws, mnt], mnt,
                    log_path=os.path.join(base, "daemon.log"))
    try:
        yield os.fsencode(mnt), run
    finally:
        assert daemon.stop() == 0
        shutil.rmtree(base, ignore_errors=True)


def _denials(run: str) -> set[bytes]:
    db = open_readonly(Path(run, "events.db"))
    try:
        return {os.fsencode(e.target) for e in read_events(db, "deny")}
    finally:
        db.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names)
@example(name=b"\x01.")  # matches the root rule "/*.*": the refusal must not depend on where a name may go
def test_every_legal_name_round_trips_and_its_denial_is_logged(mounted, name):
    mnt, run = mounted
    src = mnt + b"/src/"
    path = src + name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, name)
    os.close(fd)
    assert name in os.listdir(src)
    assert os.stat(path).st_size == len(name)
    renamed = (b"R" if name[:1] == b"r" else b"r") + name[1:]
    os.rename(path, src + renamed)
    listing = os.listdir(src)
    assert renamed in listing and name not in listing
    with open(src + renamed, "rb") as handle:
        assert handle.read() == name
    os.unlink(src + renamed)
    assert renamed not in os.listdir(src)  # (libfuse may still hold it as .fuse_hiddenN until its release lands)
    # the agent may not create in vendor/: refused, and logged under the exact bytes
    with pytest.raises(PermissionError):
        os.close(os.open(mnt + b"/vendor/" + name, os.O_WRONLY | os.O_CREAT, 0o644))
    assert b"vendor/" + name in _denials(run)
