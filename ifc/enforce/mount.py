"""Mount lifecycle: load a FUSE binding, recover a stale mount point, serve in the foreground, unmount.

Bindings (`--fuse`): `mfusepy3` — mfusepy on libfuse3, the default (measured fastest, passes rename
flags, see docs/benchmarks-fuse.md); `mfusepy2` — mfusepy on libfuse2; `fusepy` — fusepy 3.0.1 on libfuse2.
A binding is chosen once per process (the library is loaded when the module is imported).

Signals: libfuse installs handlers for SIGINT, SIGTERM and SIGHUP that end its loop; the mount is then
unmounted and `serve` returns, so Ctrl-C and `kill` leave nothing behind. If the daemon dies instead
(`kill -9`, a crash), the kernel aborts the connection and every access to the mount point fails with
ENOTCONN ("transport endpoint is not connected"): the backing directory is never exposed in its place,
and nothing written lands beside it. `auto_unmount` is deliberately not used, because it would turn the
dead mount back into a plain directory that a still-running agent could write to unmediated. The next
`ifc mount` on that mount point finds the dead mount and detaches it (`fusermount -u -z`, else
`umount -l`) before mounting.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import errno
import importlib
import logging
import os
import shutil
import subprocess
import threading
import warnings
from dataclasses import dataclass, field

from ifc.errors import UserError

log = logging.getLogger("ifc.enforce.mount")

BINDINGS = ("mfusepy3", "mfusepy2", "fusepy")
DEFAULT_BINDING = "mfusepy3"
FUSE3_MAX_THREADS = 10  # libfuse3's default max_threads (fuse_main_real; not settable before 3.14.1)


class MountError(UserError):
    """A mount that cannot be made or served; the message says why and what to do."""


@dataclass(frozen=True)
class Binding:
    name: str
    module: object
    libfuse: int  # major version

    @property
    def FUSE(self):
        return self.module.FUSE

    def context(self) -> tuple[int, int, int]:
        return self.module.fuse_get_context()

    def invalidator(self):
        """`invalidate(path)`: libfuse3's `fuse_invalidate_path` on the mount serving the current request —
        the kernel drops the name's cached attributes and data. None where the library has none (libfuse2)."""
        lib = getattr(self.module, "_libfuse", None)
        fn = getattr(lib, "fuse_invalidate_path", None) if self.libfuse == 3 else None
        if fn is None:
            return None
        fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int
        current = lib.fuse_get_context

        def invalidate(path: str) -> None:
            fn(current().contents.fuse, os.fsencode(path))  # -ENOENT: the kernel holds nothing for that name

        return invalidate


_loaded: dict[str, Binding] = {}


def load_binding(name: str = DEFAULT_BINDING) -> Binding:
    """Import the FUSE binding `name` (see BINDINGS). One libfuse per process: mixing fails loudly."""
    if name in _loaded:
        return _loaded[name]
    if name not in BINDINGS:
        raise MountError(f"unknown FUSE binding `{name}`", "choose one of " + ", ".join(BINDINGS))
    if name.startswith("mfusepy") and any(k.startswith("mfusepy") for k in _loaded):
        raise MountError("mfusepy is already loaded with another libfuse in this process")
    major = 3 if name == "mfusepy3" else 2
    lib = _find_libfuse(major)
    if lib is None:
        raise MountError(f"libfuse{major} is not installed",
                         "run scripts/sysdeps.sh (Debian: fuse3 libfuse3-3 libfuse2)")
    os.environ["FUSE_LIBRARY_PATH"] = lib  # both bindings read it at import
    modname = "mfusepy" if name.startswith("mfusepy") else "fuse"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(modname)
    except (ImportError, OSError) as exc:
        raise MountError(f"cannot load the FUSE binding `{name}`: {exc}",
                         "pip install mfusepy (libfuse3) or fusepy (libfuse2)") from None
    if name.startswith("mfusepy"):
        major = int(getattr(module, "fuse_version_major", major))
    binding = Binding(name, module, major)
    _loaded[name] = binding
    return binding


def _find_libfuse(major: int) -> str | None:
    """The library by its soname (instant), else by `find_library` (which runs ldconfig: slow)."""
    soname = "libfuse3.so.3" if major == 3 else "libfuse.so.2"
    try:
        ctypes.CDLL(soname)
        return soname
    except OSError:
        return ctypes.util.find_library("fuse3" if major == 3 else "fuse")


# ------------------------------------------------------------------------------------------ options

@dataclass(frozen=True)
class MountOptions:
    """FUSE options; the defaults are the measured ones (docs/benchmarks-fuse.md)."""

    threads: bool = True
    allow_other: bool | None = None  # None: when running as root (an agent user must reach the mount)
    kernel_cache: bool = True  # keep file data in the page cache across opens (every open still reaches us)
    attr_timeout: float = 10.0
    entry_timeout: float = 10.0
    # a name found absent stays absent in the kernel for this long: every create, mkdir, rename and unlink
    # through the mount updates the kernel's entry itself, and a file that appears behind the kernel's back
    # (a host process writing the backing directory) is at worst hidden for this long — and a create over
    # it is served as an open of the existing file (EnforcingFS.create)
    negative_timeout: float = 10.0
    # requests that decide nothing answered in C (`ifc.enforce.fastpath`; mfusepy on libfuse3 only)
    fast_path: bool = True
    extra: dict = field(default_factory=dict)

    def fuse_kwargs(self, binding: Binding, source: str) -> dict:
        kwargs: dict = {
            "foreground": True,
            "nothreads": not self.threads,
            "fsname": f"ifc:{source}",
            "default_permissions": True,  # the kernel checks mode bits against the caller's credentials
            "use_ino": True,  # stable inode numbers (git's index, cp -a and tar see hard links)
            # no hard_remove: libfuse renames a file unlinked while open to .fuse_hiddenN (through our rename,
            # so the monitor moves its label) — the kernel asks fstat(2) by node, not by handle, so a really
            # unlinked file would answer ESTALE
            "attr_timeout": self.attr_timeout,
            "entry_timeout": self.entry_timeout,
            "negative_timeout": self.negative_timeout,
        }
        kwargs["subtype"] = "ifc"
        if binding.libfuse == 2:
            kwargs["big_writes"] = True  # libfuse3 always does; libfuse2 writes 4 KiB pieces without it
        elif self.threads:
            # libfuse 3.12-3.14.0 hands its "unset" max_idle_threads (UINT_MAX) to fuse_loop_cfg_set_idle_threads,
            # which logs "Ignoring invalid max threads value 4294967295" on every mount (fixed upstream in
            # 3.14.1, 2da03e38). Set it: at the worker limit (10, libfuse3's default max_threads) no idle
            # worker is ever destroyed, exactly as with the unset value. The option exists since libfuse 3.0.
            kwargs["max_idle_threads"] = FUSE3_MAX_THREADS
        if self.kernel_cache:
            kwargs["kernel_cache"] = True
        allow_other = os.geteuid() == 0 if self.allow_other is None else self.allow_other
        if allow_other:
            kwargs["allow_other"] = True
        kwargs.update(self.extra)
        return kwargs


# ------------------------------------------------------------------------------------------ mount points

def _mount_entry(path: str) -> tuple[str, str] | None:
    """(mount id, filesystem type) of the mount on top at exactly `path` (from /proc/self/mountinfo)."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        parts = line.split(" ")
        try:
            point = parts[4].encode().decode("unicode_escape")
            fstype = parts[parts.index("-") + 1]
        except (IndexError, ValueError):
            continue
        if point == target:
            found = (parts[0], fstype)  # the last one listed is the top of the stack
    return found


def mounted_at(path: str) -> str | None:
    """The filesystem type mounted exactly at `path`, or None."""
    entry = _mount_entry(path)
    return entry[1] if entry else None


def is_stale(path: str) -> bool:
    """A FUSE mount whose daemon is gone (statfs always asks the daemon; stat may be answered from cache)."""
    try:
        os.statvfs(path)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def detach(path: str) -> bool:
    """Unmount `path` lazily (fusermount3/fusermount -u -z, else umount -l). True if nothing is left."""
    for tool in ("fusermount3", "fusermount"):
        exe = shutil.which(tool)
        if exe and subprocess.run([exe, "-u", "-z", path], capture_output=True).returncode == 0:
            return True
    exe = shutil.which("umount")
    if exe and subprocess.run([exe, "-l", path], capture_output=True).returncode == 0:
        return True
    return mounted_at(path) is None


def prepare_mountpoint(path: str) -> None:
    """Make `path` ready to mount on: recover a dead FUSE mount, refuse a live one."""
    if is_stale(path):
        log.warning("%s is a dead FUSE mount (its daemon is gone): detaching it", path)
        if not detach(path):
            raise MountError(f"`{path}` is a dead mount and could not be detached",
                             f"run `fusermount -u -z {path}` or `umount -l {path}` as root")
    fstype = mounted_at(path)
    if fstype is not None and fstype.startswith("fuse"):
        raise MountError(f"`{path}` is already a FUSE mount ({fstype})",
                         "unmount it first, or choose another mount point")
    if not os.path.isdir(path):
        raise MountError(f"mount point `{path}` is not a directory")


def check_fuse_available() -> str | None:
    """Why FUSE cannot be used here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not (shutil.which("fusermount3") or shutil.which("fusermount")) and os.geteuid() != 0:
        return "fusermount is missing"
    return None


# ------------------------------------------------------------------------------------------ serving

_worker = threading.local()  # `kept` in the thread state of a libfuse worker once it is kept


def _keep_thread_state() -> None:
    """Keep the calling libfuse worker's Python thread state for the life of the thread.

    libfuse calls the binding from threads Python did not start. ctypes makes a thread state for each such
    callback and deletes it when the callback returns (`PyGILState_Ensure`/`Release`), so every FUSE request
    paid for a new thread state, a fresh 16 KiB frame stack (an `mmap` and a `munmap`) and a `gettid` — 119,000
    of each for 118,000 replies (strace of the daemon, `tar x` + `rm -rf` of 300 files; docs/benchmarks.md,
    issue 16 part 5). One more `PyGILState_Ensure` that is never released keeps the state's count above zero:
    ctypes' own release then only lets go of the GIL. The workers live as long as the mount (no idle worker is
    destroyed: `max_idle_threads` = `max_threads`), so the states are kept 10 at most."""
    if not getattr(_worker, "kept", False):  # the state made for this callback: from now on, this thread's
        ctypes.pythonapi.PyGILState_Ensure()
        _worker.kept = True


def _serving(fuse_cls, mfusepy: bool, libfuse3: bool):
    """The binding's FUSE class with what it lacks: FOPEN_DIRECT_IO for the files the filesystem asks it for
    (`ops.direct_io(path)`: the denials file changes under one inode, and `kernel_cache` would serve a stale
    page), FOPEN_NOFLUSH for the descriptors whose flush does nothing (`ops.needs_flush(fh)`), for mfusepy on
    libfuse3 rename's flags (it drops them), so RENAME_NOREPLACE is honoured, and for mfusepy a `create` that
    hands the open flags straight to `ops.create(path, mode, flags)`: mfusepy's own calls `inspect.signature`
    on the operations' method on every create to choose between two signatures (~10 % of the daemon's time in
    `tar x`, docs/benchmarks.md)."""

    class FUSE(fuse_cls):
        if mfusepy and libfuse3:  # libfuse2 ends idle workers and starts new ones: no state kept for those
            def _wrapper(self, func, *args, **kwargs):
                _keep_thread_state()
                return super()._wrapper(func, *args, **kwargs)

        def open(self, path, fip):
            result = super().open(path, fip)
            wants = getattr(self.operations, "direct_io", None)
            if result == 0 and wants is not None and wants(path.decode(self.encoding, self.errors)):
                fip.contents.direct_io = 1
            if result == 0:
                self._quiet(fip.contents)
            return result

        def _quiet(self, fi) -> None:
            """FOPEN_NOFLUSH (libfuse ≥ 3.11) for a descriptor whose flush does nothing: close(2) then makes no
            round trip to the daemon."""
            needs = getattr(self.operations, "needs_flush", None)
            if needs is not None and hasattr(fi, "noflush") and not needs(fi.fh):
                fi.noflush = 1

        if mfusepy:
            def create(self, path, mode, fip):
                fi = fip.contents
                fi.fh = self.operations.create(path.decode(self.encoding, self.errors), mode, fi.flags)
                self._quiet(fi)
                return 0

        if mfusepy and libfuse3:
            def rename_fuse_3(self, old, new, flags):
                return self.operations.rename(old.decode(self.encoding, self.errors),
                                              new.decode(self.encoding, self.errors), flags)

    return FUSE


def _fast_path(ops, binding: Binding, options: MountOptions):
    """The compiled fast path attached to `ops`, where the binding's operation table can take it."""
    from ifc.enforce import fastpath

    if not (options.fast_path and binding.name == "mfusepy3" and hasattr(ops, "attach_fast")):
        return fastpath.OFF
    fast = fastpath.load()
    if fast.enabled:
        try:
            ops.attach_fast(fast, fastpath.Layout.of(binding.module))
        except RuntimeError as exc:  # a second mount in this process, a configuration the C side cannot take
            log.warning("the mount serves every request in Python: %s", exc)
            return fastpath.OFF
    return fast


@contextlib.contextmanager
def _installed(module, fast):
    """While mfusepy mounts: its operation table, just before `fuse_main_real` hands it to libfuse (which
    copies it), gets the fast path's functions. mfusepy builds the table inside `FUSE.__init__` and passes it
    straight on, so its module's `fuse_main_real` is the one place to reach it."""
    if not fast.enabled:
        yield
        return
    real = module.fuse_main_real

    def main(argc, argv, operations, size, context):
        try:
            fast.install(operations.contents)
        except (RuntimeError, AttributeError, KeyError, TypeError) as exc:  # nothing was changed: all Python
            log.warning("the mount serves every request in Python: %s", exc)
        return real(argc, argv, operations, size, context)

    module.fuse_main_real = main
    try:
        yield
    finally:
        module.fuse_main_real = real


class _Fusepy:
    """fusepy calls `operations(name, *args)`; forward to the methods."""

    def __init__(self, ops):
        self._ops = ops
        self.use_ns = True

    def __call__(self, op, *args):
        method = getattr(self._ops, op, None)
        if method is None:
            raise OSError(errno.ENOSYS, f"`{op}` is not implemented")
        return method(*args)

    def __getattr__(self, name):
        return getattr(self._ops, name)


def serve(ops, mountpoint: str, binding: Binding, source: str, options: MountOptions | None = None) -> None:
    """Mount `ops` at `mountpoint` and serve until unmounted or signalled (SIGINT/SIGTERM/SIGHUP)."""
    options = options or MountOptions()
    prepare_mountpoint(mountpoint)
    kwargs = options.fuse_kwargs(binding, source)
    mfusepy = binding.name.startswith("mfusepy")
    fuse_cls = _serving(binding.FUSE, mfusepy, binding.libfuse == 3)
    operations = _Fusepy(ops) if binding.name == "fusepy" else ops
    fast = _fast_path(ops, binding, options)
    with warnings.catch_warnings(), _installed(binding.module, fast):
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            fuse_cls(operations, mountpoint, **kwargs)
        except RuntimeError as exc:
            if getattr(ops, "mounted", False):
                return  # libfuse3 reports the signal that ended a served mount as a failure status
            raise MountError(f"libfuse could not mount `{mountpoint}` (status {exc})",
                             "is /dev/fuse usable and are you root (or in the fuse group)?") from None


# ------------------------------------------------------------------------------------------ a daemon process

class Daemon:
    """`ifc mount` run as a child process: started, waited for until mounted, stopped with SIGTERM.

        with Daemon(["--policy", P, "--run-dir", R, SRC, MNT], MNT) as daemon: ...
    """

    def __init__(self, args: list[str], mountpoint: str, *, log_path: str | None = None, timeout: float = 60.0,
                 env: dict | None = None):
        import sys
        import time

        self.mountpoint = os.path.realpath(mountpoint)
        self.log_path = log_path
        before = _mount_entry(self.mountpoint)
        if before and before[1].startswith("fuse") and not is_stale(self.mountpoint):
            raise MountError(f"`{mountpoint}` is already a FUSE mount")
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "ifc", "mount", *args], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out, env=env)
        finally:
            if log_path:
                out.close()
        deadline = time.monotonic() + timeout
        while True:  # until a live FUSE mount is on top (a dead one that was there is detached by the daemon)
            entry = _mount_entry(self.mountpoint)
            # and still one after `is_stale` answered: a dead mount read from mountinfo just before the daemon
            # detached it leaves `is_stale` asking the bare directory beneath, which answers
            if entry and entry[1].startswith("fuse") and not is_stale(self.mountpoint) \
                    and (mounted_at(self.mountpoint) or "").startswith("fuse"):
                break
            if self.proc.poll() is not None:
                raise MountError(f"the mount daemon exited with status {self.proc.returncode}"
                                 + (f"; see {log_path}" if log_path else ""))
            if time.monotonic() > deadline:
                self.stop()
                raise MountError(f"`{mountpoint}` was not mounted within {timeout:.0f} s")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, and make sure nothing is left mounted (even if the daemon is already dead)."""
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if mounted_at(self.mountpoint) is not None and (mounted_at(self.mountpoint) or "").startswith("fuse"):
            detach(self.mountpoint)
        return self.proc.returncode

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
