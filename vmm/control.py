"""The host end of the guest's control channel (the virtio-serial port `ifc.ctl`).

`ifc run` listens on a Unix socket before QEMU starts and QEMU connects to it, so nothing the guest says
is lost and the channel works both ways.

* Up, from the guest's init: `booted`, `ready`, `exit N`, `done` (the workspace is synced and unmounted:
  QEMU may be stopped), `error TEXT`; from its daemon (`vmm/guest/ifc-guestd.c`): `proc exec …`,
  `proc exit …`, `proc lost`. Every line but the process reports is appended to RUN_DIR/control.log; the
  process reports go to the run's event log (`ifc.monitor.guestprocs`), so denials can name the guest
  command that caused them.
* Down: `winsize ROWS COLS` on every SIGWINCH, so a full-screen agent redraws at the terminal's size.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import termios
import threading
import time
from pathlib import Path

from ifc.monitor.guestprocs import GuestProcessLog

LINE_MAX = 8192  # a process report carries at most 2 KiB of argv, hex-encoded


class Control:
    def __init__(self, sock_path: Path, log_path: Path, events_db: Path | None):
        self.sock_path = sock_path
        self.log_path = log_path
        self.events_db = events_db
        self.ready_at: float | None = None
        self.exit_at: float | None = None
        self.status: int | None = None
        self.done = False
        self.error: str | None = None
        self._conn: socket.socket | None = None
        self._send_lock = threading.Lock()
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(sock_path))
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._run, name="ifc-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def drain(self, timeout: float) -> None:
        """Wait for the reader to reach the end of the channel (the peer has gone)."""
        self._thread.join(timeout)

    def close(self) -> None:
        for sock in (self._conn, self._listener):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
        self._thread.join(2)

    # ----------------------------------------------------------------------------- down
    def send(self, line: str) -> None:
        """Best effort: a guest that is not listening yet reads it when it opens the port."""
        conn = self._conn
        if conn is None:
            return
        with self._send_lock, contextlib.suppress(OSError):
            conn.sendall(line.encode() + b"\n")

    def send_winsize(self, fd: int) -> None:
        rows, cols = terminal_size(fd)
        if rows and cols:
            self.send(f"winsize {rows} {cols}")

    # ----------------------------------------------------------------------------- up
    def _run(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        self._conn = conn
        processes = _open_process_log(self.events_db)
        pending = b""
        with open(self.log_path, "ab", buffering=0) as log:
            try:
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    if len(pending) > LINE_MAX:
                        pending = b""
                    for raw in lines:
                        now = time.monotonic()
                        line = raw.decode("utf-8", "replace")
                        if not line.startswith("proc "):
                            log.write(raw + b"\n")
                        self._take(line, now, processes)
            except OSError:
                pass
            finally:
                if processes is not None:
                    processes.close()

    def _take(self, line: str, now: float, processes: GuestProcessLog | None) -> None:
        if line == "ready" and self.ready_at is None:
            self.ready_at = now
        elif line.startswith("exit ") and self.status is None:
            with contextlib.suppress(ValueError):
                self.status = int(line.split()[1])
                self.exit_at = now
        elif line == "done" and self.status is not None:
            self.done = True
        elif line.startswith("error ") and self.error is None:
            self.error = line[6:]
        elif line.startswith("proc "):
            self._process(line.split(), processes)

    def _process(self, words: list[str], processes: GuestProcessLog | None) -> None:
        if processes is None:
            return
        try:
            if words[1] == "exec" and len(words) in (5, 6):
                argv = bytes.fromhex(words[5]).split(b"\0") if len(words) == 6 else []
                if argv and argv[-1] == b"":
                    argv.pop()
                ppid, uid = int(words[3]), int(words[4])
                processes.started(int(words[2]), ppid if ppid >= 0 else None, uid if uid >= 0 else None,
                                  [a.decode("utf-8", "replace") for a in argv])
            elif words[1] == "exit" and len(words) == 4:
                processes.ended(int(words[2]), int(words[3]))
            elif words[1:] == ["lost"]:
                processes.lost()
        except Exception:  # a garbled report or a failing write loses attribution, never the run
            return


def _open_process_log(path: Path | None) -> GuestProcessLog | None:
    if path is None:
        return None
    try:
        return GuestProcessLog(path)
    except Exception:
        return None


def terminal_size(fd: int) -> tuple[int, int]:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return 0, 0
    return rows, cols


def saved_terminal(fd: int):
    """A context that puts the terminal's modes back however the run ends (QEMU sets it raw and restores it
    only when it exits normally; a watchdog kill would leave the user's shell raw)."""

    @contextlib.contextmanager
    def keep():
        try:
            saved = termios.tcgetattr(fd) if os.isatty(fd) else None
        except termios.error:
            saved = None
        try:
            yield
        finally:
            if saved is not None:
                with contextlib.suppress(termios.error):
                    termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    return keep()
