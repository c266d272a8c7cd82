"""What a mount daemon tells the process that launched it (`ifc run`) about failures its answers hide.

A failure inside an enforcement point is a denial (fail closed), so the agent sees EACCES — and a log that
cannot be written looks to the agent just like a policy saying no. The person who started the run must hear
otherwise: `ifc run` exits non-zero and says why. The daemon reports over a pipe its launcher hands it
(`ifc mount --health-fd N`), as JSON lines:

    {"log_failed": {"ts": ..., "reason": "OperationalError: database is locked"}}   the first log failure
    {"notice": {"text": "secret `K` has no value (...)"}}                              said at once by `ifc run`
    {"listening": {"name": "http", "host": "127.0.0.1", "port": 41234}}               where the egress hook is
    {"fatal": {"reason": "`RUN/mnt` is already a mount point ..."}}                   why it could not serve
    {"finished": {"log_failures": N}}                                                  the daemon's last word

A daemon that cannot start (a mount point in use, the hook's address taken) says why in `fatal` before it
exits, so `ifc run`'s own error line carries the reason, not only a pointer to `mount.log`.

The egress hook (`ifc mount --egress`) needs no health of its own: it runs in the daemon's process, on an
event loop that ends only when the daemon stops it, so the hook dies with the daemon, and its decisions go
through the same monitor and log. It does say where it listens: `ifc run` asks for port 0 and learns the
port the daemon bound. A port the launcher picked and the daemon bound later could be taken in between by
anything else on the host (another run starting at the same moment): the run would fail to start.

Why a pipe and not the exit status alone or a file in the run directory: the exit status says *that*
something failed, not when or why; a file could not be written when the failure is the run directory's disk
(a full disk is one way the log fails). A pipe needs no disk, and its end tells the launcher the daemon is
gone: no `finished` line before EOF means it died (its wait status then says how, e.g. SIGKILL). Only the
first failure is sent at once (its time tells which decisions were affected) and the count at the end, so
the daemon never blocks on a launcher that reads slowly.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Failure:
    ts: float
    reason: str


@dataclass
class Health:
    """What the launcher read from the pipe."""

    log_failures: int = 0
    first_log_failure: Failure | None = None
    finished: bool = False  # the daemon said its last word (it did not die)
    fatal: str | None = None  # why it could not start or serve
    notices: list[str] = field(default_factory=list)
    listening: dict[str, tuple[str, int]] = field(default_factory=dict)  # the hook's servers: name -> address


class Reporter:
    """The daemon's end of the pipe. Writes never raise: a launcher that is gone cannot be told anything."""

    def __init__(self, fd: int):
        os.set_inheritable(fd, False)  # a child of the daemon holding it would delay the EOF that means "gone"
        self._fd = fd
        self._told = False

    def log_failed(self, ts: float, reason: str) -> None:
        if not self._told:
            self._told = True
            self._send({"log_failed": {"ts": ts, "reason": reason}})

    def notice(self, text: str) -> None:
        self._send({"notice": {"text": text}})

    def listening(self, name: str, host: str, port: int) -> None:
        self._send({"listening": {"name": name, "host": host, "port": port}})

    def fatal(self, reason: str) -> None:
        self._send({"fatal": {"reason": reason}})

    def finished(self, log_failures: int) -> None:
        self._send({"finished": {"log_failures": log_failures}})
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def _send(self, message: dict) -> None:
        with contextlib.suppress(OSError):  # one write of a short line: atomic on a pipe
            os.write(self._fd, (json.dumps(message) + "\n").encode())


def read_health(lines: Iterable[bytes], on_notice: Callable[[str], None] | None = None,
                on_listening: Callable[[Health], None] | None = None) -> Health:
    """Fold the daemon's lines into a `Health`; `on_notice` hears each notice as it arrives, `on_listening` is
    called after each address the hook bound. A line that is not
    one of ours is skipped: it would be a bug in our own daemon, and dropping the lines after it would hide the
    failure they report."""
    health = Health()
    for line in lines:
        try:
            message = json.loads(line)
            kind, body = next(iter(message.items()))
            if kind == "finished":
                health.finished = True
                health.log_failures = max(health.log_failures, int(body["log_failures"]))
            elif kind == "log_failed":
                health.first_log_failure = Failure(float(body["ts"]), str(body["reason"]))
                health.log_failures = max(health.log_failures, 1)
            elif kind == "fatal":
                health.fatal = " ".join(str(body["reason"]).split())  # one line, whatever the daemon sent
            elif kind == "notice":
                text = " ".join(str(body["text"]).split())
                health.notices.append(text)
                if on_notice is not None:
                    on_notice(text)
            elif kind == "listening":
                port = int(body["port"])
                if not 0 < port < 65536:
                    continue
                health.listening[str(body["name"])] = (str(body["host"]), port)
                if on_listening is not None:
                    on_listening(health)
        except (ValueError, TypeError, KeyError, AttributeError, StopIteration):
            continue
    return health
