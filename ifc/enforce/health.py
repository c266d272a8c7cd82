"""What a mount daemon tells the process that launched it (`ifc run`) about failures its answers hide.

A failure inside an enforcement point is a denial (fail closed), so the agent sees EACCES or a refused
connection — and a log that cannot be written, or an egress hook that stopped, looks to the agent just like
a policy saying no. The person who started the run must hear otherwise: `ifc run` exits non-zero and says
why. The daemon reports over a pipe its launcher hands it (`ifc mount --health-fd N`), as JSON lines:

    {"log_failed": {"ts": ..., "reason": "OperationalError: database is locked"}}   the first log failure
    {"egress_stopped": {"ts": ..., "reason": "..."}}                                  the hook's server ended
    {"finished": {"log_failures": N}}                                                  the daemon's last word

Why a pipe and not the exit status alone or a file in the run directory: the exit status says *that*
something failed, not when or why; a file could not be written when the failure is the run directory's disk
(a full disk is one way the log fails). A pipe needs no disk, and its end tells the launcher the daemon is
gone: no `finished` line before EOF means it died (its wait status then says how, e.g. SIGKILL). Only the
first failure of each kind is sent at once (its time tells which decisions were affected) and the count at
the end, so the daemon never blocks on a launcher that reads slowly.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Failure:
    ts: float
    reason: str


@dataclass
class Health:
    """What the launcher read from the pipe."""

    log_failures: int = 0
    first_log_failure: Failure | None = None
    egress_stopped: Failure | None = None
    finished: bool = False  # the daemon said its last word (it did not die)


class Reporter:
    """The daemon's end of the pipe. Writes never raise: a launcher that is gone cannot be told anything."""

    def __init__(self, fd: int):
        os.set_inheritable(fd, False)  # a child of the daemon holding it would delay the EOF that means "gone"
        self._fd = fd
        self._sent: set[str] = set()

    def log_failed(self, ts: float, reason: str) -> None:
        self._first("log_failed", ts, reason)

    def egress_stopped(self, ts: float, reason: str) -> None:
        self._first("egress_stopped", ts, reason)

    def finished(self, log_failures: int) -> None:
        self._send({"finished": {"log_failures": log_failures}})
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def _first(self, kind: str, ts: float, reason: str) -> None:
        if kind not in self._sent:
            self._sent.add(kind)
            self._send({kind: {"ts": ts, "reason": reason}})

    def _send(self, message: dict) -> None:
        with contextlib.suppress(OSError):  # one write of a short line: atomic on a pipe
            os.write(self._fd, (json.dumps(message) + "\n").encode())


def read_health(lines: Iterable[bytes]) -> Health:
    """Fold the daemon's lines into a `Health`; a line that is not one of ours is ignored (the daemon is
    ours, so that is a bug to see in mount.log, not a reason to lose the rest)."""
    health = Health()
    for line in lines:
        try:
            message = json.loads(line)
            kind, body = next(iter(message.items()))
            if kind == "finished":
                health.finished = True
                health.log_failures = max(health.log_failures, int(body["log_failures"]))
            elif kind in ("log_failed", "egress_stopped"):
                failure = Failure(float(body["ts"]), str(body["reason"]))
                if kind == "log_failed":
                    health.first_log_failure = failure
                    health.log_failures = max(health.log_failures, 1)
                else:
                    health.egress_stopped = failure
        except (ValueError, TypeError, KeyError, AttributeError, StopIteration):
            continue
    return health
