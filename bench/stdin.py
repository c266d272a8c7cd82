"""For benchmarks that call a sandbox in-process: stdin from /dev/null for the call, so it takes the
no-terminal path (no raw mode, no terminal relay) whatever the bench was started from."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def no_terminal_stdin():
    with open(os.devnull, "rb") as null:
        saved = os.dup(0)
        os.dup2(null.fileno(), 0)
        try:
            yield
        finally:
            os.dup2(saved, 0)
            os.close(saved)
