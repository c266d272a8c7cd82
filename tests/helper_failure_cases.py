"""Scenarios for `ifc run` when a helper fails mid-run, written once for every isolation: the mount daemon
killed with SIGKILL, and an event log that cannot be written. Each takes `sandbox_cases`' `run(ws, policy,
run_dir, script, extra, env)`; a thread plays the failure once the agent says it is ready (a file it
writes through the mount), so the failure lands mid-run, never before the agent started or after it ended."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sandbox_cases import Run

READY = "echo ready > src/ready"
# the run fails with FAILED and says so in its last line, whatever the command's own status was
ERROR = re.compile(r"^ifc run: error: (?P<what>.+)$")


def when_ready(ws: Path, act: Callable[[], None]) -> threading.Thread:
    def wait_then_act() -> None:
        deadline = time.monotonic() + 90
        while not (ws / "src" / "ready").exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)
        act()

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def mount_daemon_of(run_dir: Path) -> int:
    """The pid of the `ifc mount` serving `run_dir` (a child of `ifc run`, found by its arguments)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ifc" in argv and b"mount" in argv and str(run_dir).encode() in argv:
            return int(entry)
    raise AssertionError(f"no mount daemon serves {run_dir}")


def last_error(stderr: str) -> str:
    match = ERROR.match(stderr.rstrip("\n").splitlines()[-1])
    assert match, f"the last line is not `ifc run: error: ...`:\n{stderr}"
    return match["what"]


def killed_mount_daemon(run: Run, ws: Path, policy: Path, run_dir: Path) -> None:
    """`kill -9` of the mount daemon mid-run: the agent's later file operations fail, it exits 0 anyway, and
    `ifc run` exits FAILED, naming the daemon, the signal and the time after which nothing was decided."""
    script = (f"{READY}; while cat src/main.py >/dev/null 2>&1; do sleep 0.05; done; "
              "echo after > src/after 2>/dev/null || echo write-failed; exit 0")
    killed: list[float] = []

    def kill() -> None:
        os.kill(mount_daemon_of(run_dir), signal.SIGKILL)
        killed.append(time.time())

    killer = when_ready(ws, kill)
    proc = run(ws, policy, run_dir, script, (), {})
    killer.join()
    assert killed, proc.stderr
    assert proc.returncode == 125, proc.stderr
    assert "write-failed" in proc.stdout and not (ws / "src" / "after").exists()
    what = last_error(proc.stderr)
    assert what.startswith("the mount daemon died during the run (signal 9); decisions after "), what
    assert f"see {run_dir / 'mount.log'}" in what and "not in the log" in what
    stamp = re.search(r"after (\d\d:\d\d:\d\d) ", what)[1]
    assert stamp in {time.strftime("%H:%M:%S", time.localtime(killed[0] + d)) for d in (0, 1)}
    assert "the log is incomplete" in proc.stderr


def unwritable_event_log(run: Run, ws: Path, policy: Path, run_dir: Path) -> None:
    """Another process holds the log's write lock while the agent is denied something: that denial cannot
    be logged (the monitor waits its busy timeout, then denies saying so). The run ends normally, the
    command exits 0, and `ifc run` exits FAILED, saying the log failed, when, and why."""
    script = (f"{READY}; while [ ! -e src/go ]; do sleep 0.05; done; "
              "cat .env >/dev/null 2>&1 || echo denied; echo done > src/done; exit 0")
    held: list[sqlite3.Connection] = []

    def lock_then_release() -> None:
        holder = sqlite3.connect(run_dir / "events.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        held.append(holder)
        (ws / "src" / "go").write_text("go\n")
        deadline = time.monotonic() + 60
        while not (ws / "src" / "done").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        holder.execute("ROLLBACK")
        holder.close()

    locker = when_ready(ws, lock_then_release)
    proc = run(ws, policy, run_dir, script, (), {})
    locker.join()
    assert held, proc.stderr
    assert proc.returncode == 125, proc.stderr
    assert proc.stdout.split() == ["denied"]
    what = last_error(proc.stderr)
    assert what.startswith("the mount daemon could not write the event log (1 failure(s), first at "), what
    assert "OperationalError: database is locked" in what and f"see {run_dir / 'mount.log'}" in what
    log = (run_dir / "mount.log").read_text()
    assert "ifc mount: error: the event log failed 1 time(s)" in log and "Traceback" not in log, log


# ------------------------------------------------------------------------------------------ helpers that cannot start

UNSET_POLICY = """labels {{ secrecy public < internal < secret }}
files {{ "**" internal  ".env" secret }}
endpoints {{ "http://127.0.0.1:{port}" clearance internal returns trusted as web }}
secret API_KEY from env "IFC_TEST_UNSET_API_KEY" to "http://127.0.0.1:{port}"
agent coder {{ read "**" write "/src/" create "/src/" connect "http://127.0.0.1:{port}" }}
"""


def unset_secret(run: Run, tmp_path: Path) -> None:
    """A secret whose variable is unset: the run starts (and says so at once), the agent has the secret's
    sentinel, a request that carries it is refused saying why, one that does not reaches the server."""
    from sandbox_cases import Recorder, agent_workspace, serving

    Recorder.seen = []
    ws = agent_workspace(tmp_path, {"README.md": "# x\n"})
    assert "IFC_TEST_UNSET_API_KEY" not in os.environ
    with serving(Recorder) as port:
        policy = tmp_path / "policy.flow"
        policy.write_text(UNSET_POLICY.format(port=port))
        fetch = f"curl -s --noproxy '' -x $HTTP_PROXY http://127.0.0.1:{port}"
        script = (f'case "$API_KEY" in ifc-sentinel-*) echo has-sentinel;; esac; '
                  f'{fetch}/with -H "Authorization: Bearer $API_KEY"; {fetch}/without')
        proc = run(ws, policy, tmp_path / "run", script, ("--egress",), {})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "has-sentinel", proc.stdout
    assert lines[1] == "ifc: secret `API_KEY` had no value when the run started (environment variable " \
                       "`IFC_TEST_UNSET_API_KEY` is not set)", proc.stdout
    assert lines[-1] == "ok" and Recorder.seen == [("/without", None)], (proc.stdout, Recorder.seen)
    notice = "ifc run: secret `API_KEY` has no value (environment variable `IFC_TEST_UNSET_API_KEY` is not set): " \
             "the sandbox gets its sentinel, and every send that needs it is refused"
    assert notice in proc.stderr.splitlines(), proc.stderr
    assert "send `API_KEY@http://127.0.0.1:" in proc.stderr and "error:" not in proc.stderr


def busy_mount_point(run: Run, ws: Path, policy: Path, run_dir: Path) -> None:
    """The run directory's mount point is already a live FUSE mount (an `ifc mount` left there): `ifc run`
    refuses at once, in its own error line, and the agent never runs on that other mount."""
    other = run_dir.parent / "other"
    other.mkdir()
    (run_dir / "mnt").mkdir(parents=True)
    mounted = subprocess.run([sys.executable, "-m", "ifc", "mount", "--background", "--policy", str(policy),
                              "--run-dir", str(run_dir.parent / "other-run"), str(other), str(run_dir / "mnt")],
                             capture_output=True, text=True, timeout=60)
    assert mounted.returncode == 0, mounted.stderr
    daemon = int(re.search(r"daemon (\d+) serving", mounted.stderr)[1])
    try:
        proc = run(ws, policy, run_dir, "echo ran > ran.txt", (), {})
        assert proc.returncode == 125, proc.stderr
        *_, error, help = proc.stderr.rstrip("\n").splitlines()
        assert error == f"ifc run: error: `{run_dir / 'mnt'}` is already a FUSE mount (fuse.ifc): another run or " \
                        "`ifc mount` uses this run directory", proc.stderr
        assert help == "  help: choose another --run-dir, or unmount it"
        assert not (other / "ran.txt").exists() and not (ws / "ran.txt").exists()
        assert os.path.ismount(run_dir / "mnt"), "the other mount is left alone"
    finally:
        subprocess.run(["umount", str(run_dir / "mnt")], capture_output=True)
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon, signal.SIGTERM)


def daemon_cannot_start(run: Run, ws: Path, policy: Path, run_dir: Path) -> None:
    """The mount daemon refuses to start (here: the label store would be inside the workspace): its reason is
    `ifc run`'s own error line, not only a line in mount.log."""
    state = ws / "state"
    state.mkdir()
    proc = run(ws, policy, run_dir, "echo ran > ran.txt", (), {"IFC_STATE_DIR": str(state)})
    assert proc.returncode == 125, proc.stderr
    what = last_error(proc.stderr)
    assert what.startswith("the mount daemon could not start: the label store "), what
    assert f"is inside the workspace `{ws}`: the agent could rewrite its own labels" in what
    assert what.endswith(f"— see {run_dir / 'mount.log'}"), what
    assert not (ws / "ran.txt").exists()


def bad_policy(run: Run, ws: Path, policy: Path, run_dir: Path) -> None:
    """A policy that does not compile: `ifc run` says where and why in its own line, before starting anything."""
    policy.write_text('labels { secrecy public < internal }\nfiles { "**" interal }\n')
    proc = run(ws, policy, run_dir, "echo ran > ran.txt", (), {})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"ifc run: error: `{policy}` does not compile: {policy}:2:14: unknown label "
                                        "`interal`", f"  help: run `ifc check {policy}`"]
    assert not (ws / "ran.txt").exists() and not run_dir.exists()
