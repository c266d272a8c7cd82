"""C built on the machine that runs it, with the system's compiler: the mount daemon's fast path (a shared
library, `ifc.enforce.fastpath`) and the microVM's guest daemon (a static binary, `vmm.image`).

Nothing compiled is shipped or fetched: a fresh checkout builds what it needs the first time (about a
second), into the user's cache, named by the hash of the source and the compiler's arguments, so a changed
source is rebuilt and an unchanged one is found at once."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

from ifc.errors import UserError


class BuildError(UserError):
    """A C part cannot be compiled here; the message says why, `help` what to do."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ifc-sandbox"


def compile_c(source: Path, target: Path, args: list[str], what: str) -> None:
    """Compile `source` into `target` (replaced atomically: a concurrent user sees the old file or the new)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BuildError(f"no C compiler to build {what}", "install gcc and libc6-dev (scripts/sysdeps.sh)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    proc = subprocess.run([compiler, *args, "-o", str(tmp), str(source)], capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = (proc.stderr.strip().splitlines() or ["no output"])[0]
        raise BuildError(f"cannot compile {what}: {first}", "it needs gcc and libc6-dev (scripts/sysdeps.sh)")
    os.chmod(tmp, 0o755)  # whatever the umask: `load_library` loads only what no one else can write
    os.replace(tmp, target)


def built(source: Path, args: list[str], what: str) -> Path:
    """`source` compiled with `args`, from the cache when the same source was built with the same arguments."""
    digest = hashlib.sha256(source.read_bytes() + "\0".join(args).encode()).hexdigest()[:16]
    target = cache_root() / "native" / f"{source.stem}-{digest}{'.so' if '-shared' in args else ''}"
    if not target.exists():
        compile_c(source, target, args, what)
    return target


def load_library(path: Path) -> ctypes.CDLL:
    """The shared library at `path`, loaded only if it is this user's alone: the mount daemon runs as root, and
    a cache another user can write (a HOME or XDG_CACHE_HOME kept across sudo) would hand it their code. Loaded
    through the very descriptor checked (no symlink followed), so the file cannot be swapped in between. The
    descriptor stays open for the process's life, as the library stays loaded: the dynamic loader knows a
    library by its name, and a `/proc/self/fd/N` whose number came back for another file would be answered with
    the library loaded under that name before."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise BuildError(f"`{path}` is not this user's alone (owner {st.st_uid}, mode {st.st_mode & 0o7777:o}): "
                             "not loaded", "remove it (it is rebuilt on next use), or point XDG_CACHE_HOME at a "
                             "directory only you can write")
        return ctypes.CDLL(f"/proc/self/fd/{fd}")
    except BaseException:
        os.close(fd)
        raise
