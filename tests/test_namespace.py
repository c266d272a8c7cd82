"""`ifc run --isolation namespace`: status and output come back, only the workspace is visible, writes land
through FUSE, a denied read is EACCES and logged, the agent is unprivileged for good, no network but the
hook, a pty when there is a terminal, nothing survives `kill -9`. No VM: each run takes about a second."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import helper_failure_cases
import pytest
import sandbox_cases
import workload_cases

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "ifc run needs root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    probe = subprocess.run(["unshare", "--mount", "--pid", "--net", "--uts", "--ipc", "--user", "--fork", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create namespaces: {probe.stderr.strip()}"
    return None


if _skip_reason():
    pytest.skip(_skip_reason(), allow_module_level=True)


@pytest.fixture
def workspace(tmp_path):
    return sandbox_cases.tester_workspace(tmp_path)


def argv(ws, policy, run_dir, *cmd, extra=()) -> list[str]:
    return [sys.executable, "-m", "ifc", "run", "--isolation", "namespace", "--policy", str(policy), "--workspace",
            str(ws), "--run-dir", str(run_dir), *extra, "--", *cmd]


def ifc_run(ws, policy, run_dir, *cmd, extra=()) -> subprocess.CompletedProcess:
    return subprocess.run(argv(ws, policy, run_dir, *cmd, extra=extra), cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


def test_status_and_output_come_back_with_the_loud_notice(workspace):
    ws, policy, run_dir = workspace
    proc = ifc_run(ws, policy, run_dir, "sh", "-c", "echo hi; echo oops >&2; exit 3")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "hi\n"
    assert proc.stderr.splitlines()[0].startswith("ifc run: WEAKER ISOLATION:")
    assert "host's kernel" in proc.stderr and "oops" in proc.stderr
    assert f"ifc report {run_dir}" in proc.stderr
    assert (run_dir / "events.db").exists() and (run_dir / "policy.flow").exists()
    assert not (run_dir / "root").exists() and not (run_dir / "mnt").exists()


def test_only_the_workspace_is_visible_and_writes_land(workspace):
    ws, policy, run_dir = workspace
    script = ("id -u; test ! -e /root && echo no-root; test ! -e /etc/shadow && echo no-shadow; "
              f"test ! -e {ROOT} && echo no-host-tree; ls /home; touch /usr/x 2>/dev/null || echo usr-ro; "
              "hostname; cat src/main.py; echo made > src/new.txt; pwd")
    proc = ifc_run(ws, policy, run_dir, "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert proc.stdout.split("\n") == ["1000", "no-root", "no-shadow", "no-host-tree", "agent", "usr-ro", "sandbox",
                                       "print('hello')", "/workspace", ""]
    assert (ws / "src" / "new.txt").read_text() == "made\n"
    assert (ws / "src" / "new.txt").stat().st_uid == 1000


def test_denied_read_is_eacces_and_logged(workspace):
    ws, policy, run_dir = workspace
    proc = ifc_run(ws, policy, run_dir, "sh", "-c", "cat .env; echo status=$?")
    assert "Permission denied" in proc.stderr
    assert "sk-secret" not in proc.stdout + proc.stderr
    assert "status=1" in proc.stdout
    db = sqlite3.connect(run_dir / "events.db")
    denied = db.execute("SELECT op, target FROM events WHERE allowed = 0").fetchall()
    assert ("read", ".env") in denied, denied
    assert "denial" in proc.stderr


def test_the_agent_cannot_regain_privileges(workspace):
    ws, policy, run_dir = workspace
    script = ("grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status; grep NoNewPrivs /proc/self/status; "
              "unshare -r true 2>/dev/null; echo unshare=$?; "
              "python3 -c 'import os; os.setuid(0)' 2>/dev/null; echo setuid=$?; "
              "kill -9 1 2>/dev/null; echo kill-init=$?")
    proc = ifc_run(ws, policy, run_dir, "sh", "-c", script)
    lines = proc.stdout.split("\n")
    assert [line.split()[1] for line in lines[:4]] == ["0000000000000000"] * 4, proc.stdout
    assert lines[4].split() == ["NoNewPrivs:", "1"]
    assert lines[5:9] == ["unshare=1", "setuid=1", "kill-init=1", ""]


def test_no_network_but_loopback_and_nothing_on_the_host(workspace):
    ws, policy, run_dir = workspace
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)"
        script = (f"python3 -c \"{probe}\" 2>/dev/null; echo host=$?; "
                  "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 80), timeout=3)\" 2>/dev/null; "
                  "echo internet=$?; grep -c : /proc/net/dev; wc -c </etc/resolv.conf")
        proc = ifc_run(ws, policy, run_dir, "sh", "-c", script)
    assert proc.stdout.split() == ["host=1", "internet=1", "1", "0"], proc.stdout + proc.stderr  # lo only


def _run(ws, policy, run_dir, script, extra, env) -> subprocess.CompletedProcess:
    return subprocess.run(argv(ws, policy, run_dir, "sh", "-c", script, extra=extra), cwd=ROOT, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60, env={**os.environ, **env})


def test_a_file_read_taints_what_may_leave_through_the_egress_hook(tmp_path):
    sandbox_cases.egress_taint(tmp_path, _run)


def test_no_laundering_by_a_derived_token_or_a_stream_opened_while_clean(tmp_path):
    sandbox_cases.no_laundering(tmp_path, _run)


def test_writes_through_descriptors_and_mappings_opened_clean_float_the_label(tmp_path):
    sandbox_cases.old_descriptors_float(tmp_path, _run, shared_mmap=True)


def test_dns_names_made_after_a_secret_read_never_leave(tmp_path):
    sandbox_cases.dns_names_stay(tmp_path, _run)


def test_labels_floated_in_one_run_hold_in_the_next(tmp_path):
    sandbox_cases.labels_outlive_the_run(tmp_path, _run)


def test_a_killed_mount_daemon_fails_the_run_and_says_why(workspace):
    helper_failure_cases.killed_mount_daemon(_run, *workspace)


def test_an_event_log_that_cannot_be_written_fails_the_run_and_says_why(workspace):
    helper_failure_cases.unwritable_event_log(_run, *workspace)


def test_a_secret_whose_variable_is_unset_costs_only_the_sends_that_need_it(tmp_path):
    helper_failure_cases.unset_secret(_run, tmp_path)


def test_a_busy_mount_point_is_refused_in_ifc_runs_own_error(workspace):
    helper_failure_cases.busy_mount_point(_run, *workspace)


def test_a_bad_policy_is_refused_in_ifc_runs_own_error_before_anything_starts(workspace):
    helper_failure_cases.bad_policy(_run, *workspace)


def test_a_mount_daemon_that_cannot_start_says_why_in_ifc_runs_own_error(workspace):
    helper_failure_cases.daemon_cannot_start(_run, *workspace)


def test_a_name_that_is_not_utf8_is_denied_logged_and_shown_and_the_run_goes_on(workspace):
    ws, policy, run_dir = workspace
    script = ("touch \"$(printf '\\377')\" 2>/dev/null || echo denied; touch \"src/$(printf '\\377')\" && echo made; "
              "cat .env >/dev/null 2>&1 || echo denied-later")
    proc = _run(ws, policy, run_dir, script, (), {})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["denied", "made", "denied-later"]
    assert (ws / "src" / os.fsdecode(b"\xff")).exists()
    assert "ifc run: 2 denial(s):" in proc.stderr and "create `\\xff` by session" in proc.stderr, proc.stderr


def test_a_name_holding_terminal_controls_is_shown_escaped(workspace):
    """A denied name that would erase the summary's line and write another (`\\x1b[2K\\r`) is shown escaped."""
    ws, policy, run_dir = workspace
    proc = _run(ws, policy, run_dir, "touch \"$(printf 'x\\033[2K\\rall clear')\" 2>/dev/null || echo denied", (), {})
    assert proc.returncode == 0 and proc.stdout.split() == ["denied"], proc.stderr
    assert "\x1b" not in proc.stderr and "\r" not in proc.stderr, proc.stderr
    assert "create `x\\x1b[2K\\x0dall clear` by session" in proc.stderr, proc.stderr


def test_every_status_passes_through_the_hook_exactly(tmp_path):
    sandbox_cases.statuses_pass_through(tmp_path, _run)


def test_the_runs_own_token_is_presented_and_keeps_one_subject(tmp_path):
    sandbox_cases.run_token(tmp_path, _run)


def test_https_secrets_are_sentinels_inside_and_real_only_at_the_bound_server(tmp_path):
    sandbox_cases.https_sentinel(tmp_path, _run)


def test_pip_installs_from_the_index_named_only_in_the_hosts_pip_config(tmp_path):
    sandbox_cases.host_package_config(tmp_path, _run)


def test_git_and_python_work_in_a_git_workspace(workspace):
    sandbox_cases.git_and_python(workspace, _run)


def test_set_id_programs_the_agent_edits_are_set_id_no_longer(workspace):
    sandbox_cases.set_id_bits_cleared_on_write(workspace, _run)


def test_a_root_owned_checkout_is_the_agents_own(tmp_path):
    sandbox_cases.root_owned_checkout(tmp_path, _run)


def test_a_terminal_is_the_agents_own_pty_with_size_and_ctrl_c(workspace):
    ws, policy, run_dir = workspace
    pid, fd = pty.fork()
    if pid == 0:  # the child execs `ifc run` on the pty's slave, 33 rows by 101 columns
        # as a user's shell starts it: Ctrl-C at its default (this test worker's own disposition is not the
        # user's: an ignored SIGINT is inherited through exec, by `ifc run` and the agent alike)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        os.chdir(ROOT)
        # (the shell's blocked and ignored signals, printed first: what a failure here has to show)
        cmd = argv(ws, policy, run_dir, "sh", "-c", "grep -E '^Sig(Blk|Ign)' /proc/$$/status; tty; stty size; "
                   "echo READY; sleep 30; echo not-interrupted")
        os.execv(cmd[0], cmd)
    out, sent, deadline = b"", False, time.monotonic() + 30
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child is gone
                break
            out += data
        if not sent and b"READY" in out:
            time.sleep(0.3)
            os.write(fd, b"\x03")  # raw on the host side: the byte reaches the agent's pty, which signals
            sent = True
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert "/dev/pts/0\r\n33 101\r\nREADY" in text, text
    assert "not-interrupted" not in text
    assert os.waitstatus_to_exitcode(status) == 130, text


def _leftovers(run_dir: Path, marker: str) -> list[str]:
    """Processes of the run (by the run dir or the command's marker) and mount tables that still hold it."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            mounts = Path(f"/proc/{pid}/mountinfo").read_text()
        except OSError:
            continue
        if str(run_dir) in cmdline or marker in cmdline:
            found.append(f"{pid}: {cmdline}")
        elif str(run_dir) in mounts:
            found.append(f"{pid} sees a mount of the run")
    return found


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_ifc_run_leaves_nothing(workspace, sig):
    ws, policy, run_dir = workspace
    marker = f"{os.getpid() % 1000 + 7000}.5"
    proc = subprocess.Popen(argv(ws, policy, run_dir, "sleep", marker), cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not any(marker in line and str(run_dir) not in line for line in _leftovers(run_dir, marker)):
        assert proc.poll() is None, "ifc run exited early"
        assert time.monotonic() < deadline, "the command did not start"
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    proc.wait(10)
    deadline = time.monotonic() + 10
    while _leftovers(run_dir, marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _leftovers(run_dir, marker) == []
    assert (ws / "src" / "main.py").read_text() == "print('hello')\n"  # the backing directory is intact


def test_everyday_work_under_the_default_policy(tmp_path):
    """tests/workload_cases.py: git, clones, gc, venv + pip, pytest, tar, rsync, sqlite, rm -rf in a root-owned
    checkout under the shipped default policy, with no denial but the deliberate one, which $IFC_DENIALS
    explains."""
    work = workload_cases.checkout(tmp_path)
    proc = subprocess.run(argv(work.ws, ROOT / "policies" / "default.flow", tmp_path / "run", "sh", "-c",
                               workload_cases.WORKLOAD), cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)
    workload_cases.check(proc, tmp_path / "run", work)
def test_an_agent_that_reads_env_keeps_its_model_and_the_real_key_reaches_only_its_api(tmp_path):
    sandbox_cases.secret_files_survive(tmp_path, _run)
