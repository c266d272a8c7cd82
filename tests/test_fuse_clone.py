"""A workspace made by a local `git clone` shares its pack files with the source repository (hard links).
Reading them through the mount is the workspace's content; a change to one (a write, a chmod) first gives the
workspace's name an inode of its own (copy-up), so the source repository never changes; where that cannot be
done, the change is refused and logged (`containment: hard link`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from fuse_support import POLICY, REAL_MOUNTS

from ifc.enforce.mount import Daemon
from ifc.monitor.events import open_readonly, read_events

pytestmark = REAL_MOUNTS


def git(*args: str, cwd: str) -> str:
    result = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "gc.auto=0", *args],
                            cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout


def fingerprint(root: str) -> dict[str, tuple[str, int]]:
    """Every file under `root`: its content hash and mode."""
    seen = {}
    for d, _, files in os.walk(root):
        for name in files:
            path = os.path.join(d, name)
            seen[os.path.relpath(path, root)] = (hashlib.sha256(Path(path).read_bytes()).hexdigest(),
                                                 os.lstat(path).st_mode)
    return seen


@pytest.fixture(scope="module")
def clone():
    base = tempfile.mkdtemp(prefix="ifc-clone-", dir="/dev/shm")
    origin, ws, mnt, run = (os.path.join(base, n) for n in ("origin", "ws", "mnt", "run"))
    os.makedirs(os.path.join(origin, "src"))
    os.mkdir(mnt)
    git("init", "-q", cwd=origin)
    for i in range(3):
        Path(origin, "src", "app.py").write_text(f"print({i})\n")
        git("add", "-A", cwd=origin)
        git("commit", "-qm", f"commit {i}", cwd=origin)
    git("gc", "-q", cwd=origin)
    git("clone", "-q", origin, ws, cwd=base)  # local: objects hard-linked to the origin's
    packs = [p for p in Path(ws, ".git", "objects", "pack").iterdir()]
    assert packs and all(p.stat().st_nlink == 2 for p in packs)
    before = fingerprint(os.path.join(origin, ".git"))
    daemon = Daemon(["--policy", str(POLICY), "--run-dir", run, ws, mnt], mnt,
                    log_path=os.path.join(base, "daemon.log"))
    try:
        yield origin, ws, mnt, run, before
    finally:
        subprocess.run(["chattr", "-i", os.path.join(ws, ".git", "objects", "pack")], capture_output=True)
        assert daemon.stop() == 0
        shutil.rmtree(base, ignore_errors=True)


def test_git_reads_a_local_clone_and_gc_leaves_the_source_alone(clone):
    origin, _, mnt, _, before = clone
    assert git("status", "--porcelain", cwd=mnt) == ""
    log = git("log", "-p", cwd=mnt)
    assert "commit 2" in log and "+print(2)" in log
    Path(mnt, "src", "app.py").write_text("print('agent')\n")
    git("commit", "-qam", "in the sandbox", cwd=mnt)
    git("gc", "-q", "--prune=now", cwd=mnt)
    assert git("log", "--oneline", cwd=mnt).count("\n") == 4
    assert git("fsck", "--no-progress", cwd=mnt) == ""
    assert fingerprint(os.path.join(origin, ".git")) == before  # the source repository never changed


def test_a_change_through_a_link_to_outside_copies_up(clone):
    origin, ws, mnt, _, before = clone
    outside = os.path.join(origin, "src", "app.py")
    inside = os.path.join(ws, "src", "linked.py")
    os.link(outside, inside)  # planted on the host
    seen = os.path.join(mnt, "src", "linked.py")
    assert Path(seen).read_text() == Path(outside).read_text()  # reading is the workspace's content
    with open(seen, "a") as handle:
        handle.write("appended in the sandbox\n")
    assert "appended" not in Path(outside).read_text()
    assert os.stat(inside).st_nlink == 1 and os.stat(outside).st_nlink == 1
    os.link(outside, inside + ".2")
    os.chmod(seen + ".2", 0o600)
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o644 and stat.S_IMODE(os.stat(inside + ".2").st_mode) == 0o600
    assert fingerprint(os.path.join(origin, ".git")) == before


def test_a_link_that_cannot_be_broken_refuses_the_change_and_says_why(clone):
    origin, ws, mnt, run, _ = clone
    outside = os.path.join(origin, "src", "app.py")
    pinned = os.path.join(ws, ".git", "objects", "pack", "pinned")
    os.link(outside, pinned)
    subprocess.run(["chattr", "+i", os.path.dirname(pinned)], check=True)  # no new name can be made beside it
    content = Path(outside).read_bytes()
    with pytest.raises(PermissionError):
        open(os.path.join(mnt, ".git", "objects", "pack", "pinned"), "ab").close()
    assert Path(outside).read_bytes() == content
    db = open_readonly(Path(run, "events.db"))
    try:
        rules = {e.rule for e in read_events(db, "deny") if e.target == ".git/objects/pack/pinned"}
    finally:
        db.close()
    assert rules == {"containment: hard link"}
