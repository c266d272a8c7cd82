"""FUSE enforcement filesystem: native vs bare passthrough vs mediated, side by side in one run.

    .venv/bin/python bench/bench_fuse.py [--quick] [--bindings fusepy,mfusepy3] [--mb 200] [--files 2000]

Backing directory on tmpfs (/dev/shm). For each FUSE binding (fusepy on libfuse2, mfusepy on libfuse3)
it mounts, one after the other, the same backing directory as
  naive     a textbook passthrough (joined paths, no containment, no checks): what the issue's numbers are
  bare      `EnforcingFS` without a monitor: containment (openat2 beneath the root), no decisions
  mediated  `EnforcingFS` with the reference monitor on policies/default.flow (agent `coder`): every open
            asked of the monitor (whose fast path answers repeats)
  nokcache  mediated, libfuse's default caching (no kernel_cache, 1 s attribute/entry timeouts)
  longttl   mediated with 86,400 s attribute/entry timeouts instead of 10 s (not in the default --modes)
  writeback mediated with the kernel's writeback cache (not in the default --modes; see _with_writeback_cache)
  nofast    mediated with every request answered in Python (no `ifc.enforce.fastpath`; not in the default
            --modes): what the compiled fast path buys
  barenofast bare, likewise
The binding `pyfuse3` (libfuse3's low-level API, bench/pyfuse3_passthrough.py) has the modes `naive` (on trio)
and `asyncio` (the same passthrough on pyfuse3's asyncio loop);
`passthrough_hp` (libfuse's C example, the path in $IFC_BENCH_PASSTHROUGH_HP) the modes `passthrough` and
`nopassthrough`.
and runs: 200 MB sequential write and read (cold: first read through the mount; warm: again), 2,000 small
files create+write / stat / open+read / unlink (ops/s), and `git status` on a 5,000-file repository
(median of 3, after one warm-up). It prints a table with ratios to bare passthrough and to native.
Each daemon runs in its own process (`--serve`), as `ifc mount` would.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MODES = ("naive", "bare", "mediated", "nokcache")
# libfuse's example/passthrough_hp (C++, low-level API; built from libfuse >= 3.16's source, which Debian 12 does
# not ship): the binding `passthrough_hp`, mode `passthrough` (FUSE passthrough: reads and writes go from the
# kernel to the backing file, never through the daemon; 86,400 s timeouts) or `nopassthrough` (the same daemon
# serving data itself, with the writeback cache)
PASSTHROUGH_HP = "IFC_BENCH_PASSTHROUGH_HP"
CHUNK = 1 << 20


# ----------------------------------------------------------------------------------------- the daemons

class Naive:
    """The passthrough everybody writes first: path joins, no checks (the baseline the issue measured)."""

    use_ns = True

    def __init__(self, root):
        self.root = root

    def _p(self, path):
        return self.root + path

    def getattr(self, path, fh=None):
        st = os.fstat(fh) if fh is not None else os.lstat(self._p(path))
        return {k: getattr(st, k) for k in ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size",
                                            "st_blocks")} | {"st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns,
                                                             "st_ctime": st.st_ctime_ns}

    def readdir(self, path, fh=None):
        return [".", "..", *((e.name, {"st_ino": e.inode()}, 0) for e in os.scandir(self._p(path)))]

    def open(self, path, flags):
        return os.open(self._p(path), flags & ~0x20)

    def create(self, path, mode, flags=None):
        return os.open(self._p(path), os.O_RDWR | os.O_CREAT | ((flags or 0) & os.O_EXCL), mode & 0o7777)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        os.truncate(fh if fh is not None else self._p(path), length)

    def release(self, path, fh):
        os.close(fh)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        os.fsync(fh)

    def unlink(self, path):
        os.unlink(self._p(path))

    def mkdir(self, path, mode):
        os.mkdir(self._p(path), mode)

    def rmdir(self, path):
        os.rmdir(self._p(path))

    def rename(self, old, new, flags=0):
        os.rename(self._p(old), self._p(new))

    def utimens(self, path, times=None):
        os.utime(self._p(path), ns=times)

    def chmod(self, path, mode):
        os.chmod(self._p(path), mode & 0o7777)

    def chown(self, path, uid, gid):
        os.chown(self._p(path), uid, gid, follow_symlinks=False)  # tar x as root sets every file's owner

    def readlink(self, path):
        return os.readlink(self._p(path))

    def symlink(self, target, source):
        os.symlink(source, self._p(target))

    def link(self, target, source):
        os.link(self._p(source), self._p(target))

    def statfs(self, path):
        sv = os.statvfs(self.root)
        return {k: getattr(sv, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                                            "f_ffree", "f_favail", "f_namemax")}


WRITEBACK_CACHE = 1 << 16  # FUSE_CAP_WRITEBACK_CACHE in libfuse 3's fuse_common.h


def _with_writeback_cache(ops) -> None:
    """The `writeback` mode (a measurement only, not the product): ask the kernel for its writeback cache at
    init, and open the backing file as the kernel then needs — a write-only open read-write (the kernel reads
    through any writable handle to fill partial pages) and without O_APPEND (the kernel appends itself and
    sends absolute offsets, which pwrite on an O_APPEND descriptor would ignore)."""
    backing_open = ops.backing.open

    def open_for_writeback(rel, flags, mode=0):
        if flags & os.O_ACCMODE == os.O_WRONLY:
            flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        return backing_open(rel, flags & ~os.O_APPEND, mode)

    def init_with_config(conn, config):
        if conn is not None:
            conn.want |= WRITEBACK_CACHE
        ops.init("/")

    ops.backing.open = open_for_writeback
    ops.init_with_config = init_with_config


def serve(mode: str, binding_name: str, src: str, mnt: str, run_dir: str) -> None:
    if binding_name == "pyfuse3":  # the low-level API (bench/pyfuse3_passthrough.py): a passthrough only
        if mode not in ("naive", "asyncio"):
            raise SystemExit(f"bench_fuse: binding pyfuse3 has the modes naive (trio) and asyncio, not `{mode}`")
        from pyfuse3_passthrough import serve as serve_lowlevel

        serve_lowlevel(src, mnt, loop="asyncio" if mode == "asyncio" else "trio")
        return
    if binding_name == "passthrough_hp":  # libfuse's own C example daemon (see PASSTHROUGH_HP)
        if mode not in ("passthrough", "nopassthrough"):
            raise SystemExit(f"bench_fuse: passthrough_hp has the modes passthrough and nopassthrough, not `{mode}`")
        exe = os.environ[PASSTHROUGH_HP]
        extra = ["--nopassthrough"] if mode == "nopassthrough" else []
        os.execv(exe, [exe, "--foreground", *extra, "-o", "allow_other,default_permissions", src, mnt])
    from ifc.enforce.mount import MountOptions, load_binding
    from ifc.enforce.mount import serve as serve_mount

    binding = load_binding(binding_name)
    options = MountOptions()
    if mode == "naive":
        ops = Naive(src)
    else:
        from ifc.enforce.fs import EnforcingFS
        from ifc.monitor import EventLog, LabelStore, Monitor
        from ifc.policy import load_policy

        monitor = None
        if mode not in ("bare", "barenofast"):
            policy = load_policy(ROOT / "policies" / "default.flow")
            monitor = Monitor(policy, agent=policy.agents["coder"], labels=LabelStore(f"{run_dir}/labels.db"),
                              log=EventLog(f"{run_dir}/events.db"))
        ops = EnforcingFS(src, monitor, context=binding.context, mountpoint=mnt)
        if mode == "writeback":
            _with_writeback_cache(ops)
        if mode == "nokcache":
            options = MountOptions(kernel_cache=False, attr_timeout=1.0, entry_timeout=1.0)
        elif mode == "longttl":
            options = MountOptions(attr_timeout=86400.0, entry_timeout=86400.0)
        elif mode in ("nofast", "barenofast"):
            options = MountOptions(fast_path=False)
    serve_mount(ops, mnt, binding, src, options)


# ----------------------------------------------------------------------------------------- the client

def _mounted(mnt: str) -> bool:
    with open("/proc/self/mountinfo") as handle:
        return any(line.split(" ")[4] == mnt for line in handle)


class Mount:
    """One daemon in its own process, mounted at `mnt` until `close()`. `daemon`: the command that serves
    (`serve(mode, binding, src, mnt, run_dir)` at its end), if not this file's `--serve`."""

    def __init__(self, mode, binding, src, mnt, run_dir, daemon: list[str] | None = None):
        self.mnt = mnt
        daemon = daemon or [sys.executable, __file__, "--serve"]
        with open(f"{run_dir}/daemon.log", "ab") as err:
            self.proc = subprocess.Popen([*daemon, mode, binding, src, mnt, run_dir],
                                         stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 60
        while not _mounted(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{mode}/{binding} did not mount; see {run_dir}/daemon.log")
            time.sleep(0.05)

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if _mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)


def seq_write(path: str, mb: int) -> float:
    block = os.urandom(CHUNK)
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for _ in range(mb):
        os.write(fd, block)
    os.close(fd)
    return mb / (time.perf_counter() - t)


def seq_read(path: str) -> float:
    t = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    total = 0
    while chunk := os.read(fd, CHUNK):
        total += len(chunk)
    os.close(fd)
    return total / (1 << 20) / (time.perf_counter() - t)


def small_files(base: str, n: int) -> dict[str, float]:
    os.makedirs(base, exist_ok=True)
    names = [f"{base}/f{i:05d}.txt" for i in range(n)]
    payload = b"x" * 1024
    out = {}
    t = time.perf_counter()
    for name in names:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, payload)
        os.close(fd)
    out["create"] = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for name in names:
        os.stat(name)
    out["stat"] = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for name in names:
        fd = os.open(name, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)
    out["open+read"] = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for name in names:
        os.unlink(name)
    out["unlink"] = n / (time.perf_counter() - t)
    os.rmdir(base)
    return out


def git_status(repo: str) -> float:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    subprocess.run(["git", "-C", repo, "status", "--porcelain"], check=True, capture_output=True, env=env)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(["git", "-C", repo, "status", "--porcelain"], check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_repo(repo: str, files: int) -> None:
    os.makedirs(repo)
    for i in range(files):
        d = f"{repo}/d{i % 50:02d}"
        os.makedirs(d, exist_ok=True)
        with open(f"{d}/f{i:05d}.py", "w") as handle:
            handle.write(f"x = {i}\n")
    git = ["git", "-C", repo, "-c", "user.name=b", "-c", "user.email=b@b"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], check=True)


def workload(root: str, args) -> dict[str, float]:
    """Everything under src/ (the default policy's agent may create and write there)."""
    out = {}
    big = f"{root}/src/big.bin"
    out["write MB/s"] = seq_write(big, args.mb)
    out["read MB/s (cold)"] = seq_read(f"{root}/src/seed.bin")
    out["read MB/s (warm)"] = seq_read(f"{root}/src/seed.bin")
    os.unlink(big)
    for key, value in small_files(f"{root}/src/small", args.files).items():
        out[f"{key} /s"] = value
    out["git status s"] = git_status(f"{root}/src/repo")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", nargs=5, metavar=("MODE", "BINDING", "SRC", "MNT", "RUN"), help=argparse.SUPPRESS)
    parser.add_argument("--bindings", default="fusepy,mfusepy3")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--repo-files", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=1, help="run every configuration N times, report medians")
    parser.add_argument("--quick", action="store_true", help="20 MB, 300 files, a 500-file repository")
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0
    if args.quick:
        args.mb, args.files, args.repo_files = 20, 300, 500
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        print("bench_fuse: skipped: needs root and /dev/fuse")
        return 0
    base = tempfile.mkdtemp(prefix="ifc-bench-fuse-", dir="/dev/shm")
    src, mnt = f"{base}/src", f"{base}/mnt"
    os.makedirs(f"{src}/src")
    os.makedirs(mnt)
    with open(f"{src}/src/seed.bin", "wb") as handle:
        for _ in range(args.mb):
            handle.write(os.urandom(CHUNK))
    make_repo(f"{src}/src/repo", args.repo_files)
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        for round_ in range(args.repeat):  # rounds interleave the configurations, so drift hits all alike
            runs.setdefault("native", []).append(workload(src, args))
            for binding in args.bindings.split(","):
                for mode in args.modes.split(","):
                    run_dir = tempfile.mkdtemp(prefix=f"run-{binding}-{mode}-", dir=base)
                    mount = Mount(mode, binding, src, mnt, run_dir)
                    try:
                        runs.setdefault(f"{binding} {mode}", []).append(workload(mnt, args))
                    finally:
                        mount.close()
                    print(f"  done: round {round_ + 1}, {binding} {mode}", file=sys.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results = {name: {m: statistics.median(r[m] for r in rows) for m in rows[0]} for name, rows in runs.items()}
    _table(results, args)
    return 0


def _table(results: dict[str, dict[str, float]], args) -> None:
    metrics = list(results["native"])
    names = list(results)
    width = max(len(n) for n in names) + 2
    print(f"FUSE passthrough on tmpfs: {args.mb} MB sequential, {args.files} small files, "
          f"git status on {args.repo_files} files (s, lower is better); median of {args.repeat} round(s)")
    print("".ljust(width) + "".join(m.rjust(18) for m in metrics))
    for name in names:
        row = results[name]
        cells = []
        for m in metrics:
            value = row[m]
            cells.append((f"{value:.3f}" if m.endswith(" s") else f"{value:,.0f}").rjust(18))
        print(name.ljust(width) + "".join(cells))
    print("\nmediated vs bare passthrough of the same binding (1.00 = no cost; > 1 is slower):")
    for name in names:
        binding, _, mode = name.partition(" ")
        bare = results.get(f"{binding} bare")
        if not mode or mode == "bare" or bare is None:
            continue
        cells = []
        for m in metrics:
            ratio = results[name][m] / bare[m] if m.endswith(" s") else bare[m] / results[name][m]
            cells.append(f"{ratio:.2f}x".rjust(18))
        print(name.ljust(width) + "".join(cells))
    print("\nratio to native (fraction of native speed):")
    for name in names[1:]:
        cells = []
        for m in metrics:
            native = results["native"][m]
            ratio = native / results[name][m] if m.endswith(" s") else results[name][m] / native
            cells.append(f"{ratio:.3f}".rjust(18))
        print(name.ljust(width) + "".join(cells))


if __name__ == "__main__":
    sys.exit(main())
