"""`ifc mount --background` with the egress hook: the daemon it leaves behind serves both the mount and the
proxy (with the same flags as in the foreground), and stopping it unmounts."""

from __future__ import annotations

import os
import signal
import socket
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
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "ifc", "mount", "--background", "--policy", str(tmp_path / "p.flow"),
                           "--run-dir", str(run_dir), "--egress", f"127.0.0.1:{port}", str(source), str(mnt)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
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
