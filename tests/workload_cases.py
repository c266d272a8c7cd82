"""Everyday work under the shipped default policy (`coder`'s grants and flows), written once and run through
`ifc run` in namespaces (tests/test_namespace.py), in the microVM (tests/test_vm.py, one boot) and through
`ifc mount` (tests/test_fuse_tools.py).

The workspace is a root-owned checkout that `git clone --local` made on the host, so its objects are hard
links to a repository outside it. The agent (uid 1000) runs WORKLOAD: git status/commit, `git clone` local
and `--no-local`, `git gc`, a venv with `pip install` from a wheel directory (no network), pytest creating its
cache, `tar c/x`, `rsync -a`, sqlite with many commits, `rm -rf`; every step checks its own outcome and
prints `ok STEP`. Then one deliberate refusal, which `$IFC_DENIALS` must explain. `check` asserts the steps,
that the log holds no other denial (each one printed with its reason), and from the host: the history, the
owner of what the agent made, the repository outside untouched, no denials file on disk."""

from __future__ import annotations

import base64
import hashlib
import shutil
import sqlite3
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

GIT = ["git", "-c", "user.name=owner", "-c", "user.email=owner@example.com", "-c", "init.defaultBranch=main"]
STEPS = ("status", "commit", "clone-local", "clone-no-local", "commit-in-clone", "gc", "pip", "pytest", "tar",
         "rsync", "sqlite", "rm", "clean", "denials")
REFUSED = "lib"  # what the script creates on purpose where `coder` has no grant

WORKLOAD = r"""set -eu
ok() { echo "ok $1"; }
G="git -c user.name=agent -c user.email=agent@example.com -c init.defaultBranch=main -c gc.auto=0"
test -z "$(git status --porcelain)"; ok status
echo "print('v2')" > src/app.py
$G commit -qam "edit app"; test "$(git log -1 --format=%s)" = "edit app"; ok commit
$G clone -q . build/clone-local
test "$(git -C build/clone-local log -1 --format=%s)" = "edit app"
grep -qx "print('v2')" build/clone-local/src/app.py; ok clone-local
$G clone -q --no-local . build/clone-remote
test "$(git -C build/clone-remote log -1 --format=%s)" = "edit app" && test -f build/clone-remote/tests/test_app.py
ok clone-no-local
$G -C build/clone-local commit -q --allow-empty -m "in the clone"
test "$(git -C build/clone-local rev-list --count HEAD)" = 3; ok commit-in-clone
$G gc -q --prune=now; test "$(git count-objects -v | sed -n 's/^count: //p')" = 0; git fsck --no-progress 2>&1; ok gc
python3 -m venv --without-pip .venv  # the host's pip installs into it (copying pip in is tests/test_fuse_tools.py's)
python3 -m pip --python .venv/bin/python install -q --no-cache-dir --disable-pip-version-check --no-index \
  --find-links wheels ifcdemo
test "$(.venv/bin/python -c 'import ifcdemo; print(ifcdemo.ANSWER)')" = 42; ok pip
PYTHONPATH=vendor .venv/bin/python -m pytest -q tests > build/pytest.out || { cat build/pytest.out; exit 1; }
grep -q "1 passed" build/pytest.out && test -d .pytest_cache/v; ok pytest
mkdir build/untar; tar czf build/src.tgz src tests; tar xzf build/src.tgz -C build/untar
diff -r src build/untar/src && diff -r tests build/untar/tests; ok tar
rsync -a src/ build/rsync/; diff -r src build/rsync; ok rsync
python3 -c '
import sqlite3
db = sqlite3.connect("build/app.db")
db.execute("CREATE TABLE t (i INTEGER)")
for i in range(200):
    db.execute("INSERT INTO t VALUES (?)", (i,))
    db.commit()
assert db.execute("SELECT count(*), sum(i) FROM t").fetchone() == (200, 19900)
'
ok sqlite
rm -rf build/clone-local build/clone-remote build/untar build/rsync .venv
test ! -e build/clone-local && test ! -e .venv && test -f build/app.db; ok rm
test -z "$(git status --porcelain)"; ok clean
if mkdir lib 2>/dev/null; then echo "lib was not refused"; exit 1; fi
grep -q "denied create lib" "$IFC_DENIALS"
grep "hint:" "$IFC_DENIALS" | tail -1 | grep -q "may create only: /\*\.\*, "
ok denials
"""


def demo_wheel(directory: Path) -> Path:
    """A minimal pure-Python wheel, built by hand (no build backend, no network)."""
    files = {
        "ifcdemo/__init__.py": b"ANSWER = 42\n",
        "ifcdemo-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: ifcdemo\nVersion: 0.1\n",
        "ifcdemo-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                       b"Tag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("ifcdemo-0.1.dist-info/RECORD,,")
    path = directory / "ifcdemo-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("ifcdemo-0.1.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def vendor_pytest(directory: Path) -> None:
    """The test venv's pytest, copied to `directory` (the sandbox sees the host's /usr, which has no pytest)."""
    for module in ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments", "py.py"):
        source = Path(pytest.__file__).parent.parent / module
        if source.is_dir():
            shutil.copytree(source, directory / module, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy(source, directory / module)


@dataclass(frozen=True)
class Checkout:
    ws: Path  # the workspace: root's, cloned --local from `upstream`
    upstream: Path  # the repository outside it that shares its object files
    shared: dict[str, bytes]  # the upstream's object files with links into the workspace → their digests


def checkout(tmp_path: Path) -> Checkout:
    """The upstream repository, and the workspace the owner (root) cloned from it with hard-linked objects."""
    if shutil.which("rsync") is None:
        pytest.fail("rsync is missing: run scripts/sysdeps.sh (the README's set-up)")
    upstream, ws = tmp_path / "upstream", tmp_path / "ws"
    (upstream / "src").mkdir(parents=True)
    (upstream / "tests").mkdir()
    (upstream / "README.md").write_text("# demo\n")
    (upstream / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n')
    (upstream / "src" / "app.py").write_text("print('v1')\n")
    (upstream / "tests" / "test_app.py").write_text("def test_ok():\n    assert True\n")
    (upstream / ".gitignore").write_text("vendor/\nwheels/\n.venv/\nbuild/\n.pytest_cache/\n__pycache__/\n")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"], ["gc", "-q"]):
        subprocess.run([*GIT, "-C", str(upstream), *args], check=True)
    subprocess.run([*GIT, "clone", "-q", "--local", str(upstream), str(ws)], check=True)
    (ws / "build").mkdir()
    (ws / "wheels").mkdir()
    demo_wheel(ws / "wheels")
    (ws / "vendor").mkdir()
    vendor_pytest(ws / "vendor")
    shared = {str(p.relative_to(upstream)): hashlib.sha256(p.read_bytes()).digest()
              for p in (upstream / ".git" / "objects").rglob("*") if p.is_file() and p.stat().st_nlink > 1}
    assert shared, "git clone --local made no hard links: the case is not exercised"
    assert ws.stat().st_uid == 0
    return Checkout(ws, upstream, shared)


def check(proc: subprocess.CompletedProcess, run_dir: Path, work: Checkout) -> None:
    """Every step passed, the only denial is the deliberate one, and the host sees what it should."""
    db = sqlite3.connect(run_dir / "events.db")
    denials = db.execute("SELECT op, target, rule, reason FROM events WHERE kind IN ('deny', 'error') "
                         "ORDER BY id").fetchall()
    other = [f"{op} {target}: {reason} [{rule}]" for op, target, rule, reason in denials if target != REFUSED]
    assert not other, "denied during normal work:\n" + "\n".join(other) + "\n" + proc.stdout + proc.stderr
    done = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ok ")]
    assert done == list(STEPS) and proc.returncode == 0, proc.stdout + proc.stderr
    assert [(op, target) for op, target, _, _ in denials] == [("create", REFUSED)]
    ws = work.ws
    log = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(ws), "log", "--format=%an %s"],
                         capture_output=True, text=True, check=True)
    assert log.stdout.splitlines() == ["agent edit app", "owner init"]
    status = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(ws), "status", "--porcelain"],
                            capture_output=True, text=True, check=True)
    assert status.stdout == ""
    for made in (ws / "build" / "app.db", ws / ".pytest_cache", ws / ".git" / "index"):
        assert (made.stat().st_uid, made.stat().st_gid) == (0, 0), made  # the checkout's owner's, on disk
    assert not (ws / ".ifc-denials").exists() and not (ws / REFUSED).exists()
    for name, digest in work.shared.items():  # gc repacked the workspace; the repository outside is as it was
        assert hashlib.sha256((work.upstream / name).read_bytes()).digest() == digest, name
    subprocess.run(["git", "-C", str(work.upstream), "fsck", "--no-progress"], check=True, capture_output=True)
