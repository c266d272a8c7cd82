"""`ifc mount --background` with the egress hook: the daemon it leaves behind serves both the mount and the
proxy (with the same flags as in the foreground), and stopping it unmounts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from fuse_support import REAL_MOUNTS, ROOT

from ifc.enforce.mount import mounted_at

pytestmark = REAL_MOUNTS

POLICY = """\
labels { secrecy public < secret }
files {
  "**"    public
  ".env*" secret
}
agent tester { read "**" }
"""


def test_background_daemon_serves_the_mount_and_the_hook(tmp_path):
    source, mnt, run_dir = tmp_path / "src", tmp_path / "mnt", tmp_path / "run"
    source.mkdir()
    mnt.mkdir()
    (source / "notes.md").write_text("hello\n")
    (tmp_path / "p.flow").write_text(POLICY)
    run_dir.mkdir()
    (run_dir / "mount.log").write_text("ifc mount: egress http on 127.0.0.1:1\n")
    proc = subprocess.run([sys.executable, "-m", "ifc", "mount", "--background", "--policy", str(tmp_path / "p.flow"),
                           "--run-dir", str(run_dir), "--egress", "127.0.0.1:0", str(source), str(mnt)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # port 0: any free port, and the caller is told which (only this daemon's line, not the log's older one)
    said = re.findall(r"^ifc mount: egress http on 127\.0\.0\.1:(\d+)$", proc.stderr, re.M)
    assert len(said) == 1 and said[0] != "1", proc.stderr
    port = int(said[0])
    pid = int((run_dir / "mount.pid").read_text())
    try:
        assert (mnt / "notes.md").read_text() == "hello\n"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"}))
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open("http://unlisted.invalid/", timeout=10)
        assert refused.value.code == 403  # the hook answers, default deny
        assert (run_dir / "ca.pem").exists()
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while (mounted_at(str(mnt)) or "").startswith("fuse") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (mounted_at(str(mnt)) or "").startswith("fuse")


def _mount(tmp_path, source, mnt, run_dir, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ifc", "mount", "--background", "--policy", str(tmp_path / "p.flow"),
                           "--run-dir", str(run_dir), *extra, str(source), str(mnt)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_served_mount_point_is_refused_and_a_dead_one_recovered(tmp_path):
    """Issue 13: a second `--background` mount on a served mount point said "serving" and exited 0 while the old
    mount (old policy, old run dir) stayed in force; after the daemon was killed, mounting again failed with
    "not a directory" until a manual `fusermount3 -u -z`."""
    source, mnt = tmp_path / "src", tmp_path / "mnt"
    source.mkdir()
    mnt.mkdir()
    (source / "notes.md").write_text("hello\n")
    (tmp_path / "p.flow").write_text(POLICY)
    first = _mount(tmp_path, source, mnt, tmp_path / "run1")
    assert first.returncode == 0, first.stderr
    pid = int((tmp_path / "run1" / "mount.pid").read_text())
    second = _mount(tmp_path, source, mnt, tmp_path / "run2")
    assert second.returncode == 2 and "is already a FUSE mount" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr and not (tmp_path / "run2" / "mount.pid").exists()
    os.kill(pid, signal.SIGKILL)  # the daemon dies: the mount point is dead (ENOTCONN), not a directory
    deadline = time.monotonic() + 10
    while os.path.isdir(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
    third = _mount(tmp_path, source, mnt, tmp_path / "run3")
    assert third.returncode == 0, third.stderr
    try:
        assert (mnt / "notes.md").read_text() == "hello\n"
    finally:
        os.kill(int((tmp_path / "run3" / "mount.pid").read_text()), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while (mounted_at(str(mnt)) or "").startswith("fuse") and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("background", [True, False])
def test_a_token_that_does_not_verify_is_refused_before_mounting(tmp_path, background):
    from caps import HostKey, mint
    from caps.keys import write_key

    source, mnt = tmp_path / "src", tmp_path / "mnt"
    source.mkdir()
    mnt.mkdir()
    (tmp_path / "p.flow").write_text(POLICY)
    key = HostKey.generate()
    _, public = write_key(tmp_path / "host.key", key)
    token = mint(key, rights=["read **"], audience="another-run", ttl=60)
    argv = [sys.executable, "-m", "ifc", "mount", *(["--background"] if background else []), "--policy",
            str(tmp_path / "p.flow"), "--run-dir", str(tmp_path / "run"), "--token", token, "--key", str(public),
            str(source), str(mnt)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "ifc mount: error: --token:" in done.stderr and "audience" in done.stderr, \
        done.stderr
    assert "Traceback" not in done.stderr and mounted_at(str(mnt)) is None


def test_the_mount_says_nothing_but_its_own_line(tmp_path):
    """Issue 13: libfuse 3.14.0 printed "Ignoring invalid max threads value 4294967295 > max (100000)." on every
    mount (its unset max_idle_threads, passed on by fuse_main_real; `MountOptions` now sets it). The daemon's
    stderr holds only its own lines, while concurrent readers keep several libfuse workers busy."""
    from concurrent.futures import ThreadPoolExecutor

    from fuse_support import FUSE

    from ifc.enforce.mount import Daemon

    source, mnt = tmp_path / "src", tmp_path / "mnt"
    source.mkdir()
    mnt.mkdir()
    for i in range(32):
        (source / f"f{i}.txt").write_text(f"{i}\n" * 1000)
    (tmp_path / "p.flow").write_text(POLICY)
    log = tmp_path / "daemon.log"
    argv = ["--policy", str(tmp_path / "p.flow"), "--fuse", FUSE, "--run-dir", str(tmp_path / "run"), str(source),
            str(mnt)]
    with Daemon(argv, str(mnt), log_path=str(log)), ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda i: (mnt / f"f{i % 32}.txt").read_text(), range(256)))
    assert texts == [f"{i % 32}\n" * 1000 for i in range(256)]
    lines = log.read_text().splitlines()
    assert lines and all(line.startswith("ifc mount: ") for line in lines), lines
