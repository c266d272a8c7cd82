"""What every isolation of `ifc run` shares: the run's description, its helper processes, and the mediated
workspace mount they all sit on.

Both isolations (`microvm` in `vmm.launch`, `namespace` in `vmm.namespace`) start the same FUSE daemon
(`python -m ifc mount`, optionally serving the egress hook from the same monitor) and run the agent with the
same environment; only the wall between the agent and the host differs. Helpers are children that die with
this process even when it is killed with SIGKILL (`PR_SET_PDEATHSIG`), and mounts live in a private mount
namespace, so nothing of a run outlives it.

The mount daemon is also *supervised* (`Supervised`): if it (and with it the egress hook it serves) dies
during the run, or its event log fails, the agent only sees failures (ENOTCONN, EACCES, refused connections)
that look like ordinary ones, and decisions or log lines are missing from the report. `RunResult.failure`
then says so in one line and `ifc run` exits non-zero. How it learns: the daemon's health pipe
(`ifc.enforce.health`: the first log failure as it happens, a last word at a clean exit) and its wait status
(a death has no last word; the pipe's EOF dates it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ifc.enforce.fs import DENIALS_NAME
from ifc.enforce.health import Health, read_health
from ifc.enforce.runfiles import CA_FILE, ENV_FILE
from ifc.errors import UserError
from vmm import runtoken
from vmm.packagecfg import GUEST_TRUST, PackageConfig, host_roots

PR_SET_PDEATHSIG = 1
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
CARRIED_TAINT = "taint.json"  # beside a kept home: the taint it carries into the next run
PROXY_PORT = 3128  # where the agent reaches the egress hook, in the guest or the namespace
SANDBOX_TRUST = GUEST_TRUST  # the sandbox's trust store (its /etc is fresh)
TRUST_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT",
                   "NODE_EXTRA_CA_CERTS")

_libc = ctypes.CDLL(None, use_errno=True)


class LaunchError(UserError):
    """The sandbox could not be started or did not finish; the message says why, `help` what to do."""


@dataclass(frozen=True)
class Share:
    """A host directory shown inside the sandbox at `target`, outside the mediated workspace. Read-only ones
    carry code the agent runs (its layer); the sandbox cannot change them."""

    source: Path
    target: str  # an absolute path in the sandbox, not under /workspace, /usr or /ifc


@dataclass
class RunSpec:
    argv: list[str]
    workspace: Path
    run_dir: Path
    policy: Path
    agent: str | None = None
    proxy: tuple[str, int] | None = None
    egress: bool = False  # serve the egress hook from the FUSE daemon: one monitor for files and network
    upstream_ca: Path | None = None  # with `egress`: extra roots the hook trusts for terminated tunnels' servers
    hosts: Path | None = None  # with `egress`: `NAME ADDRESS...` lines the hook answers before the system resolver
    layers: tuple[Share, ...] = ()  # host directories the sandbox sees read-only (an agent's layer)
    home: Path | None = None  # a host directory the sandbox sees read-write as its home (`--keep-state`)
    # the agent's environment (its sentinels: made once the hook runs) -> what a fresh home starts with (a kept
    # `home` has its settings merged on the host instead: `ifc.agents.preset.Preset.home_files`)
    home_files: Callable[[dict[str, str]], dict[str, bytes]] | None = None
    token: str | None = None  # the session's token (default: one minted for the run, see `vmm.runtoken`)
    key: Path | None = None  # the public key that verifies `token` (default: `ifc caps`'s)
    memory_mb: int = 1024  # microVM only
    uid: int | None = None  # default: the workspace's owner, or 1000 when that is root
    gid: int | None = None
    boot_timeout: float | None = None  # microVM only; default: 60 s under TCG, 20 s under KVM
    shutdown_timeout: float = 15.0
    accel: str | None = None  # microVM only: kvm | tcg; default: probe (or $IFC_VM_ACCEL)
    env: dict[str, str] = field(default_factory=dict)
    packages: PackageConfig = field(default_factory=PackageConfig)  # the host's pip/npm config (vmm.packagecfg)
    aliases: dict[str, str] = field(default_factory=dict)  # NAME: OTHER, NAME gets OTHER's value (a sentinel)
    notice: object = None  # callable(str) for one-line notices (default: stderr)
    notices: list[str] = field(default_factory=list)  # said once the isolation is announced (package config)

    def say(self, line: str) -> None:
        (self.notice or (lambda text: print(text, file=sys.stderr, flush=True)))(line)

    def ids(self) -> tuple[int, int]:
        """The agent's uid and gid: as given, else the workspace's owner, else 1000 (never root)."""
        st = self.workspace.stat()
        uid, gid = (st.st_uid, st.st_gid) if st.st_uid != 0 else (1000, 1000)
        return (self.uid if self.uid is not None else uid), (self.gid if self.gid is not None else gid)


@dataclass
class RunResult:
    status: int
    isolation: str  # kvm | tcg | namespace
    boot_seconds: float  # start to the agent's command starting
    total_seconds: float
    failure: str | None = None  # a supervised helper died or failed during the run: why, in one line


# ------------------------------------------------------------------------------------------ processes and mounts

def die_with_parent(parent: int):
    """preexec_fn: SIGKILL this child when the process that started it dies (even by SIGKILL)."""

    def setup() -> None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


def check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise LaunchError(f"{what}: {os.strerror(err).lower()}",
                          "`ifc run` needs root (namespaces, FUSE mounts)" if err == errno.EPERM else None)


def private_mount_namespace() -> None:
    """Move this process into its own mount namespace, with every mount private (no propagation out)."""
    check(_libc.unshare(CLONE_NEWNS), "cannot create a mount namespace")
    check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "cannot make mounts private")


def mount(source: str, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None) -> None:
    check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                      data.encode() if data else None), f"cannot mount {source} on {target}")


def bind_readonly(source: str, target: str) -> None:
    mount(source, target, flags=MS_BIND | MS_REC)
    mount("none", target, flags=MS_REMOUNT | MS_BIND | MS_RDONLY)


def umount(target: str) -> None:
    _libc.umount2(target.encode(), MNT_DETACH)


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None, what: str, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise LaunchError(f"{what}: the helper exited with status {proc.returncode}"
                              + (f"; see {log}" if log else ""))
        if time.monotonic() > deadline:
            raise LaunchError(f"{what}: timed out after {timeout:.0f} s" + (f"; see {log}" if log else ""))
        time.sleep(0.01)


def is_fuse_mount(path: str) -> bool:
    from ifc.enforce.mount import is_stale, mounted_at

    return (mounted_at(path) or "").startswith("fuse") and not is_stale(path)


class Helpers:
    """The run's helper processes and mounts, undone in reverse order by `close()` (also after errors)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.me = os.getpid()
        self.procs: list[subprocess.Popen] = []
        self.mounts: list[str] = []
        self.supervised: list[Supervised] = []

    @classmethod
    def for_run(cls, spec: RunSpec) -> Helpers:
        """The run directory made, and this process in a private mount namespace (mounts die with the run)."""
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        private_mount_namespace()
        return cls(spec.run_dir)

    def spawn(self, argv: list[str], log: str, **kwargs) -> subprocess.Popen:
        """A child in its own session (terminal signals reach `ifc run`, which stops helpers in order)."""
        with open(self.run_dir / log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                    preexec_fn=die_with_parent(self.me), **kwargs)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        with uninterrupted():
            self._close()

    def _close(self) -> None:
        for helper in self.supervised:  # one already gone died before it was asked to stop: its watcher notes when
            if helper.proc.poll() is not None:  # (else, on a busy machine, the note could come after the asking)
                helper.join()
        asked = time.time()
        for helper in self.supervised:
            helper.stop_asked_at = asked
        for proc in reversed(self.procs):  # the FUSE daemon unmounts on SIGTERM
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for target in reversed(self.mounts):
            umount(target)
        for helper in self.supervised:
            helper.join()

    def failure(self) -> str | None:
        """After `close`: the first supervised helper's failure, in one line, or None."""
        return next(filter(None, (helper.problem() for helper in self.supervised)), None)


@contextlib.contextmanager
def uninterrupted():
    """Ctrl-C ignored inside (main thread only; the previous handler back after). Once the agent has ended, the
    user's terminal is cooked again, and a Ctrl-C meant for the agent (a second one, late) reaches `ifc run`:
    it must not cut the shutdown short (the mount daemon's last word, its final taint record for a kept home,
    the summary) or end `ifc run` by a signal in place of the agent's status."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Supervised:
    """A helper the run's guarantees rest on (the mount daemon, with the egress hook it may serve), watched
    through its health pipe (`ifc.enforce.health`) from a thread, and judged after `Helpers.close`.

    It *died during the run* when its pipe ended without a last word before `ifc run` asked it to stop (with
    one, it *stopped*: someone else's SIGTERM, no better for the agent). From then on the agent's file
    operations fail with ENOTCONN (the dead FUSE mount is never replaced by the backing directory, see
    `ifc.enforce.mount`) and its connections to the hook are refused — closed, but nothing of it is in the
    log. The agent is left to finish (it can reach nothing), and the run fails."""

    def __init__(self, what: str, proc: subprocess.Popen, health_fd: int, log: Path, network: bool,
                 say=None):
        """`say`: called with each notice the daemon sends (a secret without a value), as it arrives."""
        self.what, self.proc, self.log, self.network, self.say = what, proc, log, network, say
        self.health = Health()
        self.ended_at: float | None = None  # when the pipe ended: the daemon's exit or death
        self.stop_asked_at: float | None = None
        self._heard = threading.Condition()
        self._listening: dict[str, tuple[str, int]] = {}
        self._thread = threading.Thread(target=self._watch, args=(health_fd,), daemon=True)
        self._thread.start()

    def _watch(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            self.health = read_health(pipe, self.say, self._bound)
        with self._heard:
            self.ended_at = time.time()
            self._heard.notify_all()

    def _bound(self, health: Health) -> None:
        with self._heard:
            self._listening = dict(health.listening)
            self._heard.notify_all()

    def listening(self, names: tuple[str, ...], timeout: float) -> dict[str, tuple[str, int]]:
        """Where the egress hook's servers listen (it was asked for port 0), once it has said so for `names`;
        a LaunchError when the daemon ended or took longer than `timeout` seconds."""
        with self._heard:
            if not self._heard.wait_for(lambda: set(names) <= set(self._listening) or self.ended_at is not None,
                                        timeout):
                raise LaunchError(f"{self.what}: did not say where the egress hook listens within {timeout:.0f} s "
                                  f"— see {self.log}")
            if not set(names) <= set(self._listening):
                raise LaunchError(f"{self.what} ended before the egress hook listened — see {self.log}")
            return dict(self._listening)

    def start_failure(self, error: LaunchError) -> LaunchError:
        """`error` (the mount did not appear) with the daemon's own reason when it sent one before exiting."""
        if self.proc.poll() is None:
            return error
        self.join()  # it has exited: its pipe ends, and what it said is read
        if self.health.fatal is None:
            return error
        return LaunchError(f"{self.what} could not start: {self.health.fatal} — see {self.log}")

    def join(self) -> None:
        self._thread.join(5)  # the daemon has exited by now, so its pipe has ended

    def problem(self) -> str | None:
        code, health, see = self.proc.returncode, self.health, f"see {self.log}"
        how = "still running" if code is None else f"signal {-code}" if code < 0 else f"status {code}"
        early = self.ended_at is not None and (self.stop_asked_at is None or self.ended_at < self.stop_asked_at)
        if early:  # a clean exit nobody asked for (an outside SIGTERM) leaves the agent as cut off as a death
            lost = "file and network operations" if self.network else "file operations"
            return (f"{self.what} {'stopped' if health.finished else 'died'} during the run ({how}); decisions "
                    f"after {_clock(self.ended_at)} were not made: the agent's {lost} failed (not connected) and "
                    f"are not in the log — {see}")
        if health.first_log_failure is not None:
            first = health.first_log_failure
            return (f"{self.what} could not write the event log ({health.log_failures} failure(s), first at "
                    f"{_clock(first.ts)}: {first.reason}); the operations affected were denied and are missing "
                    f"from the log — {see}")
        if code != 0:
            return f"{self.what} failed when the run ended ({how}) — {see}"
        return None


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


# ------------------------------------------------------------------------------------------ the workspace

@dataclass(frozen=True)
class Workspace:
    mountpoint: Path  # the mediated view of the workspace (a FUSE mount)
    proxy: tuple[str, int] | None  # the egress proxy on the host, if any
    dns: tuple[str, int] | None  # the hook's DNS stub on the host (TCP and UDP), with --egress
    token: str | None  # the session's capability token (None: flows only, no agent)


def start_workspace(spec: RunSpec, helpers: Helpers) -> Workspace:
    """The FUSE daemon over the workspace at RUN_DIR/mnt; with `egress`, it also serves the hook (HTTP proxy
    and DNS stub on free host ports) from the same monitor, so a file read taints what may leave."""
    for line in spec.notices:
        spec.say(line)
    mnt = spec.run_dir / "mnt"
    mnt.mkdir(exist_ok=True)
    if is_fuse_mount(str(mnt)):  # a live mount there (another run, an `ifc mount`) would pass for ours below
        from ifc.enforce.mount import mounted_at

        raise LaunchError(f"`{mnt}` is already a FUSE mount ({mounted_at(str(mnt))}): another run or `ifc mount` "
                          "uses this run directory", "choose another --run-dir, or unmount it")
    argv = [sys.executable, "-m", "ifc", "mount", "--policy", str(spec.policy), "--run-dir", str(spec.run_dir),
            "--agent-ids", "{}:{}".format(*spec.ids())]
    if spec.agent:
        argv += ["--agent", spec.agent]
    proxy, dns = spec.proxy, None
    if spec.egress:  # any free ports: the daemon binds them and says which (a port picked here could be taken)
        argv += ["--egress", "127.0.0.1:0", "--egress-dns", "127.0.0.1:0"]
        upstream_ca = _upstream_roots(spec)
        if upstream_ca:
            argv += ["--upstream-ca", str(upstream_ca)]
        if spec.hosts:
            argv += ["--hosts", str(spec.hosts)]
    if spec.home is not None:  # the kept home holds what earlier runs held: the run starts there (ifc.monitor.carried)
        argv += ["--carry-taint", str(spec.home.parent / CARRIED_TAINT)]
    run = runtoken.prepare(spec.run_dir, spec.policy, spec.agent, spec.token, spec.key)
    health, health_w = os.pipe()
    fds: tuple[int, ...] = (health_w,)
    argv += ["--health-fd", str(health_w)]
    if run is not None:
        fds += (runtoken.pipe_to(run.token),)
        argv += ["--token", f"@/dev/fd/{fds[-1]}"] + (["--key", str(run.key)] if run.key else [])
    argv += [str(spec.workspace), str(mnt)]
    try:
        daemon = helpers.spawn(argv, "mount.log", pass_fds=fds)
    except BaseException:
        os.close(health)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    what = "the mount daemon (and the egress hook it serves)" if spec.egress else "the mount daemon"
    supervised = Supervised(what, daemon, health, spec.run_dir / "mount.log", spec.egress,
                            say=lambda text: spec.say(f"ifc run: {text}"))
    helpers.supervised.append(supervised)
    try:
        wait_for(lambda: is_fuse_mount(str(mnt)), 60, daemon, "the workspace mount", spec.run_dir / "mount.log")
    except LaunchError as exc:
        raise supervised.start_failure(exc) from None
    helpers.mounts.append(str(mnt))
    if spec.egress:  # the hook listens before the mount is served: its lines are in the pipe by now
        bound = supervised.listening(("http", "dns"), 10)
        proxy, dns = bound["http"], bound["dns"]
    return Workspace(mnt, proxy, dns, run.token if run else None)


def _upstream_roots(spec: RunSpec) -> Path | None:
    """What the hook trusts besides the system's roots: `--upstream-ca`, plus the CAs the host's package
    configuration names (a private registry a secret is bound to is served through a terminated tunnel, and
    the hook must verify it as the user's own npm or pip would)."""
    if not spec.packages.cas:
        return spec.upstream_ca
    combined = spec.run_dir / "upstream-ca.pem"
    extra = spec.upstream_ca.read_bytes() + b"\n" if spec.upstream_ca else b""
    combined.write_bytes(extra + b"".join(spec.packages.cas))
    return combined


def remove_mountpoint(workspace: Workspace | None) -> None:
    if workspace is not None:
        with contextlib.suppress(OSError):
            workspace.mountpoint.rmdir()


def agent_env(spec: RunSpec, workspace: Workspace, tty: bool, proxy_url: str | None) -> dict[str, str]:
    """The agent's whole environment: nothing of the host's but TERM; where to read why something was refused
    (IFC_DENIALS); the proxy (when there is one) with the
    run's token in its URL, so every HTTP client presents it, and the token as IFC_TOKEN; with `--egress`,
    the secrets' sentinels and the trust store that holds the run's CA (see `trust_bundle`)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "TERM": os.environ.get("TERM", "xterm") if tty else "dumb", "PWD": "/workspace", "HOME": "/home/agent",
           "IFC_DENIALS": f"/workspace/{DENIALS_NAME}"}  # why an operation was refused (ifc.enforce.fs)
    if workspace.token:
        env["IFC_TOKEN"] = workspace.token
        if proxy_url and spec.proxy is None:  # our own hook verifies it; an external proxy gets no credential
            proxy_url = proxy_url.replace("http://", f"http://ifc:{workspace.token}@", 1)
    if proxy_url:
        env.update(HTTP_PROXY=proxy_url, HTTPS_PROXY=proxy_url, http_proxy=proxy_url, https_proxy=proxy_url,
                   NO_PROXY="localhost,127.0.0.1", no_proxy="localhost,127.0.0.1")
    if spec.egress:
        env.update(_sentinels(spec.run_dir / ENV_FILE))
        if (spec.run_dir / CA_FILE).exists():  # every common client's way to be told where the roots are
            env.update({name: SANDBOX_TRUST for name in TRUST_VARIABLES})
    env.update(spec.packages.env)
    env.update(spec.env)
    env.update({name: env[other] for name, other in spec.aliases.items() if other in env})
    return env


def _sentinels(path: Path) -> dict[str, str]:
    """The secrets' `NAME=sentinel` lines the hook wrote (its proxy settings are for a bare process: skip)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in lines if "=" in line)
    return {name: value for name, value in pairs if name.lower() not in ("http_proxy", "https_proxy")}


def trust_bundle(spec: RunSpec) -> bytes | None:
    """What the sandbox's SANDBOX_TRUST holds: the host's public roots (so real HTTPS endpoints verify), the
    CAs the host's package configuration names (a private index's), and, with `--egress`, the run's CA (so
    the hook's terminated tunnels verify). None when there is none of them."""
    parts = [roots] if (roots := host_roots()) else []
    if spec.packages.cas:
        parts.append(b"# CAs named by the host's package configuration\n" + b"".join(spec.packages.cas))
    if spec.egress:
        with contextlib.suppress(OSError):
            parts.append(b"# ifc-sandbox run CA (RUN_DIR/ca.pem)\n" + (spec.run_dir / CA_FILE).read_bytes())
    return b"\n".join(parts) if parts else None
