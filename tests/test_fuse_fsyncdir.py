"""fsync(2) of a directory through the mount reaches the backing directory (EnforcingFS.fsyncdir).

The caller alone cannot tell: without fsyncdir the daemon answers the kernel's first FUSE_FSYNCDIR with ENOSYS,
and the kernel then answers every directory fsync with success itself. So the live test runs the real daemon
with its syncs recorded (tests/recording_mount.py) and reads what it synced."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from fuse_support import REAL_MOUNTS, recording_mount

from ifc.enforce.fs import Denied, EnforcingFS

pytestmark = REAL_MOUNTS


@pytest.fixture
def recorded_mount():
    with recording_mount("fsyncdir") as mounted:
        yield mounted


def _synced(log: str) -> list[str]:
    lines = Path(log).read_text().splitlines() if os.path.exists(log) else []
    return [line for line in lines if line.startswith(("fsync ", "fdatasync "))]


def _sync_dir(path: str, sync=os.fsync) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sync(fd)
    finally:
        os.close(fd)


def test_a_directory_fsync_through_the_mount_syncs_the_backing_directory(recorded_mount):
    src, mnt, log = recorded_mount
    os.mkdir(os.path.join(mnt, "db"))
    Path(mnt, "db", "journal").write_bytes(b"rollback\n")  # a create that only a directory fsync makes durable
    before = _synced(log)
    _sync_dir(os.path.join(mnt, "db"))
    _sync_dir(os.path.join(mnt, "db"))  # the second one too: the kernel asks the daemon every time
    _sync_dir(os.path.join(mnt, "db"), os.fdatasync)
    _sync_dir(mnt)  # the workspace root: the backing root itself
    assert _synced(log)[len(before):] == [f"fsync {src}/db", f"fsync {src}/db", f"fdatasync {src}/db",
                                          f"fsync {src}"]


def _recorded_syncs(monkeypatch) -> list[str]:
    """Every os.fsync/os.fdatasync made in this process from now on, as `fsync PATH`."""
    synced: list[str] = []

    def recording(name: str):
        real = getattr(os, name)

        def sync(fd: int) -> None:
            real(fd)
            synced.append(f"{name} {os.readlink(f'/proc/self/fd/{fd}')}")

        return sync

    for name in ("fsync", "fdatasync"):
        monkeypatch.setattr(os, name, recording(name))
    return synced


def test_fsyncdir_stays_beneath_the_backing_root(tmp_path, monkeypatch):
    """A path FUSE would never send, or one whose names were swapped for symlinks underneath the daemon: the
    directory fsync is refused like any other operation on it, and nothing outside is touched."""
    outside, ws = tmp_path / "outside", tmp_path / "ws"
    for path in (outside, ws / "src"):
        path.mkdir(parents=True)
    (ws / "src" / "app.py").write_text("print('hi')\n")
    os.symlink(outside, ws / "src" / "dir_link")
    os.symlink("../../outside", ws / "src" / "rel_link")
    fs = EnforcingFS(str(ws))
    synced = _recorded_syncs(monkeypatch)
    assert fs.fsyncdir("/src", 0, 0) == 0 and fs.fsyncdir("/", 1, 0) == 0
    assert synced == [f"fsync {ws}/src", f"fdatasync {ws}"]
    synced.clear()
    with pytest.raises(Denied) as info:
        fs.fsyncdir("/../outside", 0, 0)
    assert info.value.errno == errno.EACCES
    for path, code in (("/src/dir_link", errno.ELOOP), ("/src/rel_link", errno.ELOOP),
                       ("/src/dir_link/.", errno.ELOOP), ("/src/app.py", errno.ENOTDIR)):
        with pytest.raises(OSError) as info:
            fs.fsyncdir(path, 0, 0)
        assert info.value.errno == code, path
    assert synced == []
