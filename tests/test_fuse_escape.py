"""No escape and no laundering through the enforcement filesystem (issue 5 §2), on real mounts of a
workspace labelled by policies/default.flow with the agent `coder`; and failing closed."""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fuse_support import POLICY, REAL_MOUNTS

from ifc.enforce.fs import Backing, Denied, EnforcingFS
from ifc.enforce.mount import Daemon, mounted_at
from ifc.monitor.events import open_readonly, read_events

pytestmark = REAL_MOUNTS


def make_workspace(base: str) -> tuple[str, str]:
    """base/outside (not the workspace), base/ws (the backing directory) with escape hatches planted in it."""
    outside, ws = os.path.join(base, "outside"), os.path.join(base, "ws")
    os.makedirs(outside)
    Path(outside, "secret.txt").write_text("TOP SECRET OUTSIDE\n")
    for d in ("src", "docs", "inbox"):
        os.makedirs(os.path.join(ws, d))
    Path(ws, ".env").write_text("API_KEY=sk-live-123\n")
    Path(ws, "NOTES").write_text("notes\n")
    Path(ws, "src", "app.py").write_text("print('hi')\n")
    Path(ws, "docs", "guide.md").write_text("# guide\n")
    os.symlink(os.path.join(outside, "secret.txt"), os.path.join(ws, "src", "abs_link"))
    os.symlink("../../outside/secret.txt", os.path.join(ws, "src", "rel_link"))
    os.symlink(outside, os.path.join(ws, "src", "dir_link"))
    os.link(os.path.join(outside, "secret.txt"), os.path.join(ws, "src", "hard_out.txt"))
    os.link(os.path.join(ws, ".env"), os.path.join(ws, "src", "env_alias.txt"))  # a hard link inside
    return outside, ws


def labels(run: str) -> dict[str, str]:
    """Floated labels of the run's workspace, from the store the run's log names (the workspace's own)."""
    log = open_readonly(Path(run, "events.db"))
    try:
        store = dict(log.execute("SELECT key, value FROM meta"))["labels"]
    finally:
        log.close()
    db = sqlite3.connect(Path(store).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return {path: secrecy for path, secrecy in db.execute(
            "SELECT names.path, objects.secrecy FROM names JOIN objects ON names.object = objects.id")}
    finally:
        db.close()


def events(run: str, kind: str | None = None) -> list:
    db = open_readonly(Path(run, "events.db"))
    try:
        return list(read_events(db, kind))
    finally:
        db.close()


def mount(base: str, name: str, *args: str) -> tuple[Daemon, str, str]:
    mnt, run = os.path.join(base, name, "mnt"), os.path.join(base, name, "run")
    os.makedirs(mnt)
    daemon = Daemon(["--policy", str(POLICY), "--run-dir", run, *args, os.path.join(base, "ws"), mnt], mnt,
                    log_path=os.path.join(base, name, "daemon.log"))
    return daemon, mnt, run


@pytest.fixture(scope="module")
def base():
    path = tempfile.mkdtemp(prefix="ifc-escape-", dir="/dev/shm")
    make_workspace(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def coder(base):
    daemon, mnt, run = mount(base, "coder")
    try:
        yield mnt, run
    finally:
        assert daemon.stop() == 0


KEY = "-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----\n"  # a key the tests spell: byte 28 is `M`


def run_once(ws: Path, n: int, work: Callable[[Path], None]) -> str:
    """Run `n` on the workspace `ws` (beside it: its mount point and run dir), under the default policy: `work` on
    the mount point; the run dir."""
    mnt, run = ws.parent / f"mnt{n}", ws.parent / f"run{n}"
    mnt.mkdir()
    daemon = Daemon(["--policy", str(POLICY), "--run-dir", str(run), str(ws), str(mnt)], str(mnt),
                    log_path=str(ws.parent / f"daemon{n}.log"))
    try:
        work(mnt)
    finally:
        assert daemon.stop() == 0
    return str(run)


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def _denied(fn, *args) -> bool:
    with pytest.raises(PermissionError):
        fn(*args)
    return True


# ------------------------------------------------------------------------------------------ escapes

def test_dotdot_never_reaches_outside(base, coder):
    mnt, _ = coder
    # the kernel resolves `..` at the mount root in the caller's namespace: it leaves the mount, never
    # to the backing directory's parent
    with pytest.raises(FileNotFoundError):
        open(os.path.join(mnt, "src", "..", "..", "outside", "secret.txt")).close()
    # FUSE never sends `..`; if a path with one reached the adapter it is refused, and the daemon's own
    # resolution cannot climb out of the backing root
    fs = EnforcingFS(os.path.join(base, "ws"))
    with pytest.raises(Denied) as info:
        fs.open("/../outside/secret.txt", os.O_RDONLY)
    assert info.value.errno == errno.EACCES
    with pytest.raises(OSError) as info:
        Backing(os.path.join(base, "ws")).open(".env/../../outside/secret.txt", os.O_RDONLY)
    assert info.value.errno in (errno.EXDEV, errno.ENOTDIR, errno.EACCES)


def test_symlinks_pointing_outside(base, coder):
    mnt, run = coder
    src = os.path.join(mnt, "src")
    for name in ("abs_link", "rel_link"):
        assert _denied(_read, os.path.join(src, name))
    assert _denied(_read, os.path.join(src, "dir_link", "secret.txt"))
    # the daemon itself never follows a symlink, whatever path it is handed
    fs = EnforcingFS(os.path.join(base, "ws"))
    with pytest.raises(OSError) as info:
        fs.getattr("/src/dir_link/secret.txt")
    assert info.value.errno == errno.ELOOP
    # making new ones: absolute, relative, into the backing directory, through an allowed link and `..`
    assert _denied(os.symlink, "/etc/passwd", os.path.join(src, "new_abs"))
    assert _denied(os.symlink, "../../outside/secret.txt", os.path.join(src, "new_rel"))
    assert _denied(os.symlink, os.path.join(base, "ws", ".env"), os.path.join(src, "into_backing"))
    os.symlink("/usr", os.path.join(src, "usr"))  # read-only system trees are fine (a venv's bin/python)
    assert _denied(os.symlink, "usr/../../etc/passwd", os.path.join(src, "via_usr"))
    os.symlink("app.py", os.path.join(src, "inside"))
    assert Path(src, "inside").read_text() == "print('hi')\n"
    rules = {e.target: e.rule for e in events(run, "deny")}
    for name in ("abs_link", "rel_link", "dir_link", "new_abs", "new_rel", "into_backing", "via_usr"):
        assert rules.get(f"src/{name}") == "containment: symlink", (name, rules)


def test_device_nodes_and_guarded_xattrs(coder):
    mnt, run = coder
    with pytest.raises(PermissionError) as info:
        os.mknod(os.path.join(mnt, "src", "null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    assert info.value.errno == errno.EPERM and not os.path.exists(os.path.join(mnt, "src", "null"))
    os.mkfifo(os.path.join(mnt, "src", "fifo"))  # a plain node type is fine
    for name in ("trusted.ifc", "security.ifc"):
        with pytest.raises(PermissionError) as info:
            os.setxattr(os.path.join(mnt, "src", "app.py"), name, b"x")
        assert info.value.errno == errno.EPERM
    rules = {(e.target, e.rule) for e in events(run, "deny")}
    assert {("src/null", "containment: device"), ("src/app.py", "containment: xattr")} <= rules


def test_hard_links_to_outside_files(base, coder):
    """A hard link planted on the host: its content is the workspace's to read (under the workspace's label);
    a change through it must not reach the file outside, so the name first gets an inode of its own."""
    mnt, run = coder
    outside = os.path.join(base, "outside", "secret.txt")
    linked = os.path.join(mnt, "src", "hard_out.txt")
    assert _read(linked) == "TOP SECRET OUTSIDE\n"
    with open(linked, "a") as handle:
        handle.write("written in the sandbox\n")
    os.chmod(linked, 0o600)
    assert _read(outside) == "TOP SECRET OUTSIDE\n" and os.stat(outside).st_mode & 0o777 == 0o644
    assert os.stat(outside).st_nlink == 1 and os.stat(os.path.join(base, "ws", "src", "hard_out.txt")).st_nlink == 1
    assert _read(linked).endswith("written in the sandbox\n")
    assert not any(e.target.startswith("src/hard_out.txt") for e in events(run, "deny"))


def test_proc_self_fd_reopen_is_decided_again(coder):
    mnt, run = coder
    fd = os.open(os.path.join(mnt, "NOTES"), os.O_RDONLY)  # coder may read it, not write it
    try:
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC):
            assert _denied(os.open, f"/proc/self/fd/{fd}", flags)
        again = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
        assert os.read(again, 100) == b"notes\n"
        os.close(again)
    finally:
        os.close(fd)
    writes = [e for e in events(run, "deny") if e.target == "NOTES" and e.op == "write"]
    assert writes and all(e.pid == os.getpid() for e in writes)


def test_denials_are_logged_with_process_and_reported(coder):
    mnt, run = coder
    result = subprocess.run(["cat", os.path.join(mnt, "src", "abs_link")], capture_output=True)
    assert result.returncode != 0 and b"Permission denied" in result.stderr
    result = subprocess.run(["sh", "-c", f"echo x > {mnt}/TOP-LEVEL"], capture_output=True)
    assert result.returncode != 0
    denials = events(run, "deny")
    cat = [e for e in denials if e.target == "src/abs_link" and e.cmdline and e.cmdline.startswith("cat ")]
    sh = [e for e in denials if e.target == "TOP-LEVEL" and e.op == "create"]
    assert cat and cat[-1].pid and cat[-1].subject == "session"
    assert sh and sh[-1].cmdline.startswith("sh -c") and "no `create` grant" in sh[-1].reason
    try:
        from ifc.report.load import load_run
    except ImportError:  # the report package is optional here
        return
    reported = {(d.op, d.target) for d in load_run(run).denials}
    assert ("create", "TOP-LEVEL") in reported and ("readlink", "src/abs_link") in reported


# ------------------------------------------------------------------------------------------ laundering

def test_no_laundering(base):
    """One session, in order: labels follow renames, taint rises on reading `.env`, descriptors opened
    before that (write and mmap) still float the files they write, truncating does not lower a label."""
    daemon, mnt, run = mount(base, "launder")
    try:
        src = os.path.join(mnt, "src")
        # a secret (by name: *.pem) renamed to a harmless name keeps its label
        Path(src, "key.pem").write_text("-----BEGIN KEY-----\n")
        os.rename(os.path.join(src, "key.pem"), os.path.join(src, "harmless.txt"))
        assert "secret" in labels(run)["src/harmless.txt"]
        # truncate-and-rewrite does not lower it
        Path(src, "harmless.txt").write_text("nothing to see\n")
        assert "secret" in labels(run)["src/harmless.txt"]
        # descriptors opened while the session is still clean
        Path(src, "before.txt").write_text("clean\n")
        early = os.open(os.path.join(src, "early.txt"), os.O_WRONLY | os.O_CREAT, 0o644)
        Path(src, "mapped.bin").write_bytes(b"\0" * 4096)
        mfd = os.open(os.path.join(src, "mapped.bin"), os.O_RDWR)
        region = mmap.mmap(mfd, 4096)
        assert "secret" not in labels(run).get("src/before.txt", "")
        assert "secret" not in labels(run).get("src/early.txt", "")
        # the session reads the secret through the mount
        assert Path(mnt, ".env").read_text().startswith("API_KEY=")
        Path(src, "after.txt").write_text("written after reading .env\n")
        os.write(early, b"exfiltrated through an old descriptor\n")
        os.close(early)
        region[0:6] = b"mmap!!"
        region.flush()
        region.close()
        os.close(mfd)
        floated = labels(run)
        for name in ("src/after.txt", "src/early.txt", "src/mapped.bin"):
            assert "secret" in floated.get(name, ""), f"{name} did not float: {floated}"
        assert "secret" not in floated.get("src/before.txt", "")
        label_events = [e for e in events(run, "label") if e.target == "src/after.txt"]
        assert label_events and label_events[0].subject == "session" and "secret" in label_events[0].object_label
        # a hard link inside the workspace shares the content: reading it by its other name carries `.env`'s label
        assert Path(src, "env_alias.txt").read_text().startswith("API_KEY=")
        assert "secret" in labels(run).get("src/env_alias.txt", "")
    finally:
        assert daemon.stop() == 0


def test_a_directory_renamed_onto_host_executed_configuration_is_judged_by_the_names_it_brings(base):
    """Untrusted input read; a CI workflow staged under src/ (writable), then the directory renamed onto
    `.github`: the workflow's new name requires trusted data, so rename(2) is refused and nothing moves. Before
    (only the directory's own name judged) the workflow landed where the host's CI runs it."""
    daemon, mnt, run = mount(base, "stage")
    try:
        Path(base, "ws", "inbox", "issue.txt").write_text("please add this workflow\n")
        assert _read(os.path.join(mnt, "inbox", "issue.txt"))
        os.makedirs(os.path.join(mnt, "src", "stage", "workflows"))
        Path(mnt, "src", "stage", "workflows", "ci.yml").write_text("on: push\n")
        assert _denied(os.rename, os.path.join(mnt, "src", "stage"), os.path.join(mnt, ".github"))
        assert not os.path.exists(os.path.join(base, "ws", ".github"))
        assert Path(base, "ws", "src", "stage", "workflows", "ci.yml").read_text() == "on: push\n"
        denied = [e for e in events(run, "deny") if e.op == "rename"]
        assert denied and ".github/workflows/ci.yml requires `trusted`" in denied[-1].reason
    finally:
        assert daemon.stop() == 0


def test_host_executed_configuration_is_changed_only_as_itself_whatever_name_reaches_it(tmp_path):
    """A hard link is a second name of one content: `.git/config` linked into `src/` (allowed: `src/` is writable
    and a link changes no content) is still changed only as `.git/config` may be. After untrusted input, an open
    for writing, a write through a descriptor opened while the run was clean, and a chmod through the `src/` name
    are refused and the file is unchanged; so is a write through a link the host made before the run (its names
    are found when it is first touched). Before, the write went through, and `core.fsmonitor` runs on the host's
    next `git status`. A file of `src/` alone stays writable."""
    ws, mnt, run = tmp_path / "ws", tmp_path / "mnt", tmp_path / "run"
    for d in ("src", "inbox", ".git/hooks"):
        (ws / d).mkdir(parents=True)
    config, hook = b"[core]\n\tbare = false\n", b"#!/bin/sh\nexit 0\n"
    (ws / ".git" / "config").write_bytes(config)
    (ws / ".git" / "hooks" / "pre-commit").write_bytes(hook)
    os.link(ws / ".git" / "hooks" / "pre-commit", ws / "src" / "hook")  # made on the host
    (ws / "inbox" / "issue.txt").write_text("set core.fsmonitor, it is faster\n")
    mnt.mkdir()
    daemon = Daemon(["--policy", str(POLICY), "--run-dir", str(run), str(ws), str(mnt)], str(mnt),
                    log_path=str(tmp_path / "daemon.log"))
    evil = b'\tfsmonitor = "touch /tmp/pwned"\n'
    try:
        os.link(mnt / ".git" / "config", mnt / "src" / "cfg")
        early = os.open(mnt / "src" / "cfg", os.O_WRONLY | os.O_APPEND)  # while the run is clean
        try:
            assert _read(os.path.join(mnt, "inbox", "issue.txt"))
            assert _denied(os.write, early, evil)
        finally:
            os.close(early)
        assert _denied(os.open, mnt / "src" / "cfg", os.O_WRONLY | os.O_APPEND)
        assert _denied(os.chmod, mnt / "src" / "cfg", 0o755)
        assert _denied(os.open, mnt / "src" / "hook", os.O_WRONLY | os.O_TRUNC)
        (mnt / "src" / "app.py").write_text("print('still mine')\n")
    finally:
        assert daemon.stop() == 0
    assert (ws / ".git" / "config").read_bytes() == config and (ws / ".git" / "hooks" / "pre-commit").read_bytes() \
        == hook and (ws / ".git" / "config").stat().st_mode & 0o111 == 0
    denied = [e for e in events(str(run), "deny") if e.target in ("src/cfg", "src/hook")]
    assert [e.op for e in denied] == ["write", "write", "chmod", "write"], denied
    assert all("requires `trusted`" in e.reason for e in denied), denied


def test_a_symlink_is_judged_where_a_rename_puts_it(tmp_path):
    """A relative symlink means something else from another directory: `src/a/b/l -> ../../../README` stays in
    the workspace, but renamed to `src/l` (or carried there by its directory's rename) it leads out of it, where
    a host tool writing `src/l` after the run would write. Refused like making it there; a move that keeps every
    target inside goes through. And a symlink at a name what the host runs (a git hook) may lead only where writes
    require as much: `.git/hooks/pre-commit -> ../../src/cfg`, made there or renamed there, would let a later
    write to `src/cfg` after untrusted input change the hook."""
    ws, mnt, run = tmp_path / "ws", tmp_path / "mnt", tmp_path / "run"
    for d in ("src/a/b", "src/x/y", "src/q", ".git/hooks"):
        (ws / d).mkdir(parents=True)
    (ws / "README").write_text("hi\n")
    mnt.mkdir()
    daemon = Daemon(["--policy", str(POLICY), "--run-dir", str(run), str(ws), str(mnt)], str(mnt),
                    log_path=str(tmp_path / "daemon.log"))
    try:
        os.symlink("../../../README", mnt / "src" / "a" / "b" / "l")
        assert _denied(os.rename, mnt / "src" / "a" / "b" / "l", mnt / "src" / "l")
        os.symlink("../../../README", mnt / "src" / "x" / "y" / "m")
        os.symlink("../y/m", mnt / "src" / "x" / "y" / "inner")
        assert _denied(os.rename, mnt / "src" / "x" / "y", mnt / "src" / "yy")
        os.rename(mnt / "src" / "x" / "y", mnt / "src" / "x" / "z")  # the same depth: every target the same
        assert (mnt / "src" / "x" / "z" / "m").read_text() == "hi\n"
        assert _denied(os.symlink, "../../src/cfg", mnt / ".git" / "hooks" / "pre-commit")
        os.symlink("../../src/cfg", mnt / "src" / "q" / "hook")  # leads to `src/cfg` from `.git/hooks/` too
        assert _denied(os.rename, mnt / "src" / "q" / "hook", mnt / ".git" / "hooks" / "pre-commit")
        os.symlink("pre-commit", mnt / ".git" / "hooks" / "pre-push")  # to a name guarded as much: fine
    finally:
        assert daemon.stop() == 0
    assert not (ws / "src" / "l").is_symlink() and not (ws / "src" / "yy").exists()
    assert not (ws / ".git" / "hooks" / "pre-commit").is_symlink()
    reasons = [e.reason for e in events(str(run), "deny")]
    assert len(reasons) == 4, reasons
    assert reasons[0] == "moved to `src/l`, a symlink to `../../../README` climbs out of the workspace"
    assert reasons[1] == "moved to `src/yy/m`, a symlink to `../../../README` climbs out of the workspace"
    assert reasons[2] == reasons[3] == ("a symlink at .git/hooks/pre-commit (writes require trusted) would lead to "
                                        "`src/cfg`, which requires less: what is written there would be what the host "
                                        "runs")


def test_names_a_secret_run_made_taint_the_next_run_that_reads_them(tmp_path):
    """Run 1 reads a key and spells it in names: one empty file per bit in `src/bits` (whether a name is there is the
    bit). Run 2, a new mount and a clean run, that only stats those names (no listing, no read of a file) is
    tainted `secret`: what it writes floats to secret. Run 3 lists and stats where no secret run made names, and
    stays clean."""
    ws = tmp_path / "ws"
    for d in ("src/bits", "docs"):
        (ws / d).mkdir(parents=True)
    (ws / "src" / "app.py").write_text("print('hi')\n")
    (ws / "deploy.pem").write_text(KEY)

    def spell(mnt: Path) -> None:
        key = (mnt / "deploy.pem").read_bytes()
        for i, bit in enumerate(format(key[28], "08b")):
            if bit == "1":
                (mnt / "src" / "bits" / str(i)).touch()

    def probe(mnt: Path) -> None:
        assert [(mnt / "src" / "bits" / str(i)).exists() for i in range(8)] == [b == "1" for b in format(ord("M"),
                                                                                                       "08b")]
        (mnt / "docs" / "out2.md").write_text("learnt\n")

    def clean(mnt: Path) -> None:
        assert sorted(os.listdir(mnt / "src")) == ["app.py", "bits"] and (mnt / "src" / "app.py").exists()
        (mnt / "src" / "out3.py").write_text("nothing learnt\n")

    run_once(ws, 1, spell)
    floated = labels(run_once(ws, 2, probe))
    # run 2 made a name in docs/ while secret: docs/ is now what src/bits is
    assert floated["src/bits"] == floated["docs"] == "secret" and "secret" in floated["docs/out2.md"], floated
    floated = labels(run_once(ws, 3, clean))
    assert "src/out3.py" not in floated and "src" not in floated, floated


def test_names_a_secret_run_made_in_a_secret_directory_taint_the_next_run_that_lists_them(tmp_path):
    """`src/credentials/` is `secret` by its own name: run 1 reads a key and makes a file there named after it;
    run 2 lists the directory (no read of a file) and is tainted — a listing reads no policy label, so the
    directory's label could not hold the names back."""
    ws = tmp_path / "ws"
    (ws / "src" / "credentials").mkdir(parents=True)
    (ws / "deploy.pem").write_text(KEY)

    def spell(mnt: Path) -> None:
        key = (mnt / "deploy.pem").read_text().splitlines()[1]
        (mnt / "src" / "credentials" / f"sk-{key}").touch()

    def probe(mnt: Path) -> None:
        assert os.listdir(mnt / "src" / "credentials") == ["sk-MIIEvQ"]
        (mnt / "src" / "out2.py").write_text("learnt\n")

    run_once(ws, 1, spell)
    floated = labels(run_once(ws, 2, probe))
    assert "secret" in floated.get("src/out2.py", ""), floated


def test_names_a_secret_run_removed_taint_the_next_run_that_looks_them_up(tmp_path):
    """Run 1 reads a key and deletes one of the owner's eight files per set bit. Run 2 stats all eight (no listing):
    the first absent one taints it, so it cannot send the bits. Run 3 stats only names nobody tainted removed, in
    the same directories (`src/bits` itself too, though its label is its names'), and stays clean."""
    ws = tmp_path / "ws"
    (ws / "src" / "bits").mkdir(parents=True)
    for i in range(8):
        (ws / "src" / "bits" / str(i)).write_text("0\n")
    (ws / "deploy.pem").write_text(KEY)
    bits = format(ord("M"), "08b")

    def spell(mnt: Path) -> None:
        assert (mnt / "deploy.pem").read_bytes()[28] == ord("M")
        for i, bit in enumerate(bits):
            if bit == "1":
                (mnt / "src" / "bits" / str(i)).unlink()
        (mnt / "src" / "note").write_text("x\n")  # a name made in src/: src/ is labelled too

    def probe(mnt: Path) -> None:
        assert [not (mnt / "src" / "bits" / str(i)).exists() for i in range(8)] == [b == "1" for b in bits]
        (mnt / "docs").mkdir(exist_ok=True)

    def clean(mnt: Path) -> None:
        assert (mnt / "src" / "bits" / "0").exists()  # bit 0 of `M` is 0: never removed
        (mnt / "src" / "out3.py").write_text("nothing learnt\n")

    run_once(ws, 1, spell)
    assert "secret" in labels(run_once(ws, 2, probe)).get("docs", ""), "a name made by a tainted run 2"
    assert "src/out3.py" not in labels(run_once(ws, 3, clean))
    # a person sees the removed names (`ifc labels`) and lowers one: looking it up reads that from then on
    ifc = [sys.executable, "-m", "ifc", "labels", str(ws)]
    listed = subprocess.run(ifc, capture_output=True, text=True, check=True).stdout
    assert "names a tainted run made or removed" in listed and "  src/bits/1: secret, trusted (removed)" in listed
    subprocess.run([*ifc, "--policy", str(POLICY), "--lower", "src/bits/1", "--to", "internal", "--reason",
                    "checked: the bits are noise"], capture_output=True, text=True, check=True)

    def lowered(mnt: Path) -> None:
        assert not (mnt / "src" / "bits" / "1").exists()
        (mnt / "src" / "out4.py").write_text("x\n")

    assert "src/out4.py" not in labels(run_once(ws, 4, lowered))


def test_names_another_run_makes_meanwhile_taint_a_run_that_reads_them(tmp_path):
    """Two runs on one workspace at once: B mounts first (nothing labelled then), A reads a key, sets the mtime of
    the owner's `src/clock.py` to a byte of it and makes a name in `src/drop`; B's stat of the file, and its lookup
    of the name, answered by the compiled fast path until then, reach the monitor (the label store moved since B
    looked) and taint B."""
    ws = tmp_path / "ws"
    (ws / "src" / "drop").mkdir(parents=True)
    (ws / "src" / "clock.py").write_text("")
    (ws / "deploy.pem").write_text(KEY)
    daemons, mounts = [], {}
    try:
        for name in ("b", "a"):
            mounts[name] = tmp_path / f"mnt-{name}"
            mounts[name].mkdir()
            daemons.append(Daemon(["--policy", str(POLICY), "--run-dir", str(tmp_path / f"run-{name}"), str(ws),
                                   str(mounts[name])], str(mounts[name]), log_path=str(tmp_path / f"{name}.log")))
        assert os.listdir(mounts["b"] / "src/drop") == []  # served in C: nothing is labelled yet
        byte = (mounts["a"] / "deploy.pem").read_bytes()[28]
        os.utime(mounts["a"] / "src" / "clock.py", (byte, byte))
        assert os.stat(mounts["b"] / "src" / "clock.py").st_mtime == ord("M")
        (mounts["b"] / "src" / "out1.py").write_text("learnt\n")
        (mounts["a"] / "src" / "drop" / "sk-MIIEvQ").touch()
        assert (mounts["b"] / "src" / "drop" / "sk-MIIEvQ").exists()
        (mounts["b"] / "src" / "out2.py").write_text("learnt\n")
    finally:
        for daemon in daemons:
            assert daemon.stop() == 0
    floated = labels(str(tmp_path / "run-b"))
    assert "secret" in floated.get("src/out1.py", "") and "secret" in floated.get("src/out2.py", ""), floated


@pytest.mark.parametrize("channel", ["mtime", "size", "mode"])
def test_attributes_a_secret_run_changed_taint_the_next_run_that_stats_them(tmp_path, channel):
    """Run 1 reads a key and hides a byte of it in an attribute of the owner's clean `src/a.py`: its mtime (`touch
    -d @<byte>`), its size (as many bytes appended) or its mode (`chmod`). Run 2, a new mount and a clean run, only
    stats the file (no read, no listing) and learns the byte: it is tainted, so what it writes floats to secret.
    Run 3 stats the owner's untouched `src/b.py` beside it, and stays clean."""
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "docs").mkdir()
    for name in ("a.py", "b.py"):
        (ws / "src" / name).write_text("")
    (ws / "deploy.pem").write_text(KEY)
    read = {"mtime": lambda st: int(st.st_mtime), "size": lambda st: st.st_size, "mode": lambda st: st.st_mode & 0o777}

    def spell(mnt: Path) -> None:
        byte = (mnt / "deploy.pem").read_bytes()[28]
        target = mnt / "src" / "a.py"
        if channel == "mtime":
            os.utime(target, (byte, byte))
        elif channel == "size":
            with open(target, "ab") as handle:
                handle.write(b"x" * byte)
        else:
            os.chmod(target, byte)

    def probe(mnt: Path) -> None:
        assert read[channel](os.stat(mnt / "src" / "a.py")) == ord("M")
        (mnt / "docs" / "out2.md").write_text("learnt\n")

    def clean(mnt: Path) -> None:
        os.stat(mnt / "src" / "b.py")
        (mnt / "docs" / "out3.md").write_text("nothing learnt\n")

    run_once(ws, 1, spell)
    floated = labels(run_once(ws, 2, probe))
    assert "secret" in floated.get("docs/out2.md", ""), floated
    assert "docs/out3.md" not in labels(run_once(ws, 3, clean))


def test_a_directorys_attributes_do_not_count_the_names_a_secret_run_made_in_it(tmp_path):
    """Run 1 reads a key and makes as many files, and a subdirectory per set bit, in the owner's `src/` as a byte of
    it says. Run 2 only stats `src` (no listing, no lookup of those names): its size, blocks and link count are
    what they were before run 1 — every directory's are served as one small directory's — so it learns nothing, and
    stays clean. (Its times still say when names changed: docs/threat-model.md.)"""
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "deploy.pem").write_text(KEY)
    seen = []

    def counted(st: os.stat_result) -> tuple[int, int, int]:
        return st.st_size, st.st_blocks, st.st_nlink

    def spell(mnt: Path) -> None:
        seen.append(counted(os.stat(mnt / "src")))
        byte = (mnt / "deploy.pem").read_bytes()[28]
        for i in range(byte):
            (mnt / "src" / f"f{i}").touch()
        for i, bit in enumerate(format(byte, "08b")):
            if bit == "1":
                (mnt / "src" / f"d{i}").mkdir()

    def probe(mnt: Path) -> None:
        seen.append(counted(os.stat(mnt / "src")))
        (mnt / "docs").mkdir()
        (mnt / "docs" / "out.md").write_text("nothing learnt\n")

    run_once(ws, 1, spell)
    assert os.stat(ws / "src").st_nlink == 2 + format(ord("M"), "08b").count("1")  # the backing counts them
    assert "docs/out.md" not in labels(run_once(ws, 2, probe))
    assert seen[0] == seen[1] == (4096, 8, 1), seen


def test_a_read_leaves_no_access_time_for_a_later_run_to_read(tmp_path):
    """Run 1 reads a key and then, at an instant it chooses, reads the owner's `src/a.py` — through read(2), mmap
    and a listing of `src` — whose access time is older than its change time, so relatime would set it. The mount
    reads the backing files without touching their access times (O_NOATIME), so run 2's stat shows the times
    from before, with nothing to learn."""
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "a.py").write_text("print('hi')\n")
    (ws / "deploy.pem").write_text(KEY)
    for name in ("src/a.py", "src"):
        os.utime(ws / name, (1000, time.time()))
    seen = []

    def spell(mnt: Path) -> None:
        (mnt / "deploy.pem").read_bytes()
        assert (mnt / "src" / "a.py").read_bytes() == b"print('hi')\n" and os.listdir(mnt / "src") == ["a.py"]
        with open(mnt / "src" / "a.py", "rb") as handle, mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ) as m:
            assert m[:5] == b"print"

    def probe(mnt: Path) -> None:
        seen.extend(int(os.stat(mnt / name).st_atime) for name in ("src/a.py", "src"))

    run_once(ws, 1, spell)
    run_once(ws, 2, probe)
    assert seen == [1000, 1000] and int(os.stat(ws / "src" / "a.py").st_atime) == 1000, seen


def test_the_free_space_is_served_in_steps_a_kept_file_cannot_move(tmp_path):
    """Free blocks and inodes move with what a run keeps: a run that read a key could keep as many KiB, in a
    labelled file nobody need read again, for the next run's `df`. On a private 64 MiB tmpfs, where a step is
    1 MiB: the mount serves free blocks and inodes in whole steps, within one step of the real ones, and a file
    kept short of the next step leaves `df` as it was."""
    fs, mnt, run = tmp_path / "fs", tmp_path / "mnt", tmp_path / "run"
    fs.mkdir()
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=6400", "ifc-test", str(fs)], check=True)
    try:
        (fs / "src").mkdir()
        daemon = Daemon(["--policy", str(POLICY), "--run-dir", str(run), str(fs), str(mnt)], str(mnt),
                        log_path=str(tmp_path / "daemon.log"))
        try:
            real, served = os.statvfs(fs), os.statvfs(mnt)
            step, inodes = real.f_blocks // 64, real.f_files // 64
            assert served.f_bfree % step == 0 and real.f_bfree - step < served.f_bfree <= real.f_bfree
            assert served.f_ffree % inodes == 0 and real.f_ffree - inodes < served.f_ffree <= real.f_ffree
            room = (real.f_bfree % step) * real.f_frsize  # bytes before the served value would move
            if room >= 8192:
                (mnt / "src" / "pad.bin").write_bytes(b"x" * (room - 4096))
                assert os.statvfs(fs).f_bfree < real.f_bfree and os.statvfs(mnt).f_bfree == served.f_bfree
        finally:
            assert daemon.stop() == 0
    finally:
        subprocess.run(["umount", str(fs)], check=True)


def test_a_link_a_secret_run_made_and_removed_taints_the_next_run_that_stats_the_file(tmp_path):
    """Run 1 reads a key and, at an instant it chooses, links the owner's clean `src/a.py` and removes the link:
    the file's change time (and, while the link lives, its link count) now says when. Run 2 only stats
    `src/a.py` and is tainted; run 3 stats the untouched `src/b.py` and stays clean."""
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    for name in ("a.py", "b.py"):
        (ws / "src" / name).write_text("")
    (ws / "deploy.pem").write_text(KEY)
    before = os.stat(ws / "src" / "a.py").st_ctime_ns

    def spell(mnt: Path) -> None:
        (mnt / "deploy.pem").read_bytes()
        os.link(mnt / "src" / "a.py", mnt / "src" / "l")
        os.unlink(mnt / "src" / "l")

    def probe(mnt: Path) -> None:
        assert os.stat(mnt / "src" / "a.py").st_ctime_ns != before
        (mnt / "src" / "out2.py").write_text("learnt\n")

    def clean(mnt: Path) -> None:
        os.stat(mnt / "src" / "b.py")
        (mnt / "src" / "out3.py").write_text("nothing learnt\n")

    run_once(ws, 1, spell)
    assert "secret" in labels(run_once(ws, 2, probe)).get("src/out2.py", "")
    assert "src/out3.py" not in labels(run_once(ws, 3, clean))


def test_attribute_names_a_secret_run_set_taint_the_run_that_lists_them(tmp_path):
    """`user.*` attribute names are data as their values are: a secret run names one after the key on a file it
    may write (`src/app.py`, which floats); a later run that only lists the file's attribute names (no value
    read) is tainted. A file without such names is listed without a decision (`ls -l` asks every file)."""
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    for name in ("app.py", "plain.py"):
        (ws / "src" / name).write_text("print('hi')\n")
    (ws / "deploy.pem").write_text(KEY)

    def spell(mnt: Path) -> None:
        (mnt / "deploy.pem").read_bytes()
        os.setxattr(mnt / "src" / "app.py", "user.sk-MIIEvQ", b"1")

    def plain(mnt: Path) -> None:
        assert os.listxattr(mnt / "src" / "plain.py") == []
        (mnt / "src" / "out1.py").write_text("x\n")

    def probe(mnt: Path) -> None:
        assert os.listxattr(mnt / "src" / "app.py") == ["user.sk-MIIEvQ"]
        (mnt / "src" / "out2.py").write_text("learnt\n")

    run_once(ws, 1, spell)
    assert "src/out1.py" not in labels(run_once(ws, 2, plain))
    floated = labels(run_once(ws, 3, probe))
    assert "secret" in floated["src/app.py"] and "secret" in floated["src/out2.py"], floated


def test_a_renamed_directory_carries_the_labels_of_the_names_beneath_it(tmp_path):
    """A policy whose secret files are secret by where they are (`src/private/**`), in a directory the agent
    may write: renaming the directory keeps every name beneath it secret, and a later reader is tainted. A
    pytest-style rename of a directory of plain files stores no label at all."""
    text = POLICY.read_text().replace('  "data/customers/**"                     pii\n',
                                      '  "data/customers/**"                     pii\n  "src/private/**"  secret\n')
    policy, ws, mnt, run = tmp_path / "private.flow", tmp_path / "ws", tmp_path / "mnt", tmp_path / "run"
    policy.write_text(text)
    Path(ws, "src", "private", "keys").mkdir(parents=True)
    Path(ws, "src", "private", "keys", "prod.txt").write_text("sk-prod\n")
    mnt.mkdir()
    daemon = Daemon(["--policy", str(policy), "--run-dir", str(run), str(ws), str(mnt)], str(mnt),
                    log_path=str(tmp_path / "daemon.log"))
    try:
        cache = mnt / "src" / "pytest-cache-files-x" / "v" / "cache"
        cache.mkdir(parents=True)
        (cache / "nodeids").write_text("[]\n")
        os.rename(mnt / "src" / "pytest-cache-files-x", mnt / "src" / ".pytest_cache")
        assert (mnt / "src" / ".pytest_cache" / "v" / "cache" / "nodeids").read_text() == "[]\n"
        assert labels(str(run)) == {}
        os.rename(mnt / "src" / "private", mnt / "src" / "open")
        floated = labels(str(run))
        assert "secret" in floated.get("src/open/keys/prod.txt", ""), floated
        assert "secret" in floated.get("src/open/keys", ""), floated
        assert _read(str(mnt / "src" / "open" / "keys" / "prod.txt")) == "sk-prod\n"
        Path(mnt, "src", "after.txt").write_text("written after reading it\n")
        assert "secret" in labels(str(run)).get("src/after.txt", "")
    finally:
        assert daemon.stop() == 0


def test_a_create_over_a_file_the_kernel_thinks_absent_is_an_open_of_that_file(base):
    """The kernel caches a name found absent (negative_timeout); a file that appears behind its back (a host
    process writing the backing directory) is then reached by an O_CREAT open as a *create*. It must be
    served as the open of the existing file it is: decided as a read (the secret's taint rises, so what the
    session writes next floats) and never truncated or re-owned under a create decision. (An O_EXCL create
    is not at stake: the kernel looks such a name up again whatever it cached.)"""
    daemon, mnt, run = mount(base, "late")
    try:
        late = os.path.join(mnt, "src", "late.pem")
        assert not os.path.exists(late)  # the kernel now holds a negative entry for the name
        Path(base, "ws", "src", "late.pem").write_text("-----BEGIN LATE KEY-----\n")
        os.chmod(os.path.join(base, "ws", "src", "late.pem"), 0o640)
        fd = os.open(late, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            assert os.read(fd, 100) == b"-----BEGIN LATE KEY-----\n"
        finally:
            os.close(fd)
        Path(mnt, "src", "after_late.txt").write_text("written after reading late.pem\n")
        assert "secret" in labels(run).get("src/after_late.txt", ""), labels(run)
        assert stat.S_IMODE(os.stat(os.path.join(base, "ws", "src", "late.pem")).st_mode) == 0o640
    finally:
        assert daemon.stop() == 0


def test_a_file_the_host_replaces_during_a_run_is_read_and_decided_as_what_it_now_is(base):
    """The kernel caches a name's entry, attributes and pages (10 s, `kernel_cache`). A host process that
    replaces the backing file behind the mount (here: renames a hard link of a secret key over a public name)
    must not leave the sandbox reading the old file under that name, nor the new one under the old file's
    decision: the next open is decided for the object the name now is (its labels joined with the key's, so
    reading it taints the run) and serves that object's content. A design that keeps inodes for cached
    entries (libfuse's low-level API, docs/benchmarks.md "Part 2") serves the old file here."""
    ws = os.path.join(base, "ws", "src")
    Path(ws, "swap_key.pem").write_text("-----BEGIN SWAP KEY-----\n")
    Path(ws, "swap.txt").write_text("public\n")
    daemon, mnt, run = mount(base, "swap")
    try:
        name = os.path.join(mnt, "src", "swap.txt")
        assert _read(name) == "public\n"  # entry, attributes and pages now cached by the kernel
        os.link(os.path.join(ws, "swap_key.pem"), os.path.join(ws, "swap.new"))
        os.rename(os.path.join(ws, "swap.new"), os.path.join(ws, "swap.txt"))
        assert _read(name) == "-----BEGIN SWAP KEY-----\n"
        Path(mnt, "src", "after_swap.txt").write_text("written after reading swap.txt\n")
        assert "secret" in labels(run).get("src/after_swap.txt", ""), labels(run)
    finally:
        assert daemon.stop() == 0


def test_per_process_token_is_its_own_subject(base):
    import caps

    host = caps.HostKey.generate()
    keydir = os.path.join(base, "keys")
    os.makedirs(keydir)
    caps.write_key(os.path.join(keydir, "host.key"), host)
    daemon, mnt, run = mount(base, "tokens", "--key", os.path.join(keydir, "host.key.pub"), "--audience", "run-t")
    try:
        token = caps.mint(host, rights=["read src/**"], audience="run-t", ttl=600)
        env = {**os.environ, "IFC_TOKEN": token}
        code = "import sys; open(sys.argv[1]).read()"
        ok = subprocess.run([sys.executable, "-c", code, f"{mnt}/src/app.py"], env=env, capture_output=True)
        assert ok.returncode == 0, ok.stderr
        refused = subprocess.run([sys.executable, "-c", code, f"{mnt}/docs/guide.md"], env=env, capture_output=True)
        assert b"PermissionError" in refused.stderr
        # its children without a token of their own are the same subject
        child = subprocess.run(["sh", "-c", f"cat {mnt}/docs/guide.md"], env=env, capture_output=True)
        assert child.returncode != 0
        assert Path(mnt, "docs", "guide.md").read_text() == "# guide\n"  # the session (agent grants) may
        denied = [e for e in events(run, "deny") if e.target == "docs/guide.md"]
        assert denied and all(e.subject.startswith("pid:") for e in denied)
        assert any(e.reason.startswith("token:") for e in denied)
    finally:
        assert daemon.stop() == 0


# ------------------------------------------------------------------------------------------ failing closed

def test_a_dead_daemon_fails_closed_and_is_recovered(base):
    daemon, mnt, run = mount(base, "dies", "--agent", "none")
    assert os.path.exists(os.path.join(mnt, ".env"))
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.proc.wait(10)
    time.sleep(0.1)
    # every request now fails (only attributes the kernel still caches can be seen): never the backing
    # directory, never the bare mount point underneath
    for probe in (lambda: os.listdir(mnt), lambda: os.statvfs(mnt), lambda: _read(os.path.join(mnt, "NOTES")),
                  lambda: os.close(os.open(os.path.join(mnt, "new"), os.O_WRONLY | os.O_CREAT))):
        with pytest.raises(OSError) as info:
            probe()
        assert info.value.errno == errno.ENOTCONN
    assert mounted_at(mnt) is not None
    again = Daemon(["--policy", str(POLICY), "--agent", "none", "--run-dir", run, os.path.join(base, "ws"), mnt],
                   mnt, log_path=os.path.join(base, "dies", "daemon2.log"))
    try:
        assert Path(mnt, "NOTES").read_text() == "notes\n"
    finally:
        assert again.stop() == 0
    assert mounted_at(mnt) is None


def test_waiting_for_a_daemon_never_takes_the_bare_directory_for_its_mount(monkeypatch, tmp_path):
    """A dead mount read from mountinfo just before the new daemon detaches it: `is_stale` then asks the bare
    directory beneath, which answers. Waiting must not stop there (the test above read ENOENT from the empty
    mount point, under load, and its SIGTERM found a daemon not yet serving)."""
    from ifc.enforce import mount as mount_module

    stale = iter([True])
    monkeypatch.setattr(mount_module, "_mount_entry", lambda path: ("41", "fuse.ifc"))  # always the old entry
    monkeypatch.setattr(mount_module, "is_stale", lambda path: next(stale, False))  # dead, then the bare dir
    monkeypatch.setattr(mount_module, "mounted_at", lambda path: None)  # detached meanwhile
    with pytest.raises(mount_module.MountError, match="exited"):  # the daemon (bad arguments) ends: no mount
        Daemon(["--no-such-option"], str(tmp_path), timeout=30)


def test_monitor_errors_deny(tmp_path):
    """A monitor whose decide raises: every operation is denied, nothing happens on disk, the error is logged."""
    from ifc.monitor import EventLog, Monitor
    from ifc.policy import load_policy

    class BrokenMonitor(Monitor):
        def decide(self, request):
            raise RuntimeError("boom")

    _, ws = make_workspace(str(tmp_path))
    log = EventLog(tmp_path / "events.db")
    fs = EnforcingFS(ws, BrokenMonitor(load_policy(POLICY), log=log))
    for call in (lambda: fs.open("/src/app.py", os.O_RDONLY), lambda: fs.unlink("/NOTES"),
                 lambda: fs.mkdir("/src/newdir", 0o755)):
        with pytest.raises(Denied) as info:
            call()
        assert info.value.errno == errno.EACCES
    assert os.path.exists(os.path.join(ws, "NOTES")) and not os.path.exists(os.path.join(ws, "src", "newdir"))
    assert fs.stats.errors == 3
    errors = list(log.events("error"))
    assert [e.op for e in errors] == ["read", "delete", "create"] and all("boom" in e.reason for e in errors)


def test_no_name_slips_beneath_a_directory_between_its_walk_and_its_rename(tmp_path):
    """The race against a directory rename's walk (in-process, made certain): after the rename onto `.github`
    is decided — its walk found `workflows/` empty — another thread writes `workflows/ci.yml` in the staged
    directory, where an untrusted run may. Were it made before rename(2), the workflow would land where the
    host's CI runs it, judged by no one there. The name lock (`NameLock`) holds it off until the directory has
    moved; it then finds its directory gone."""
    import threading

    from ifc.monitor import Monitor
    from ifc.policy import load_policy

    _, ws = make_workspace(str(tmp_path))
    Path(ws, "inbox", "issue.txt").write_text("untrusted\n")
    os.makedirs(os.path.join(ws, "src", "stage", "workflows"))
    policy = load_policy(POLICY)
    fs = EnforcingFS(ws, Monitor(policy, agent=policy.agents["coder"]))
    fh = fs.open("/inbox/issue.txt", os.O_RDONLY)  # the run is untrusted from here
    fs.release("/inbox/issue.txt", fh)
    made: list[object] = []

    def make() -> None:
        try:
            made.append(fs.create("/src/stage/workflows/ci.yml", 0o644, os.O_WRONLY))
        except OSError as exc:
            made.append(exc)

    decide = fs._decide

    def decided_then_raced(op, rel, dest=None, facts=None):
        caller = decide(op, rel, dest, facts)
        if op == "rename":
            maker = threading.Thread(target=make)
            maker.start()
            maker.join(0.5)  # without the lock, the workflow is written here
        return caller

    fs._decide = decided_then_raced
    fs.rename("/src/stage", "/.github")
    deadline = time.monotonic() + 10
    while not made and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(os.path.join(ws, ".github", "workflows", "ci.yml")), "a workflow slipped in"
    assert isinstance(made[0], OSError) and made[0].errno in (errno.ENOENT, errno.EACCES), made


def test_every_open_asks_the_monitor_and_old_descriptors_float(tmp_path):
    """In-process (no mount): the filesystem keeps no decision of its own — a repeated open is asked of the
    monitor again (its fast path answers); a write through a descriptor is decided again once the taint
    rose, so the file floats."""
    from ifc.monitor import LabelStore, Monitor
    from ifc.policy import load_policy

    _, ws = make_workspace(str(tmp_path))
    policy = load_policy(POLICY)
    monitor = Monitor(policy, agent=policy.agents["coder"], labels=LabelStore())
    fs = EnforcingFS(ws, monitor, context=lambda: (0, 0, 0))
    fs.release(None, fs.open("/src/app.py", os.O_RDONLY))
    steps = monitor.steps
    fs.release(None, fs.open("/src/app.py", os.O_RDONLY))
    assert monitor.steps == steps + 1 and fs.stats.decisions == 2
    fd = fs.open("/src/app.py", os.O_WRONLY)
    fs.write("/src/app.py", b"# edit\n", 0, fd)
    assert fs.stats.write_redecisions == 0
    fs.release(None, fs.open("/.env", os.O_RDONLY))  # the session is secret now
    assert "secret" in policy.lattice.describe(monitor.subjects["session"].taint)
    fs.write("/src/app.py", b"# more\n", 7, fd)
    fs.write("/src/app.py", b"# again\n", 14, fd)  # the taint did not move since: not decided again
    fs.release(None, fd)
    assert fs.stats.write_redecisions == 1
    assert "secret" in policy.lattice.describe(monitor.label_of("src/app.py"))


@pytest.mark.parametrize("how", ["create", "open"])
def test_a_taint_rise_while_a_write_is_decided_still_floats_into_the_file(tmp_path, how):
    """`cat api.key | base64 > out`: the shell opens `out` while `cat` reads the key on another thread, so the
    run's taint can rise between the decision for `out` and the descriptor's record. The first write must then be
    decided again and float the secret into `out`. Before, the record took the risen taint as already decided,
    and `out` stayed unlabelled: the next run could send it anywhere (a flaky failure of
    test_workspace_labels.py::test_labels_floated_in_one_run_hold_in_the_next)."""
    from ifc.monitor import Monitor, Request
    from ifc.policy import load_policy

    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / ".env").write_text("API_KEY=sk-secret\n")
    (ws / "src" / "out").write_text("")

    class Concurrent(Monitor):
        """Another thread's read of `.env` lands right after the decision for `src/out`."""

        def decide(self, request):
            decision = super().decide(request)
            if request.target == "src/out" and not self.run.taint.secrecy & {"secret"}:
                super().decide(Request("read", ".env"))
            return decision

    policy = load_policy(POLICY)
    monitor = Concurrent(policy, agent=policy.agents["coder"])
    fs = EnforcingFS(str(ws), monitor)
    if how == "create":
        os.unlink(ws / "src" / "out")
        fd = fs.create("/src/out", 0o644, os.O_WRONLY)
    else:
        fd = fs.open("/src/out", os.O_WRONLY)
    assert "secret" in monitor.run.taint.secrecy  # the rise happened after the decision
    fs.write("/src/out", b"c2stc2VjcmV0", 0, fd)
    fs.release("/src/out", fd)
    assert "secret" in (monitor.labels.get("src/out") or policy.lattice.bottom).secrecy
