"""POSIX behaviour of the enforcement filesystem: one suite, run on a mediated mount and on a native
directory (both on tmpfs), results compared case by case."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import shutil
import stat
import subprocess
import tempfile
import time

import pytest
from fuse_support import FUSE, POLICY, REAL_MOUNTS

from ifc.enforce.mount import Daemon

pytestmark = REAL_MOUNTS

_libc = ctypes.CDLL(None, use_errno=True)


def _err(fn, *args):
    """The errno name an operation fails with, or its result."""
    try:
        return fn(*args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def _renameat2(old: str, new: str, flags: int):
    if _libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return "ok"


def _write(path, data: bytes, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode=0o644):
    fd = os.open(path, flags, mode)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def _read(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def suite(base: str) -> dict[str, object]:
    """Each case records what a program would observe; nothing here may depend on which directory it is."""
    r: dict[str, object] = {}
    d = os.path.join(base, "posix")
    os.mkdir(d)
    p = lambda name: os.path.join(d, name)  # noqa: E731
    old_umask = os.umask(0o022)
    try:
        # open flags
        r["open missing"] = _err(os.open, p("missing"), os.O_RDONLY)
        _write(p("a"), b"hello")
        r["excl existing"] = _err(os.open, p("a"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        fd = os.open(p("a"), os.O_WRONLY)
        r["read on O_WRONLY"] = _err(os.read, fd, 10)
        os.close(fd)
        fd = os.open(p("a"), os.O_RDONLY)
        r["write on O_RDONLY"] = _err(os.write, fd, b"x")
        os.close(fd)
        r["O_DIRECTORY on a file"] = _err(os.open, p("a"), os.O_RDONLY | os.O_DIRECTORY)
        r["open dir for writing"] = _err(os.open, d, os.O_WRONLY)
        fd = os.open(p("a"), os.O_RDWR)
        os.lseek(fd, 1, os.SEEK_SET)
        os.write(fd, b"EL")
        os.lseek(fd, 0, os.SEEK_SET)
        r["O_RDWR read back"] = os.read(fd, 10)
        os.close(fd)
        # O_APPEND
        fd = os.open(p("a"), os.O_WRONLY | os.O_APPEND)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"-tail")
        os.pwrite(fd, b"+p", 0)  # Linux: pwrite on O_APPEND appends
        os.close(fd)
        r["O_APPEND"] = _read(p("a"))
        # O_TRUNC
        _write(p("t"), b"0123456789")
        os.close(os.open(p("t"), os.O_WRONLY | os.O_TRUNC))
        r["O_TRUNC size"] = os.stat(p("t")).st_size
        _write(p("t"), b"abc", os.O_WRONLY | os.O_TRUNC)
        r["O_TRUNC rewrite"] = _read(p("t"))
        # O_EXCL creates once
        r["O_EXCL new"] = _err(lambda: (os.close(os.open(p("x"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)),
                                         "ok")[1])
        r["O_EXCL mode"] = oct(stat.S_IMODE(os.stat(p("x")).st_mode))
        # rename over an existing file
        _write(p("src"), b"new content")
        _write(p("dst"), b"old")
        ino = os.stat(p("src")).st_ino
        os.rename(p("src"), p("dst"))
        r["rename over: content"] = _read(p("dst"))
        r["rename over: same inode"] = os.stat(p("dst")).st_ino == ino
        r["rename over: source gone"] = os.path.exists(p("src"))
        _write(p("n1"), b"1")
        _write(p("n2"), b"2")
        r["RENAME_NOREPLACE onto existing"] = _err(_renameat2, p("n1"), p("n2"), 1)
        r["RENAME_NOREPLACE onto new"] = _err(_renameat2, p("n1"), p("n3"), 1)
        if r["RENAME_NOREPLACE onto new"] != "ok":  # libfuse2 cannot pass rename flags (EINVAL): carry on alike
            os.rename(p("n1"), p("n3"))
        os.mkdir(p("dir1"))
        os.mkdir(p("dir2"))
        _write(p("dir2/f"), b"f")
        r["rename dir over non-empty dir"] = _err(os.rename, p("dir1"), p("dir2"))
        r["rename file over dir"] = _err(os.rename, p("n2"), p("dir1"))
        r["rename dir over file"] = _err(os.rename, p("dir1"), p("n2"))
        r["rename dir into itself"] = _err(os.rename, p("dir2"), p("dir2/sub"))
        r["rmdir non-empty"] = _err(os.rmdir, p("dir2"))
        r["unlink a dir"] = _err(os.unlink, p("dir2"))
        r["rmdir a file"] = _err(os.rmdir, p("n2"))
        # unlink while open
        _write(p("u"), b"still here")
        fd = os.open(p("u"), os.O_RDWR)
        os.unlink(p("u"))
        r["unlinked: exists"] = os.path.exists(p("u"))
        r["unlinked: read"] = os.pread(fd, 100, 0)
        os.pwrite(fd, b"STILL", 0)
        r["unlinked: write+read"] = os.pread(fd, 100, 0)
        r["unlinked: nlink"] = os.fstat(fd).st_nlink
        os.close(fd)
        # mtime and ctime
        _write(p("m"), b"1")
        os.utime(p("m"), ns=(1_000_000_000, 1_000_000_000))
        before = os.stat(p("m"))
        time.sleep(0.01)
        _write(p("m"), b"22", os.O_WRONLY)
        after = os.stat(p("m"))
        r["write moves mtime"] = after.st_mtime_ns > before.st_mtime_ns
        r["write moves ctime"] = after.st_ctime_ns > before.st_ctime_ns
        time.sleep(0.01)
        os.chmod(p("m"), 0o600)
        again = os.stat(p("m"))
        r["chmod keeps mtime"] = again.st_mtime_ns == after.st_mtime_ns
        r["chmod moves ctime"] = again.st_ctime_ns > after.st_ctime_ns
        os.utime(p("m"), ns=(1_234_567_891, 2_345_678_912))
        st = os.stat(p("m"))
        r["utime ns exact"] = (st.st_atime_ns, st.st_mtime_ns)
        r["utime omit atime"] = (_libc_utimens_omit_atime(p("m")), os.stat(p("m")).st_atime_ns)
        dir_before = os.stat(d).st_mtime_ns
        time.sleep(0.01)
        _write(p("newentry"), b"")
        r["create moves dir mtime"] = os.stat(d).st_mtime_ns > dir_before
        # permission bits (umask 022)
        _write(p("perm"), b"", mode=0o666)
        r["create mode under umask"] = oct(stat.S_IMODE(os.stat(p("perm")).st_mode))
        os.mkdir(p("pdir"), 0o777)
        r["mkdir mode under umask"] = oct(stat.S_IMODE(os.stat(p("pdir")).st_mode))
        for mode in (0o640, 0o4755, 0o1777, 0o000):
            os.chmod(p("perm"), mode)
            r[f"chmod {oct(mode)}"] = oct(stat.S_IMODE(os.stat(p("perm")).st_mode))
        os.chmod(p("perm"), 0o600)
        r["other user reads 0600"] = _as_nobody(["cat", p("perm")])
        os.chmod(p("perm"), 0o644)
        r["other user reads 0644"] = _as_nobody(["cat", p("perm")])
        r["other user writes 0644"] = _as_nobody(["sh", "-c", f"echo x >> {p('perm')}"])
        os.chown(p("perm"), 65534, 65534)
        st = os.stat(p("perm"))
        r["chown"] = (st.st_uid, st.st_gid)
        # sparse files
        fd = os.open(p("sparse"), os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(fd, b"end", 8 << 20)
        st = os.fstat(fd)
        r["sparse size"] = st.st_size
        r["sparse mostly holes"] = st.st_blocks * 512 < (1 << 20)
        r["sparse hole reads zeros"] = os.pread(fd, 8, 4 << 20)
        os.close(fd)
        # offsets beyond 4 GiB
        fd = os.open(p("large"), os.O_RDWR | os.O_CREAT, 0o644)
        far = (5 << 30) + 12345
        os.pwrite(fd, b"far away", far)
        r["large size"] = os.fstat(fd).st_size
        r["large read back"] = os.pread(fd, 8, far)
        os.lseek(fd, far + 2, os.SEEK_SET)
        r["large seek read"] = os.read(fd, 3)
        os.ftruncate(fd, 6 << 30)
        r["large ftruncate"] = os.fstat(fd).st_size
        os.close(fd)
        os.truncate(p("large"), 10)
        r["truncate by path"] = os.stat(p("large")).st_size
        # links
        os.symlink("a", p("sym"))
        r["readlink"] = os.readlink(p("sym"))
        r["read through symlink"] = _read(p("sym"))
        r["lstat symlink"] = stat.S_ISLNK(os.lstat(p("sym")).st_mode)
        os.link(p("a"), p("hard"))
        # the new name's attributes (the old name's cached nlink is refreshed only after attr_timeout: libfuse's
        # high-level API gives each name its own node, see docs/benchmarks-fuse.md)
        r["hard link nlink"] = (os.stat(p("hard")).st_nlink, os.stat(p("hard")).st_ino == os.stat(p("a")).st_ino)
        r["link onto existing"] = _err(os.link, p("a"), p("hard"))
        r["hard link a dir"] = _err(os.link, d, p("dirlink"))
        # fifo, xattrs, fsync, listing
        os.mkfifo(p("fifo"))
        r["fifo"] = stat.S_ISFIFO(os.stat(p("fifo")).st_mode)
        r["setxattr user"] = _err(os.setxattr, p("a"), "user.k", b"v")
        r["getxattr user"] = _err(os.getxattr, p("a"), "user.k")
        r["getxattr missing"] = _err(os.getxattr, p("a"), "user.nope")
        fd = os.open(p("a"), os.O_WRONLY)
        r["fsync"] = _err(lambda: os.fsync(fd) or "ok")
        r["fdatasync"] = _err(lambda: os.fdatasync(fd) or "ok")
        os.close(fd)
        r["listing"] = sorted(os.listdir(d))
        r["scandir types"] = sorted((e.name, e.is_dir(follow_symlinks=False), e.is_symlink()) for e in os.scandir(d))
        # mmap
        _write(p("mm"), b"\0" * 4096)
        fd = os.open(p("mm"), os.O_RDWR)
        with mmap.mmap(fd, 4096) as region:
            region[0:5] = b"mmap!"
            region.flush()
        os.close(fd)
        r["mmap write"] = _read(p("mm"))[:5]
        r["statvfs namemax"] = os.statvfs(d).f_namemax
    finally:
        os.umask(old_umask)
    return r


def _libc_utimens_omit_atime(path: str):
    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    times = (Timespec * 2)(Timespec(0, (1 << 30) - 2), Timespec(99, 0))  # UTIME_OMIT for atime
    if _libc.utimensat(-100, os.fsencode(path), times, 0) != 0:
        return errno.errorcode[ctypes.get_errno()]
    return os.stat(path).st_mtime_ns


def _as_nobody(argv: list[str]) -> int:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
                          capture_output=True).returncode


@pytest.fixture(scope="module")
def dirs():
    base = tempfile.mkdtemp(prefix="ifc-posix-", dir="/dev/shm")
    os.chmod(base, 0o755)
    src, mnt, native, run = (os.path.join(base, n) for n in ("src", "mnt", "native", "run"))
    for path in (src, mnt, native):
        os.mkdir(path)
        os.chmod(path, 0o755)
    daemon = Daemon(["--policy", str(POLICY), "--agent", "none", "--fuse", FUSE, "--run-dir", run, src, mnt], mnt,
                    log_path=os.path.join(base, "daemon.log"))
    try:
        yield src, mnt, native, run, daemon
    finally:
        status = daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
        assert status == 0, "the daemon did not exit cleanly on SIGTERM"


def test_posix_suite_matches_native(dirs):
    src, mnt, native, _, _ = dirs
    expected = suite(native)
    if FUSE != "mfusepy3":  # libfuse2 has no rename flags: the kernel answers EINVAL, as on any such filesystem
        expected["RENAME_NOREPLACE onto new"] = "EINVAL"
    observed = suite(mnt)
    differences = {k: (expected[k], observed.get(k)) for k in expected if expected[k] != observed.get(k)}
    assert not differences, "mount differs from native (native, mount): " + repr(differences)
    assert sorted(os.listdir(os.path.join(src, "posix"))) == sorted(os.listdir(os.path.join(native, "posix")))


def test_new_files_belong_to_the_caller(dirs):
    src, mnt, _, _, _ = dirs
    os.mkdir(os.path.join(mnt, "shared"), 0o777)
    os.chmod(os.path.join(mnt, "shared"), 0o777)
    assert _as_nobody(["sh", "-c", f"echo hi > {mnt}/shared/mine && mkdir {mnt}/shared/d"]) == 0
    for name in ("mine", "d"):
        st = os.stat(os.path.join(src, "shared", name))
        assert (st.st_uid, st.st_gid) == (65534, 65534)


def test_a_live_mount_is_not_mounted_over(dirs):
    # (the fixture's teardown checks that SIGTERM unmounts and exits 0)
    src, mnt, _, run, daemon = dirs
    import sys

    _write(os.path.join(mnt, "served-before"), b"kept")
    result = subprocess.run([sys.executable, "-m", "ifc", "mount", "--policy", str(POLICY), "--run-dir", run + "2",
                             src, mnt], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "already a FUSE mount" in result.stderr
    assert daemon.proc.poll() is None
    with open(os.path.join(mnt, "served-before"), "rb") as served:
        assert served.read() == b"kept"


def _modes_under_umask(base: str, umask: int) -> dict[str, str]:
    """New objects' modes under `umask`: only the caller's umask may shape them (pjdfstest open/00, mkdir/00)."""
    d = os.path.join(base, f"umask{umask:o}")
    os.mkdir(d, 0o777)
    os.chmod(d, 0o777)
    old = os.umask(umask)
    try:
        _write(os.path.join(d, "f"), b"", mode=0o666)
        os.mkdir(os.path.join(d, "d"), 0o777)
        os.mkfifo(os.path.join(d, "p"), 0o666)
        _write(os.path.join(d, "suid"), b"", mode=0o4755)
        os.mkdir(os.path.join(d, "sticky"), 0o1777)
    finally:
        os.umask(old)
    # as another user too: the daemon chowns what it made, which must not cost the set-id bits
    _as_nobody(["sh", "-c", f"umask {umask:o}; touch {d}/theirs && mkdir {d}/theirdir && "
                            f"perl -MFcntl -e 'sysopen(F, \"{d}/theirsuid\", O_CREAT, 06755) or die'"])
    return {name: oct(stat.S_IMODE(os.lstat(os.path.join(d, name)).st_mode)) for name in sorted(os.listdir(d))}


def _modes_after_a_write_by_another_user(base: str) -> dict[str, str]:
    """Set-ID files (world-writable) written by a user without CAP_FSETID: the kernel clears set-user-ID, and
    set-group-ID (pjdfstest's write cases; the guard that a setuid program in the
    workspace edited by the agent does not stay setuid for the host to run)."""
    d = os.path.join(base, "setid-write")
    os.mkdir(d, 0o777)
    os.chmod(d, 0o777)
    # (not set-group-ID without group execute, which grants nothing at exec: the kernel's FUSE code keeps it, where
    # 6.x's native code clears it for a writer outside the group)
    for name, mode in (("suid", 0o4777), ("sgid-x", 0o2777), ("both", 0o6777)):
        _write(os.path.join(d, name), b"#!/bin/sh\n")
        os.chmod(os.path.join(d, name), mode)
        assert _as_nobody(["sh", "-c", f"printf x >> {d}/{name}"]) == 0
    return {name: oct(stat.S_IMODE(os.lstat(os.path.join(d, name)).st_mode)) for name in sorted(os.listdir(d))}


def test_a_write_by_another_user_clears_set_id_bits_as_natively(dirs):
    _, mnt, native, _, _ = dirs
    expected = _modes_after_a_write_by_another_user(native)
    assert expected["suid"] == oct(0o777)  # the native kernel (6.x clears set-group-ID for a non-member anyway)
    assert _modes_after_a_write_by_another_user(mnt) == expected


@pytest.mark.parametrize("umask", [0o000, 0o027, 0o077])
def test_the_callers_umask_alone_shapes_new_modes(dirs, umask):
    _, mnt, native, _, _ = dirs
    expected = _modes_under_umask(native, umask)
    assert expected["f"] == oct(0o666 & ~umask)  # the native kernel, for reference
    assert _modes_under_umask(mnt, umask) == expected


def test_a_change_through_one_hard_link_shows_through_the_others(dirs):
    """Each name of a multi-link file has its own kernel inode in libfuse's high-level API, so its cached
    attributes would stay old for attr_timeout (10 s): the daemon invalidates the other names."""
    if FUSE != "mfusepy3":
        pytest.skip("libfuse2 has no fuse_invalidate_path (docs/posix.md)")
    _, mnt, _, _, _ = dirs
    d = os.path.join(mnt, "links")
    os.mkdir(d)
    a, b, c = (os.path.join(d, n) for n in "abc")
    _write(a, b"data")
    os.link(a, b)
    assert os.stat(a).st_nlink == os.stat(b).st_nlink == 2  # both names now cached
    ctime = os.stat(b).st_ctime_ns
    time.sleep(0.01)
    os.chmod(a, 0o600)
    assert stat.S_IMODE(os.stat(b).st_mode) == 0o600
    assert os.stat(b).st_ctime_ns > ctime
    os.chown(a, 65534, 65534)
    assert (os.stat(b).st_uid, os.stat(b).st_gid) == (65534, 65534)
    os.utime(b, ns=(5_000_000_000, 6_000_000_000))
    assert os.stat(a).st_mtime_ns == 6_000_000_000
    _write(a, b"longer data", os.O_WRONLY)  # a descriptor written through one name, then closed
    assert os.stat(b).st_size == len(b"longer data") and _read(b) == b"longer data"
    os.link(b, c)
    assert os.stat(a).st_nlink == 3
    os.unlink(c)
    assert os.stat(a).st_nlink == os.stat(b).st_nlink == 2
    _write(c, b"other")
    os.rename(c, a)  # replaces the name `a`: `b` is alone now
    assert os.stat(b).st_nlink == 1 and os.stat(a).st_nlink == 1
    assert _read(b) == b"longer data" and _read(a) == b"other"


def test_path_max_counts_from_the_callers_directory(dirs):
    """A path is legal when each system call's argument is: from a deep working directory, names relative
    to it work even where the same directory named from the mount's root is longer than PATH_MAX."""
    _, mnt, _, _, _ = dirs
    component = "d" * 250
    here = os.path.join(mnt, "deep")
    os.mkdir(here)
    old = os.getcwd()
    try:
        os.chdir(here)
        for _ in range(20):  # about 5,000 bytes below the mount's root
            os.mkdir(component)
            os.chdir(component)
        _write("f", b"deep")
        assert _read("f") == b"deep"
        os.rename("f", "g")
        os.symlink("g", "s")
        os.link("g", "h")
        assert os.stat("h").st_nlink == 2 and os.readlink("s") == "g"
        assert sorted(os.listdir(".")) == ["g", "h", "s"]
        os.chmod("g", 0o600)
        os.truncate("g", 2)
        assert _read("s") == b"de"
        for name in ("g", "h", "s"):
            os.unlink(name)
        for _ in range(20):
            os.chdir("..")
            os.rmdir(component)
    finally:
        os.chdir(old)
    assert os.listdir(here) == []


def test_a_new_file_never_takes_the_inode_number_of_one_deleted_through_the_mount(tmp_path):
    """ext4 gives a freed inode number to the next new file at once; virtiofsd identifies inodes by number, so
    in the microVM sqlite's journal (deleted and re-created on every commit) was taken for the deleted one
    and its open failed with ESTALE. The mount reports each incarnation under a number of its own; hard links
    still share one, and readdir agrees with stat."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    backing, mounted = [], []
    with Daemon(["--policy", str(POLICY), "--agent", "none", "--fuse", FUSE, "--run-dir", str(tmp_path / "run"),
                 str(src), str(mnt)], str(mnt), log_path=str(tmp_path / "daemon.log")):
        for _ in range(5):
            _write(str(mnt / "app.db-journal"), b"journal")
            backing.append(os.stat(src / "app.db-journal").st_ino)
            mounted.append(os.stat(mnt / "app.db-journal").st_ino)
            os.unlink(mnt / "app.db-journal")
        os.mkdir(mnt / "d")
        first = os.stat(mnt / "d").st_ino
        died = {*backing, os.stat(src / "d").st_ino}  # numbers freed through the mount
        os.rmdir(mnt / "d")
        os.mkdir(mnt / "d")
        again = os.stat(mnt / "d").st_ino
        _write(str(mnt / "a"), b"x")
        os.link(mnt / "a", mnt / "b")
        as_linked = os.stat(mnt / "b").st_ino
        _write(str(mnt / "c"), b"y")
        os.rename(mnt / "c", mnt / "a")  # `a`'s old file keeps its name `b`: not dead, same number
        linked = os.stat(mnt / "b").st_ino
        listed = {entry.name: entry.inode() for entry in os.scandir(mnt)}
        stats = {name: os.stat(mnt / name).st_ino for name in listed}
    if len(set(backing)) == len(backing):
        pytest.skip(f"{src} does not reuse inode numbers at once (ext4 does): the case cannot arise")
    assert len(set(mounted)) == len(mounted), (backing, mounted)
    assert first != again or os.stat(src / "d").st_ino != first
    assert linked == as_linked  # never died: the number it had
    plain = os.stat(src / "b").st_ino
    # its plain number, unless `a` was made with a number a deleted journal or the removed directory had (then `a`
    # was born another incarnation: whether ext4 hands it that number depends on when the daemon closed the
    # journal, and on what else the filesystem is making meanwhile)
    assert linked == plain or plain in died, (linked, plain, backing)
    assert listed == stats
