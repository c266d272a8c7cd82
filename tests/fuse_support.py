"""What the real-mount tests share: the default policy, the binding under test, and the skip marker."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ifc.enforce.mount import check_fuse_available, is_stale, mounted_at

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "default.flow"
FUSE = os.environ.get("IFC_TEST_FUSE", "mfusepy3")  # the binding under test: mfusepy3, mfusepy2 or fusepy

_missing = check_fuse_available() if os.geteuid() == 0 else "not root"
REAL_MOUNTS = [
    pytest.mark.integration,
    pytest.mark.skipif(_missing is not None, reason=f"needs root and FUSE ({_missing})"),
]


@contextlib.contextmanager
def recording_mount(name: str, *extra: str) -> Iterator[tuple[str, str, str]]:
    """(backing dir, mount point, log) of a live `ifc mount` under the default policy (more arguments: `extra`)
    whose daemon records what it does into the log (tests/recording_mount.py); the daemon must end cleanly when
    the block is left."""
    base = tempfile.mkdtemp(prefix=f"ifc-{name}-", dir="/dev/shm")
    os.chmod(base, 0o755)
    src, mnt, run, log = (os.path.join(base, n) for n in ("src", "mnt", "run", "record.log"))
    for path in (src, mnt):
        os.mkdir(path)
    with open(os.path.join(base, "daemon.log"), "wb") as err:
        child = subprocess.Popen([sys.executable, str(ROOT / "tests" / "recording_mount.py"), log,
                                  "--policy", str(POLICY), "--agent", "none", "--fuse", FUSE, "--run-dir", run,
                                  *extra, src, mnt], stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not (mounted_at(mnt) or "").startswith("fuse") or is_stale(mnt):
            assert child.poll() is None and time.monotonic() < deadline, Path(base, "daemon.log").read_text()
            time.sleep(0.02)
        yield src, mnt, log
    finally:
        child.send_signal(signal.SIGTERM)
        status = child.wait(30)
        shutil.rmtree(base, ignore_errors=True)
    assert status == 0
