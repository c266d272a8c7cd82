"""`ifc mount` with what its daemon does recorded, for tests that cannot see it through the mount.

    python tests/recording_mount.py LOG MOUNT-ARGS...

Each line appended to LOG is one of:
  `fsync PATH`, `fdatasync PATH`  a sync the daemon made that succeeded, PATH being what the descriptor was open
                                  on (tests/test_fuse_fsyncdir.py: a directory fsync through the mount answers
                                  success whether or not the daemon synced anything, so the caller cannot tell)
  `call OP`                       a request answered by `EnforcingFS.OP` in Python, not by the compiled fast path
                                  (tests/test_fuse_fastpath.py)
  `state TID`                     a request served in a Python thread state no earlier request ran in, on the
                                  thread TID (tests/test_fuse_threads.py: how many states the daemon makes)
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable


def _append(log: str, line: str) -> None:
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(out, line.encode())  # one write per line: the daemon's threads do not interleave
    finally:
        os.close(out)


def recording(sync: Callable[[int], None], name: str, log: str) -> Callable[[int], None]:
    def recorded(fd: int) -> None:
        sync(fd)
        _append(log, f"{name} {os.readlink(f'/proc/self/fd/{fd}')}\n")

    return recorded


RECORDED = ("getattr", "read", "write", "flush", "fsync", "release", "readdir", "getxattr", "open", "create", "chmod",
            "chown", "utimens", "mkdir", "unlink", "rmdir")


def calls_recorded(method: Callable, log: str, state: threading.local) -> Callable:
    """`EnforcingFS.<method>` noting each call, and each thread state it first runs in: a `threading.local` is
    kept per thread state, so it is empty exactly in a state no request used before."""

    def recorded(self, *args, **kwargs):
        if not getattr(state, "seen", False):
            state.seen = True
            _append(log, f"state {threading.get_native_id()}\n")
        _append(log, f"call {method.__name__}\n")
        return method(self, *args, **kwargs)

    return recorded


def main(log: str, args: list[str]) -> int:
    os.fsync = recording(os.fsync, "fsync", log)
    os.fdatasync = recording(os.fdatasync, "fdatasync", log)
    from ifc.enforce.fs import EnforcingFS

    state = threading.local()
    for name in RECORDED:
        setattr(EnforcingFS, name, calls_recorded(getattr(EnforcingFS, name), log, state))
    from ifc.cli import main as ifc

    return ifc(["mount", *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
