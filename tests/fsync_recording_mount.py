"""`ifc mount` with every fsync and fdatasync the daemon makes recorded (for tests/test_fuse_fsyncdir.py).

    python tests/fsync_recording_mount.py LOG MOUNT-ARGS...

A directory fsync through the mount answers success whether or not the daemon synced anything (once the daemon
answers ENOSYS, the kernel answers every later one itself), so the caller cannot tell. This child runs the
real `ifc mount` with `os.fsync` and `os.fdatasync` wrapped: after each sync that succeeded it appends a line
`fsync PATH` (or `fdatasync PATH`) to LOG, PATH being what the descriptor was open on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def recording(sync: Callable[[int], None], name: str, log: str) -> Callable[[int], None]:
    def recorded(fd: int) -> None:
        sync(fd)
        line = f"{name} {os.readlink(f'/proc/self/fd/{fd}')}\n"
        out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(out, line.encode())  # one write per line: the daemon's threads do not interleave
        finally:
            os.close(out)

    return recorded


def main(log: str, args: list[str]) -> int:
    os.fsync = recording(os.fsync, "fsync", log)
    os.fdatasync = recording(os.fdatasync, "fdatasync", log)
    from ifc.cli import main as ifc

    return ifc(["mount", *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
