"""Who is calling: per-process subjects from /proc, and the pidfds that keep a thread's answer valid exactly
as long as that very thread lives (a reused pid must never inherit a dead process's subject)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from ifc.enforce import identity
from ifc.enforce.identity import Identities

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")


def _sleeper(token: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != identity.ENV_VAR}
    if token is not None:
        env[identity.ENV_VAR] = token
    child = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
                             env=env, stdout=subprocess.PIPE)
    # once it prints, it runs the new program: its /proc environ is the one given here, not the parent's
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    return child


def test_a_process_presenting_a_token_is_its_own_subject_until_it_dies():
    ids = Identities(default_token="session-token")
    child = _sleeper("child-token")
    try:
        first = ids.caller(child.pid)
        assert (first.subject, first.token, first.parent) == (f"pid:{child.pid}", "child-token", "session")
        assert ids.caller(child.pid) == first  # answered again while the process lives
    finally:
        child.kill()
        child.wait()
    gone = ids.caller(child.pid)  # reaped: its pid is free for reuse, its subject must not be handed out
    assert (gone.subject, gone.token) == ("session", "session-token")
    ids.close()


def test_a_thread_of_this_process_is_the_daemons_own_default():
    ids = Identities(default_token="t", self_pid=os.getpid())
    seen = []
    worker = threading.Thread(target=lambda: seen.append(ids.caller(threading.get_native_id())))
    worker.start()
    worker.join()
    assert (seen[0].subject, seen[0].token) == ("session", "t")
    ids.close()


def test_pidfds_are_bounded_and_closed(monkeypatch):
    monkeypatch.setattr(identity, "MAX_PIDFDS", 2)
    ids = Identities()
    children = [_sleeper(f"tok{i}") for i in range(3)]
    try:
        before = len(os.listdir("/proc/self/fd"))
        assert [ids.caller(c.pid).subject for c in children] == [f"pid:{c.pid}" for c in children]
        assert len(os.listdir("/proc/self/fd")) - before <= 2
        ids.close()
        assert len(os.listdir("/proc/self/fd")) == before
        assert [ids.caller(c.pid).subject for c in children] == [f"pid:{c.pid}" for c in children]
    finally:
        for c in children:
            c.kill()
            c.wait()
        ids.close()
