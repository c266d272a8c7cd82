"""`ifc run` in a real microVM (TCG here): status and output come back, only the workspace is visible,
writes land through FUSE, a denied read is EACCES in the guest and logged with the guest command that made
it, no network, nothing survives `kill -9` of `ifc run`, and a terminal passes through (window size, resize,
Ctrl-C). One boot per test (~3-6 s under TCG)."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import helper_failure_cases
import hostcfg_cases
import pytest
import sandbox_cases
import workload_cases

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def _skip_reason() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if os.geteuid() != 0:
        return "ifc run needs root"
    return None


if _skip_reason():
    pytest.skip(_skip_reason(), allow_module_level=True)


@pytest.fixture
def workspace(tmp_path):
    return sandbox_cases.tester_workspace(tmp_path)


@pytest.fixture
def vm_run(image_env):
    """`sandbox_cases`' runner: `sh -c script` in a microVM."""

    def run(ws, policy, run_dir, script, extra, env):
        return ifc_run({**image_env, **env}, ws, policy, run_dir, "sh", "-c", script, extra=extra)

    return run


def ifc_run(env, ws, policy, run_dir, *cmd, extra=(), timeout=120, **kwargs):
    argv = [sys.executable, "-m", "ifc", "run", "--policy", str(policy), "--workspace", str(ws),
            "--run-dir", str(run_dir), *extra, "--", *cmd]
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=timeout, **kwargs)


def test_status_and_output_come_back(image_env, workspace):
    ws, policy, run_dir = workspace
    proc = ifc_run(image_env, ws, policy, run_dir, "sh", "-c", "echo hi; exit 3")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "hi\n"
    assert f"ifc report {run_dir}" in proc.stderr
    for name in ("events.db", "policy.flow", "console.log", "control.log"):
        assert (run_dir / name).exists(), name


def test_usr_and_the_workspace_are_nosuid_and_nodev_in_the_guest(image_env, workspace):
    """Issue 13: the host's /usr holds setuid-root programs; over virtiofs it came without nosuid/nodev (the
    namespace mode had them). Neither share may grant privileges or open devices."""
    ws, policy, run_dir = workspace
    proc = ifc_run(image_env, ws, policy, run_dir, "sh", "-c", "grep -E ' /(usr|workspace) ' /proc/mounts")
    assert proc.returncode == 0, proc.stderr
    mounts = {line.split()[1]: set(line.split()[3].split(",")) for line in proc.stdout.splitlines()}
    assert set(mounts) == {"/usr", "/workspace"}, proc.stdout
    assert all({"nosuid", "nodev"} <= options for options in mounts.values()), mounts
    assert "ro" in mounts["/usr"]


def test_the_agent_can_open_ptys(image_env, workspace):
    """Agents run their commands in ptys (aider's test command failed with "out of pty devices": the guest had no
    devpts); without a terminal of its own, the agent opens one and the guest names it under /dev/pts."""
    ws, policy, run_dir = workspace
    script = "import os, pty; m, s = pty.openpty(); os.write(m, b'x\\n'); print(os.ttyname(s), os.read(s, 2))"
    proc = ifc_run(image_env, ws, policy, run_dir, "python3", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "/dev/pts/0 b'x\\n'", proc.stdout


def test_only_the_workspace_is_visible_and_writes_land(image_env, workspace):
    ws, policy, run_dir = workspace
    script = ("id -u; test ! -e /root && echo no-root; test ! -e /etc/shadow && echo no-shadow; "
              "ls /home; cat src/main.py; echo made > src/new.txt; pwd")
    proc = ifc_run(image_env, ws, policy, run_dir, "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert proc.stdout.split("\n") == ["1000", "no-root", "no-shadow", "agent", "print('hello')", "/workspace", ""]
    assert (ws / "src" / "new.txt").read_text() == "made\n"
    assert (ws / "src" / "new.txt").stat().st_uid == 1000


def test_denied_read_is_eacces_and_logged(image_env, workspace):
    ws, policy, run_dir = workspace
    proc = ifc_run(image_env, ws, policy, run_dir, "sh", "-c", "cat .env; echo status=$?")
    assert "Permission denied" in proc.stdout
    assert "sk-secret" not in proc.stdout
    assert "status=1" in proc.stdout
    db = sqlite3.connect(run_dir / "events.db")
    denied = db.execute("SELECT op, target FROM events WHERE allowed = 0").fetchall()
    assert ("read", ".env") in denied, denied
    assert "denial" in proc.stderr
    # the control channel named the guest command: the report matches it to the denial
    from ifc.report.load import load_run

    (denial,) = [d for d in load_run(run_dir).denials if d.target == ".env"]
    assert denial.guest[0] == "cat .env", denial.guest
    assert "cat .env" in proc.stderr  # and `ifc run`'s summary says it


def test_a_terminal_passes_through(image_env, workspace):
    """A TUI agent's needs: the window size at start and after a resize, and Ctrl-C as SIGINT in the guest."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    ws, policy, run_dir = workspace
    script = ('stty size; trap "echo resized; stty size" WINCH; trap "echo interrupted; exit 7" INT; echo armed; '
              "while :; do sleep 0.1; done")
    argv = [sys.executable, "-m", "ifc", "run", "--policy", str(policy), "--workspace", str(ws),
            "--run-dir", str(run_dir), "--", "sh", "-c", script]

    def size(fd: int, rows: int, cols: int) -> None:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of 40x100 before `ifc run` starts
        size(0, 40, 100)
        os.chdir(ROOT)
        os.execve(sys.executable, argv, image_env)
    seen = b""

    def until(marker: bytes, timeout: float = 90) -> bool:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
        return marker in seen

    try:
        assert until(b"armed"), seen
        assert b"40 100" in seen, seen
        size(fd, 30, 90)
        os.kill(pid, signal.SIGWINCH)
        assert until(b"30 90", 30), seen
        os.write(fd, b"\x03")
        assert until(b"interrupted", 30), seen
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 7, seen
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


def test_ctrl_c_stops_a_run_whose_output_is_piped(image_env, workspace):
    """A terminal on stdin but a pipe on stdout (`ifc run ... | less`) is no passthrough: Ctrl-C stops the run
    (and it cleans up) instead of becoming a byte for the guest."""
    import pty
    import select

    ws, policy, run_dir = workspace
    command = shlex.join([sys.executable, "-m", "ifc", "run", "--policy", str(policy), "--workspace", str(ws),
                          "--run-dir", str(run_dir), "--", "sh", "-c", "echo started; sleep 60"])
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execve("/bin/sh", ["sh", "-c", f"{command} | cat"], image_env)
    seen = b""
    deadline = time.monotonic() + 90
    while b"started" not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    try:
        assert b"started" in seen, seen
        os.write(fd, b"\x03")
        deadline = time.monotonic() + 20
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            assert time.monotonic() < deadline, "Ctrl-C did not stop the run"
            time.sleep(0.1)
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    deadline = time.monotonic() + 10
    while _leftovers(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _leftovers(run_dir) == []


def test_no_network(image_env, workspace):
    """Without --egress nothing leaves: TCP and UDP to the host (slirp's 10.0.2.2 is the host's loopback) never
    arrive where the host listens, the internet and slirp's own DNS (10.0.2.3) do not answer."""
    import socket

    ws, policy, run_dir = workspace
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(1)
        tcp.settimeout(0.5)
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(0.5)
        nc = "/.ifc/busybox nc -w 3"
        (ws / "src" / "udp.py").write_text(
            "import socket, sys\n"
            "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('10.0.2.2', int(sys.argv[1])))\n")
        send_udp = f"/usr/bin/python3 src/udp.py {udp.getsockname()[1]}; echo udp-sent=$?"
        script = (f"{nc} 10.0.2.2 {tcp.getsockname()[1]} </dev/null; echo host=$?; {nc} 1.1.1.1 80 </dev/null; "
                  "echo internet=$?; /.ifc/busybox nslookup -timeout=2 example.com 10.0.2.3 >/dev/null 2>&1; "
                  f"echo slirp-dns=$?; {send_udp}; wc -c </etc/resolv.conf")
        proc = ifc_run(image_env, ws, policy, run_dir, "/.ifc/busybox", "sh", "-c", script)
        for what, sock in (("TCP", tcp), ("UDP", udp)):
            with pytest.raises(TimeoutError):
                sock.accept() if what == "TCP" else sock.recvfrom(16)
                pytest.fail(f"{what} from the guest reached the host")
    out = proc.stdout
    assert "host=1" in out and "internet=1" in out and "slirp-dns=1" in out and "udp-sent=0" in out, out
    assert out.strip().endswith("0")  # no resolver configured


def _leftovers(run_dir: Path) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(run_dir) in cmdline or ("ifc-vm-" in cmdline and "virtiofsd" in cmdline):
            found.append(f"{pid}: {cmdline}")
    found += [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(run_dir) in line]
    return found


def test_kill_9_leaves_nothing(image_env, workspace):
    ws, policy, run_dir = workspace
    argv = [sys.executable, "-m", "ifc", "run", "--policy", str(policy), "--workspace", str(ws),
            "--run-dir", str(run_dir), "--", "sleep", "60"]
    proc = subprocess.Popen(argv, env=image_env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while "ready" not in (run_dir / "control.log").read_text() if (run_dir / "control.log").exists() else True:
        assert proc.poll() is None, "ifc run exited early"
        assert time.monotonic() < deadline, "the guest did not become ready"
        time.sleep(0.1)
    assert _leftovers(run_dir), "the run's processes should be visible while it runs"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while _leftovers(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _leftovers(run_dir) == []
    assert (ws / "src" / "main.py").read_text() == "print('hello')\n"  # the backing directory is intact
    assert not (run_dir / "vm" / "usr").is_mount()  # the /usr bind lived only in the run's mount namespace


def test_a_file_read_in_the_guest_taints_what_may_leave_through_the_egress_hook(vm_run, tmp_path):
    from ifc.report.load import load_run

    run_dir = sandbox_cases.egress_taint(tmp_path, vm_run)
    (connect,) = [d for d in load_run(run_dir).denials if d.op == "connect"]
    assert connect.guest[0].startswith("curl -s --noproxy"), connect.guest  # the command, not the whole VM


def test_no_laundering_by_a_derived_token_or_a_stream_opened_while_clean(vm_run, tmp_path):
    sandbox_cases.no_laundering(tmp_path, vm_run)


def test_writes_through_descriptors_and_mappings_opened_clean_float_the_label(vm_run, tmp_path):
    sandbox_cases.old_descriptors_float(tmp_path, vm_run, shared_mmap=False)


def test_dns_names_made_after_a_secret_read_never_leave(vm_run, tmp_path):
    sandbox_cases.dns_names_stay(tmp_path, vm_run)


def test_labels_floated_in_one_run_hold_in_the_next(vm_run, tmp_path):
    sandbox_cases.labels_outlive_the_run(tmp_path, vm_run)


def test_a_killed_mount_daemon_fails_the_run_and_says_why(vm_run, workspace):
    """The microVM shares the namespace path's supervision (`vmm.sandbox.Supervised`): one case is enough."""
    helper_failure_cases.killed_mount_daemon(vm_run, *workspace)


def test_a_dead_virtiofsd_stops_the_run_instead_of_hanging_it(image_env, workspace):
    """The workspace's virtiofsd dying mid-run left the guest's requests to it waiting for ever (a benchmark's
    `ifc run` hung 19 minutes): the run is stopped at once, fails, and says which share's server died."""
    ws, policy, run_dir = workspace
    killed: list[int] = []

    def kill() -> None:
        source = f"source={run_dir / 'mnt'}".encode()
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError, IndexError, ValueError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if b"virtiofsd" in argv[0] and source in argv:
                    started = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[19])
                    found.append((started, int(entry)))
        # oldest first: virtiofsd forks its sandboxed server, and a parent outliving its killed child exits with
        # status 1 (after a PID wrap-around the child can have the lower number)
        for _started, pid in sorted(found):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = helper_failure_cases.when_ready(ws, kill)
    proc = ifc_run(image_env, ws, policy, run_dir, "sh", "-c",
                   f"{helper_failure_cases.READY}; while cat src/main.py >/dev/null; do sleep 0.05; done")
    killer.join()
    assert killed, proc.stderr
    assert proc.returncode == 125, proc.stderr
    assert "ifc run: error: virtiofsd for the workspace exited during the run (signal 9)" in proc.stderr
    assert _leftovers(run_dir) == []
    assert (ws / "src" / "main.py").read_text() == "print('hello')\n"


def test_a_secret_whose_variable_is_unset_costs_only_the_sends_that_need_it(vm_run, tmp_path):
    """The helper-start cases share `vmm.sandbox.start_workspace` with the namespaces; this one crosses the VM."""
    helper_failure_cases.unset_secret(vm_run, tmp_path)


def test_every_status_passes_through_the_hook_exactly(vm_run, tmp_path):
    sandbox_cases.statuses_pass_through(tmp_path, vm_run)


def test_the_runs_own_token_is_presented_and_keeps_one_subject(vm_run, tmp_path):
    sandbox_cases.run_token(tmp_path, vm_run)


def test_https_secrets_are_sentinels_in_the_guest_and_real_only_at_the_bound_server(vm_run, tmp_path):
    sandbox_cases.https_sentinel(tmp_path, vm_run)


def test_pip_installs_from_the_index_named_only_in_the_hosts_pip_config(vm_run, tmp_path):
    sandbox_cases.host_package_config(tmp_path, vm_run)


def test_normal_work_under_an_ifc_init_policy_has_no_denials_in_the_guest(image_env, tmp_path):
    from test_init import normal_work

    normal_work(tmp_path, "mixed", "microvm", {k: v for k, v in image_env.items() if k == "XDG_CACHE_HOME"})


def test_git_and_python_work_in_a_git_workspace(vm_run, workspace):
    sandbox_cases.git_and_python(workspace, vm_run)


def test_set_id_programs_the_agent_edits_are_set_id_no_longer(vm_run, workspace):
    sandbox_cases.set_id_bits_cleared_on_write(workspace, vm_run)


def test_a_root_owned_checkout_is_the_agents_own(vm_run, tmp_path):
    sandbox_cases.root_owned_checkout(tmp_path, vm_run)


def test_everyday_work_under_the_default_policy(image_env, tmp_path):
    """tests/workload_cases.py in one boot: git, clones, gc, venv + pip, pytest, tar, rsync, sqlite, rm -rf in a
    root-owned checkout under the shipped default policy; no denial but the deliberate one, which $IFC_DENIALS
    explains in the guest."""
    work = workload_cases.checkout(tmp_path)
    proc = ifc_run(image_env, work.ws, ROOT / "policies" / "default.flow", tmp_path / "run", "sh", "-c",
                   workload_cases.WORKLOAD, timeout=900)
    workload_cases.check(proc, tmp_path / "run", work)


def test_after_untrusted_input_no_host_config_is_written_and_the_owners_git_runs_nothing(vm_run, tmp_path):
    """Issue 13's host-executed configuration in the microVM: after an untrusted fetch, core.fsmonitor, a hook,
    an attributes filter, `.envrc` and an editor task are refused; from the host, `git status` and `git commit`
    run nothing."""
    hostcfg_cases.untrusted_cannot_arm_the_host(tmp_path, vm_run)
def test_an_agent_that_reads_env_keeps_its_model_and_the_real_key_reaches_only_its_api(vm_run, tmp_path):
    sandbox_cases.secret_files_survive(tmp_path, vm_run)
