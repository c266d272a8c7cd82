"""A checkout owned by root (or anyone but the agent) is presented to the agent as its own: git works in it,
the kernel's permission checks let the agent write what the policy grants, what the agent creates belongs to
the checkout's owner on disk, and a refusal by the backing filesystem itself is a logged denial."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from fuse_support import POLICY, REAL_MOUNTS

from ifc.enforce.mount import Daemon
from ifc.monitor.events import open_readonly, read_events

pytestmark = REAL_MOUNTS

AGENT = (1000, 1000)


def _git(*args: str, cwd: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def checkout():
    base = tempfile.mkdtemp(prefix="ifc-owner-", dir="/dev/shm")
    os.chmod(base, 0o755)
    ws, mnt, run, home = (os.path.join(base, n) for n in ("ws", "mnt", "run", "home"))
    for path in (ws, mnt, home):
        os.mkdir(path, 0o755)
    os.chown(home, *AGENT)
    Path(ws, "src").mkdir()
    Path(ws, "src", "app.py").write_text("print('hi')\n")
    Path(ws, "src", "locked.py").write_text("locked\n")
    _git("init", "-q", cwd=ws)
    _git("add", "-A", cwd=ws)
    _git("commit", "-qm", "root's commit", cwd=ws)
    assert os.stat(ws).st_uid == 0
    daemon = Daemon(["--policy", str(POLICY), "--agent-ids", f"{AGENT[0]}:{AGENT[1]}", "--run-dir", run, ws, mnt], mnt,
                    log_path=os.path.join(base, "daemon.log"))
    try:
        yield ws, mnt, run, home
    finally:
        subprocess.run(["chattr", "-i", os.path.join(ws, "src", "locked.py")], capture_output=True)
        assert daemon.stop() == 0
        shutil.rmtree(base, ignore_errors=True)


def as_agent(argv: list[str], home: str, cwd: str) -> subprocess.CompletedProcess:
    env = {"HOME": home, "PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}
    return subprocess.run(["setpriv", f"--reuid={AGENT[0]}", f"--regid={AGENT[1]}", "--clear-groups", *argv],
                          cwd=cwd, env=env, capture_output=True, text=True)


def test_the_agent_sees_the_checkout_as_its_own_and_git_works(checkout):
    ws, mnt, _, home = checkout
    st = os.stat(os.path.join(mnt, "src", "app.py"))
    assert (st.st_uid, st.st_gid) == AGENT
    status = as_agent(["git", "status", "--porcelain"], home, mnt)
    assert status.returncode == 0, status.stderr
    assert "dubious ownership" not in status.stderr
    wrote = as_agent(["sh", "-c", "echo changed >> src/app.py && mkdir src/pkg && echo new > src/pkg/mod.py"],
                     home, mnt)
    assert wrote.returncode == 0, wrote.stderr
    commit = as_agent(["git", "-c", "user.name=a", "-c", "user.email=a@a", "commit", "-qam", "agent's commit"],
                      home, mnt)
    assert commit.returncode == 0, commit.stderr
    # on disk, everything the agent made belongs to the checkout's owner
    for path in ("src/pkg", "src/pkg/mod.py", "src/app.py"):
        st = os.stat(os.path.join(ws, path))
        assert (st.st_uid, st.st_gid) == (0, 0), path
    objects = [os.path.join(d, f) for d, _, files in os.walk(os.path.join(ws, ".git", "objects")) for f in files]
    assert {os.stat(o).st_uid for o in objects} == {0}
    # giving a file to itself gives it to the owner; giving it to someone else is refused by the kernel
    assert as_agent(["chown", f"{AGENT[0]}:{AGENT[1]}", "src/pkg/mod.py"], home, mnt).returncode == 0
    assert os.stat(os.path.join(ws, "src", "pkg", "mod.py")).st_uid == 0
    assert as_agent(["chown", "0", "src/pkg/mod.py"], home, mnt).returncode != 0


def test_a_refusal_of_the_backing_filesystem_is_a_logged_denial(checkout):
    ws, mnt, run, home = checkout
    subprocess.run(["chattr", "+i", os.path.join(ws, "src", "locked.py")], check=True)
    wrote = as_agent(["sh", "-c", "echo x >> src/locked.py"], home, mnt)
    assert wrote.returncode != 0 and "not permitted" in wrote.stderr
    db = open_readonly(Path(run, "events.db"))
    try:
        denials = [e for e in read_events(db, "deny") if e.target == "src/locked.py"]
    finally:
        db.close()
    assert denials and denials[-1].rule == "backing: permission"
    assert "Operation not permitted" in denials[-1].reason
