"""Real tools on a mediated mount of policies/default.flow: git and a venv with pip at the workspace root
under the policy's own agent `coder` (authority and flow), and — in sub-directories that `coder`'s
grants do not cover, so flows only (`--agent none`) — git, a venv, tar, cp -a and an editor's save pattern."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
from fuse_support import FUSE, POLICY, REAL_MOUNTS
from workload_cases import WORKLOAD, check, checkout, demo_wheel

from ifc.enforce.mount import Daemon

pytestmark = REAL_MOUNTS

GIT = ["git", "-c", "user.name=Agent", "-c", "user.email=agent@example.com", "-c", "init.defaultBranch=main",
       "-c", "advice.detachedHead=false"]


@pytest.fixture(scope="module")
def ws():
    base = tempfile.mkdtemp(prefix="ifc-tools-", dir="/dev/shm")
    src, mnt, run, native = (os.path.join(base, n) for n in ("src", "mnt", "run", "native"))
    for path in (src, mnt, native):
        os.mkdir(path)
    daemon = Daemon(["--policy", str(POLICY), "--agent", "none", "--fuse", FUSE, "--run-dir", run, src, mnt], mnt,
                    log_path=os.path.join(base, "daemon.log"))
    try:
        yield Path(mnt), Path(src), Path(native), Path(run)
    finally:
        status = daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
        assert status == 0


def sh(*argv, cwd=None, **kwargs) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result.stdout


def test_git_status_on_the_host_and_in_the_sandbox_keeps_one_index(ws):
    """git's index records each file's inode number, owner and times: the mount serves the backing file's (the
    owner's ids aside, mapped only for an agent's own uid), so a `git status` in the sandbox after one on the host,
    and the host's after the sandbox's, finds every file as recorded and rewrites nothing — with any other
    numbers, each switch would re-read the whole tree (docs/threat-model.md: why inode numbers are not
    permuted)."""
    mnt, src, _, _ = ws
    repo = src / "host-repo"
    repo.mkdir()
    for i in range(50):
        (repo / f"f{i}.txt").write_text(f"line {i}\n")
    sh(*GIT, "init", "-q", cwd=repo)
    sh(*GIT, "add", "-A", cwd=repo)
    sh(*GIT, "commit", "-qm", "first", cwd=repo)
    sh(*GIT, "status", "--short", cwd=repo)
    index = (repo / ".git" / "index").read_bytes()
    assert sh(*GIT, "-c", "safe.directory=*", "status", "--short", cwd=mnt / "host-repo") == ""
    assert (repo / ".git" / "index").read_bytes() == index, "the sandbox's git refreshed every entry"
    assert sh(*GIT, "status", "--short", cwd=repo) == "" and (repo / ".git" / "index").read_bytes() == index


def test_git_workflow(ws):
    mnt, src, _, _ = ws
    repo = mnt / "repo"
    repo.mkdir()
    sh(*GIT, "init", "-q", cwd=repo)
    (repo / "app.py").write_text("print('v1')\n")
    (repo / "lib").mkdir()
    (repo / "lib" / "util.py").write_text("X = 1\n")
    sh(*GIT, "add", "-A", cwd=repo)
    sh(*GIT, "commit", "-qm", "first", cwd=repo)
    sh(*GIT, "checkout", "-qb", "feature", cwd=repo)
    (repo / "app.py").write_text("print('v2')\n")
    (repo / "new.txt").write_text("new\n")
    assert sh(*GIT, "status", "--porcelain", cwd=repo).splitlines() == [" M app.py", "?? new.txt"]
    sh(*GIT, "add", "-A", cwd=repo)
    sh(*GIT, "commit", "-qm", "second", cwd=repo)
    sh(*GIT, "checkout", "-q", "main", cwd=repo)
    assert (repo / "app.py").read_text() == "print('v1')\n" and not (repo / "new.txt").exists()
    (repo / "app.py").write_text("scratch\n")
    sh(*GIT, "checkout", "--", "app.py", cwd=repo)
    assert sh(*GIT, "status", "--porcelain", cwd=repo) == ""
    assert sh(*GIT, "log", "--oneline", "feature", cwd=repo).count("\n") == 2
    sh(*GIT, "gc", "-q", cwd=repo)
    sh(*GIT, "fsck", "--no-progress", cwd=repo)
    # the backing directory holds a real repository
    assert sh(*GIT, "status", "--porcelain", cwd=src / "repo") == ""


def test_venv_and_pip_install_of_a_localdemo_wheel(ws):
    mnt, _, native, _ = ws
    wheels = native / "wheels"
    wheels.mkdir()
    demo_wheel(wheels)
    venv = mnt / "proj" / ".venv"
    sh(sys.executable, "-m", "venv", str(venv))
    python = venv / "bin" / "python"
    sh(str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), "ifcdemo",
       env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert sh(str(python), "-c", "import ifcdemo, sys; print(ifcdemo.ANSWER, sys.prefix)").split() == [
        "42", str(venv)]
    assert "ifcdemo" in sh(str(venv / "bin" / "pip"), "list", "--format=freeze")


def test_everyday_work_through_ifc_mount_under_the_default_agent():
    """tests/workload_cases.py through `ifc mount`: the agent's tools run on the host as uid 1000, in a
    root-owned checkout presented as theirs."""
    base = Path(tempfile.mkdtemp(prefix="ifc-work-", dir="/dev/shm"))
    os.chmod(base, 0o755)
    try:
        work = checkout(base)
        mnt, run, home = base / "mnt", base / "run", base / "home"
        mnt.mkdir()
        home.mkdir()
        os.chown(home, 1000, 1000)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LC_ALL": "C.UTF-8", "IFC_DENIALS": f"{mnt}/.ifc-denials"}
        with Daemon(["--policy", str(POLICY), "--agent", "coder", "--agent-ids", "1000:1000", "--fuse", FUSE,
                     "--run-dir", str(run), str(work.ws), str(mnt)], str(mnt), log_path=str(base / "daemon.log")):
            proc = subprocess.run(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "sh", "-c", WORKLOAD],
                                  cwd=mnt, env=env, capture_output=True, text=True, timeout=600)
        check(proc, run, work)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_git_and_venv_at_the_root_under_the_default_agent():
    """What a coding agent does in a real repository, with `coder`'s grants enforced on every operation."""
    base = tempfile.mkdtemp(prefix="ifc-coder-", dir="/dev/shm")
    src, mnt, run, wheels = (os.path.join(base, n) for n in ("src", "mnt", "run", "wheels"))
    for path in (src, mnt, wheels):
        os.mkdir(path)
    demo_wheel(Path(wheels))
    daemon = Daemon(["--policy", str(POLICY), "--agent", "coder", "--fuse", FUSE, "--run-dir", run, src, mnt], mnt,
                    log_path=os.path.join(base, "daemon.log"))
    try:
        root = Path(mnt)
        sh(*GIT, "init", "-q", cwd=root)
        (root / "src").mkdir()
        (root / "src" / "app.py").write_text("print('hello')\n")
        sh(*GIT, "add", "-A", cwd=root)
        sh(*GIT, "commit", "-q", "-m", "first", cwd=root)
        (root / "src" / "app.py").write_text("print('hello, world')\n")
        assert sh(*GIT, "status", "--porcelain", cwd=root).split() == ["M", "src/app.py"]
        sh(*GIT, "commit", "-q", "-am", "second", cwd=root)
        sh(*GIT, "checkout", "-q", "-b", "feature", cwd=root)
        assert len(sh(*GIT, "log", "--oneline", cwd=root).splitlines()) == 2
        sh(sys.executable, "-m", "venv", str(root / ".venv"))
        python = root / ".venv" / "bin" / "python"
        sh(str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", wheels, "ifcdemo",
           env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        assert sh(str(python), "-c", "import ifcdemo; print(ifcdemo.ANSWER)").strip() == "42"
        # and what `coder` may not do is refused: writing outside its grants
        with pytest.raises(PermissionError):
            (root / "LICENSE").write_text("all rights\n")
    finally:
        status = daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
        assert status == 0


def _tree(root: Path) -> dict:
    """What cp -a and tar should preserve: types, contents, modes, mtimes, link targets and hard links."""
    out = {}
    inodes: dict[int, str] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", oct(st.st_mode & 0o7777))
        else:
            first = inodes.setdefault(st.st_ino, rel)
            out[rel] = ("file", path.read_bytes(), oct(st.st_mode & 0o7777), st.st_mtime_ns, first)
    return out


def _sample(root: Path) -> None:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "a.txt").write_text("alpha\n")
    (root / "pkg" / "run.sh").write_text("#!/bin/sh\necho run\n")
    os.chmod(root / "pkg" / "run.sh", 0o755)
    (root / "pkg" / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    os.symlink("a.txt", root / "pkg" / "a-link")
    os.link(root / "pkg" / "a.txt", root / "pkg" / "a-hard")
    os.chmod(root / "pkg" / "sub", 0o750)
    for path in (root / "pkg").rglob("*"):
        os.utime(path, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789), follow_symlinks=False)


def test_tar_extract(ws):
    mnt, _, native, _ = ws
    sample = native / "sample-tar"
    sample.mkdir()
    _sample(sample)
    archive = native / "sample.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(sample / "pkg", arcname="pkg")
    (mnt / "untar").mkdir()
    (native / "untar").mkdir()
    sh("tar", "xf", str(archive), "-C", str(mnt / "untar"))
    sh("tar", "xf", str(archive), "-C", str(native / "untar"))
    assert _tree(mnt / "untar") == _tree(native / "untar")


def test_cp_a(ws):
    mnt, _, native, _ = ws
    sample = native / "sample-cp"
    sample.mkdir()
    _sample(sample)
    sh("cp", "-a", str(sample / "pkg"), str(mnt / "copied"))
    assert _tree(mnt / "copied") == _tree(sample / "pkg")
    sh("cp", "-a", str(mnt / "copied"), str(native / "copied-back"))  # and out again
    assert _tree(native / "copied-back") == _tree(sample / "pkg")


def test_editor_save_pattern(ws):
    mnt, src, _, _ = ws
    target = mnt / "doc.md"
    target.write_text("draft 1\n")
    os.chmod(target, 0o640)
    old_ino = target.stat().st_ino
    # what vim (writebackup), VS Code and most editors do: write a temp file, fsync, rename over
    tmp = mnt / ".doc.md.swp~"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"draft 2\n")
    os.fsync(fd)
    os.close(fd)
    os.chmod(tmp, target.stat().st_mode & 0o7777)
    os.rename(tmp, target)
    dfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    assert target.read_text() == "draft 2\n"
    assert oct(target.stat().st_mode & 0o7777) == "0o640" and target.stat().st_ino != old_ino
    assert not tmp.exists() and (src / "doc.md").read_text() == "draft 2\n"
