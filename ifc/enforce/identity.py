"""Who is calling: FUSE's thread id → process → subject.

`fuse_get_context()` gives the *thread* id of the caller. `/proc/<tid>/status` names its thread group
(the process); the process's subject is found by walking up its ancestors:

* a process whose environment (`/proc/<pid>/environ`, the environment it was exec'd with) holds
  `IFC_TOKEN=<token>` is a subject of its own, `pid:<pid>`, that presents that token; it starts with
  the taint of the subject it was started from (the monitor's `parent`);
* any other process belongs to the subject of its nearest ancestor that presented a token, and
  without one to the default subject, `session` (whose token, if any, is the one `ifc mount --token`
  was given).

Every answer is cached per (pid, start time) and a thread's cached answer is re-validated on each call:
pids are reused (`pid_max` is 32768 here), so a new process must never inherit a dead one's subject. The
check is a pidfd opened for the thread before its `/proc` files were read: a pidfd names one task and never
a later one with the same id, and signal 0 through it (0.3 µs) says whether that task still exists.
Without pidfds (or when one cannot be had) the thread's `/proc/<tid>/stat` is read again and its start time
compared (start times are not reused for a pid within a clock tick): 8-16 µs on every request.

Once a process has been seen presenting a token it keeps that subject for its lifetime, even if it
exec's without the variable, so dropping the token does not hand it its parent's authority.

Per-process subjects are a *restriction for cooperating processes* (a launcher starting a sub-agent
with an attenuated token), not a boundary against a hostile one: a process the daemon has not yet seen
can exec itself without `IFC_TOKEN`, or double-fork so that its child is re-parented to init, and so
run as its ancestors' subject. The boundary against a hostile agent is the session and its token (in
the microVM every call arrives from virtiofsd, so the whole sandbox is one subject).
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

ENV_VAR = "IFC_TOKEN"
DEFAULT_SUBJECT = "session"
MAX_ENVIRON = 1 << 20  # read at most this much of /proc/<pid>/environ
MAX_CACHE = 16384
MAX_DEPTH = 256  # ancestor walk bound (a pid chain cannot be longer in practice)
MAX_PIDFDS = 256  # threads whose answer a pidfd keeps valid (each holds a descriptor)
PIDFD_THREAD = os.O_EXCL  # pidfd_open(2) flag: any thread, not only a thread-group leader (Linux >= 6.9)


@dataclass(frozen=True, slots=True)
class Caller:
    """The subject an operation is decided for, and what to tell the monitor about it."""

    pid: int
    subject: str
    token: str | None = None
    parent: str | None = None  # who started this subject (for the graph; taint is the run's)

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.subject, self.token)


def _read(path: str, limit: int = 4096) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_stat(tid: int, proc: str = "/proc") -> tuple[int, int] | None:
    """(ppid, start time in clock ticks) of a thread or process, or None if it is gone."""
    data = _read(f"{proc}/{tid}/stat")
    if not data:
        return None
    fields = data[data.rfind(b")") + 2:].split()  # the command name may hold spaces and parentheses
    try:
        return int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def read_tgid(tid: int, proc: str = "/proc") -> int | None:
    data = _read(f"{proc}/{tid}/status", 8192)
    if not data:
        return None
    start = data.find(b"\nTgid:")
    if start < 0:
        return None
    end = data.find(b"\n", start + 1)
    try:
        return int(data[start + 6:end])
    except ValueError:
        return None


def read_token(pid: int, env_var: str = ENV_VAR, proc: str = "/proc") -> str | None:
    data = _read(f"{proc}/{pid}/environ", MAX_ENVIRON)
    if not data:
        return None
    needle = env_var.encode() + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(needle):
            value = entry[len(needle):].strip()
            return value.decode("ascii", "replace") or None
    return None


def read_cmdline(pid: int, proc: str = "/proc") -> str | None:
    data = _read(f"{proc}/{pid}/cmdline", 4096)
    if not data:
        return None
    return " ".join(part.decode("utf-8", "replace") for part in data.rstrip(b"\0").split(b"\0"))


class Identities:
    """Maps FUSE caller thread ids to `Caller`s. Thread-safe; caches per (pid, start time)."""

    def __init__(self, *, default_subject: str = DEFAULT_SUBJECT, default_token: str | None = None,
                 env_var: str | None = ENV_VAR, proc: str = "/proc", self_pid: int | None = None):
        self.default = Caller(0, default_subject, default_token)
        self.env_var = env_var
        self.proc = proc
        self.self_pid = os.getpid() if self_pid is None else self_pid
        self._threads: dict[int, tuple[int, int]] = {}  # tid -> (start time, pid)
        self._procs: dict[tuple[int, int], Caller] = {}  # (pid, start time) -> caller
        self._live: dict[int, tuple[int, Caller]] = {}  # tid -> (pidfd of that very thread, its caller)
        self._use_pidfds = proc == "/proc" and hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")
        self._lock = threading.Lock()

    def caller(self, tid: int) -> Caller:
        """The caller for a FUSE request's thread id (0 when the kernel itself asks: the default)."""
        if tid <= 0 or self.env_var is None:
            return self.default if tid <= 0 else Caller(tid, self.default.subject, self.default.token)
        if not self._use_pidfds:
            return self._resolve(tid)[0]
        with self._lock:  # descriptors are used and closed under the lock: a closed number is never reused here
            live = self._live.get(tid)
            if live is not None:
                if _alive(live[0]):
                    return live[1]
                del self._live[tid]
                os.close(live[0])
        pidfd = _pidfd(tid)
        caller, lasting = self._resolve(tid)
        if pidfd is not None:
            with self._lock:
                # the /proc reads were of the pidfd's task only if it outlived them
                if lasting and _alive(pidfd) and tid not in self._live:
                    if len(self._live) >= MAX_PIDFDS:
                        for old in list(self._live)[: MAX_PIDFDS // 2]:
                            os.close(self._live.pop(old)[0])
                    self._live[tid] = (pidfd, caller)
                else:
                    os.close(pidfd)
        return caller

    def pin(self, tid: int) -> tuple[int, Caller] | None:
        """A pidfd of thread `tid` (a new descriptor, the caller's to close) and the caller that thread is known
        as for its lifetime, or None when its answer is not kept by a pidfd (`caller` reads /proc for it again):
        what lets the mount's fast path tell a thread's subject without asking here."""
        with self._lock:
            live = self._live.get(tid)
            if live is None or not _alive(live[0]):
                return None
            return os.dup(live[0]), live[1]

    def _resolve(self, tid: int) -> tuple[Caller, bool]:
        """The caller from /proc, and whether it may be kept for the thread's lifetime (False: it is a
        fallback because the thread or its process could not be read)."""
        stat = read_stat(tid, self.proc)
        if stat is None:
            return Caller(tid, self.default.subject, self.default.token), False
        start = stat[1]
        cached = self._threads.get(tid)
        if cached is not None and cached[0] == start:
            pid = cached[1]
            caller = self._procs.get((pid, start)) if pid == tid else None
            if caller is not None:
                return caller, True
        else:
            pid = read_tgid(tid, self.proc) or tid
            self._remember(self._threads, tid, (start, pid))
        if pid != tid:
            pstat = read_stat(pid, self.proc)
            if pstat is None:
                return Caller(pid, self.default.subject, self.default.token), False
            return self._process(pid, pstat[0], pstat[1], 0), True
        return self._process(pid, stat[0], start, 0), True

    def _process(self, pid: int, ppid: int, start: int, depth: int) -> Caller:
        key = (pid, start)
        cached = self._procs.get(key)
        if cached is not None:
            return cached
        if pid <= 1 or pid == self.self_pid or depth > MAX_DEPTH:
            return Caller(pid, self.default.subject, self.default.token)
        token = read_token(pid, self.env_var, self.proc) if self.env_var else None
        parent = self._ancestor(ppid, depth)
        if token is not None and token != parent.token:
            caller = Caller(pid, f"pid:{pid}", token, parent.subject)
        else:
            caller = Caller(pid, parent.subject, parent.token, parent.parent)
        self._remember(self._procs, key, caller)
        return caller

    def _ancestor(self, ppid: int, depth: int) -> Caller:
        if ppid <= 1 or ppid == self.self_pid:
            return self.default
        stat = read_stat(ppid, self.proc)
        if stat is None:
            return self.default
        return self._process(ppid, stat[0], stat[1], depth + 1)

    def _remember(self, table: dict, key, value) -> None:
        with self._lock:
            if len(table) >= MAX_CACHE:
                # drop the older half; token subjects are re-derived from their environment if seen again
                for old in list(table)[: MAX_CACHE // 2]:
                    table.pop(old, None)
            table[key] = value

    def cmdline(self, pid: int) -> str | None:
        return read_cmdline(pid, self.proc) if pid > 0 else None

    def close(self) -> None:
        """Close the pidfds (answers are then validated through /proc again)."""
        with self._lock:
            for pidfd, _ in self._live.values():
                os.close(pidfd)
            self._live.clear()


def _pidfd(tid: int) -> int | None:
    """A pidfd for thread `tid`, or None (an older kernel without PIDFD_THREAD takes group leaders only)."""
    for flags in (PIDFD_THREAD, 0):
        try:
            return os.pidfd_open(tid, flags)
        except OSError:
            continue
    return None


def _alive(pidfd: int) -> bool:
    """Does the task a pidfd names still exist? (Signal 0 checks without sending; EPERM counts as unknown.)"""
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except OSError:
        return False
    return True
