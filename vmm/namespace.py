"""`ifc run --isolation namespace`: the agent in Linux namespaces instead of a microVM, for machines that
cannot run one. WEAKER: the agent shares the host's kernel, so a kernel exploit escapes; `run()` says so.

What `run()` does, in order:

1. **A private mount namespace** for this process and **the FUSE daemon** over the workspace (optionally
   serving the egress hook), exactly as the microVM path does (`vmm.sandbox`).
2. **The namespace init** (`vmm.namespace_init.init`), forked as PID 1 of a new PID namespace: new mount,
   network, UTS and IPC namespaces, a fresh root with the host's /usr read-only and the FUSE mount at
   /workspace, then the agent as the unprivileged uid in a user namespace of its own, with no capabilities.
   It dies with this process (PR_SET_PDEATHSIG), and the kernel kills its PID namespace with it.
3. **Relays.** The network namespace has only `lo`; the init hands over listening sockets it opened there
   (127.0.0.1:3128 for the hook or `--proxy`, 127.0.0.1:53 TCP and UDP for the hook's DNS stub), and this
   process relays each connection to the host-side address. Nothing else is reachable. Before forwarding a
   byte, a relay records which sandbox process holds the client's socket (`vmm.sockowner`) under its own
   address on the host, the peer the hook logs (`ifc.monitor.egressowners`): the report names the command
   behind each egress denial.
4. **The terminal.** When stdin and stdout are a terminal, the agent gets a fresh pty of its own (its
   controlling terminal: raw mode, window size and Ctrl-C work) and this process relays the host terminal,
   set raw, to its master; the agent never holds the host terminal, so it cannot push input into the user's
   shell. Without a terminal the agent inherits stdin, stdout and stderr as they are.

Unlike the microVM, the FUSE daemon sees the agent's real host pids, so per-process subjects (`IFC_TOKEN`
in a process's environment, `ifc.enforce.identity`) work natively.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import sqlite3
import termios
import threading
import time
import tty as ttymod
from dataclasses import dataclass
from pathlib import Path

from ifc.monitor.egressowners import EgressOwnerLog
from vmm.namespace_init import CLONE_NEWPID, Plan, init, libc
from vmm.sandbox import (
    Helpers,
    LaunchError,
    RunResult,
    RunSpec,
    Workspace,
    agent_env,
    check,
    remove_mountpoint,
    start_workspace,
    trust_bundle,
)
from vmm.sockowner import owner, peer_text

NOTICE = ("ifc run: WEAKER ISOLATION: namespaces, not a VM: the agent shares the host's kernel, so a kernel "
          "exploit escapes the sandbox (the microVM's does not); files and network are mediated as usual")
PROXY_URL = "http://127.0.0.1:3128"


def run(spec: RunSpec) -> RunResult:
    """Run `spec.argv` in the namespaces; the command's exit status. Cleans up on any exit."""
    started = time.monotonic()
    spec.say(NOTICE)
    run_dir = spec.run_dir
    uid, gid = spec.ids()
    helpers = Helpers.for_run(spec)
    root = run_dir / "root"
    workspace: Workspace | None = None
    pid = 0
    relays: list[socket.socket] = []
    owners: EgressOwnerLog | None = None
    try:
        workspace = start_workspace(spec, helpers)
        root.mkdir(exist_ok=True)
        tty = os.isatty(0) and os.isatty(1)
        env = agent_env(spec, workspace, tty, PROXY_URL if workspace.proxy else None)
        plan = Plan(argv=spec.argv, env=env, uid=uid, gid=gid, root=str(root), workspace=str(workspace.mountpoint),
                    tty=tty, proxy=workspace.proxy is not None, dns=workspace.dns is not None,
                    trust=trust_bundle(spec), etc=spec.packages.files,
                    layers=tuple((str(s.source), s.target) for s in spec.layers),
                    home=str(spec.home) if spec.home else None,
                    home_files=spec.home_files(env) if spec.home_files else {})
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with ours, theirs:
            pid = fork_init(plan, theirs, ours)
            theirs.close()
            handed = receive(ours, run_dir)
            boot_seconds = time.monotonic() - started
            owners = EgressOwnerLog(run_dir / "events.db") if workspace.proxy or workspace.dns else None
            relays = relay_network(handed, workspace, Attribution(pid, owners) if owners else None)
            with terminal(handed.get("pty")):
                ours.send(b"go")  # the agent starts only now, its terminal sized and the host's raw
                ours.close()
                _, status = os.waitpid(pid, 0)
        pid = 0
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            raise LaunchError(f"the namespace init was killed by signal {-code}")
        result = RunResult(code, "namespace", boot_seconds, time.monotonic() - started)
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)  # the kernel kills the rest of its PID namespace
            os.waitpid(pid, 0)
        for sock in relays:  # wakes the relay threads, which end; the network namespace goes with them
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if owners is not None:
            owners.close()
        helpers.close()
        with contextlib.suppress(OSError):
            root.rmdir()  # the tmpfs on it lived only in the init's mount namespace
        remove_mountpoint(workspace)
    result.failure = helpers.failure()
    return result


def fork_init(plan: Plan, theirs: socket.socket, ours: socket.socket) -> int:
    """Fork `init` as PID 1 of a new PID namespace; this process's later children stay in its own."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY)
    try:
        check(libc.unshare(CLONE_NEWPID), "cannot create a PID namespace")
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                init(plan, theirs)
            finally:
                os._exit(125)  # never unwind into the parent's code
    finally:
        check(libc.setns(own, CLONE_NEWPID), "cannot return to the host's PID namespace")
        os.close(own)
    return pid


def receive(ours: socket.socket, run_dir: Path, timeout: float = 30.0) -> dict[str, int]:
    """The init's `ready NAME...` and its descriptors, or its one-line error."""
    ours.settimeout(timeout)
    try:
        message, fds, _, _ = socket.recv_fds(ours, 4096, 8)
    except TimeoutError:
        raise LaunchError(f"the namespace init was not ready within {timeout:.0f} s") from None
    words = message.decode(errors="replace").split(" ", 1)
    names = words[1].split() if words[0] == "ready" and len(words) > 1 else []
    if words[0] == "ready" and len(names) == len(fds):
        return dict(zip(names, fds, strict=True))
    for fd in fds:
        os.close(fd)
    if words[0] == "error":
        raise LaunchError(f"the namespace could not be set up: {words[1]}")
    raise LaunchError("the namespace init exited before it was ready", f"see {run_dir / 'mount.log'}")


# ------------------------------------------------------------------------------------------ network relays

@dataclass(frozen=True)
class Attribution:
    """Where a relay records who made a connection: the init's pid (its network namespace is the sandbox's)
    and the run's log."""

    ns_pid: int
    log: EgressOwnerLog

    def record(self, proto: str, client: tuple[str, int], relay_end: socket.socket) -> None:
        """Record the sandbox process holding `client` (its address inside) under `relay_end`'s host address.
        Attribution only: a failure loses the name, never the connection."""
        try:
            found = owner(self.ns_pid, proto, client[:2])
            if found is not None:
                self.log.record(peer_text(relay_end), found.pid, found.argv)
        except (OSError, sqlite3.Error, ValueError):
            pass


def relay_network(handed: dict[str, int], workspace: Workspace,
                  attribution: Attribution | None = None) -> list[socket.socket]:
    """Serve the listening sockets the init opened inside: each connection to the host-side address."""
    targets = {"proxy": workspace.proxy, "dns-tcp": workspace.dns, "dns-udp": workspace.dns}
    socks = []
    for name, target in targets.items():
        if name in handed:
            kind = socket.SOCK_DGRAM if name == "dns-udp" else socket.SOCK_STREAM
            socks.append(socket.socket(socket.AF_INET, kind, fileno=handed[name]))
            serve = serve_datagrams if kind == socket.SOCK_DGRAM else serve_connections
            threading.Thread(target=serve, args=(socks[-1], target, attribution), daemon=True).start()
    return socks


def serve_connections(listener: socket.socket, target: tuple[str, int], attribution: Attribution | None) -> None:
    while True:
        try:
            conn, client = listener.accept()
        except OSError:  # shut down at the end of the run
            return
        threading.Thread(target=splice, args=(conn, client, target, attribution), daemon=True).start()


def splice(conn: socket.socket, client: tuple[str, int], target: tuple[str, int],
           attribution: Attribution | None) -> None:
    with conn:
        try:
            upstream = socket.create_connection(target, timeout=10)
        except OSError:
            return  # the agent sees the connection closed: the hook is gone
        with upstream:
            if attribution is not None:  # before the hook gets a byte, so before it can log a decision
                attribution.record("tcp", client, upstream)
            upstream.settimeout(None)
            back = threading.Thread(target=copy, args=(upstream.recv, conn), daemon=True)
            back.start()
            copy(conn.recv, upstream)
            back.join()


def copy(read, dst: socket.socket) -> None:
    """Bytes from `read` to `dst` until EOF or an error, then end `dst`'s writing side."""
    try:
        while data := read(65536):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def serve_datagrams(sock: socket.socket, target: tuple[str, int], attribution: Attribution | None) -> None:
    while True:
        try:
            query, client = sock.recvfrom(65535)
        except OSError:
            return
        if not query:  # shut down at the end of the run (an empty datagram is no query either)
            return
        threading.Thread(target=answer, args=(sock, query, client, target, attribution), daemon=True).start()


def answer(sock: socket.socket, query: bytes, client, target: tuple[str, int],
           attribution: Attribution | None) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as upstream:
        upstream.settimeout(5)
        try:
            upstream.bind((target[0], 0))
            if attribution is not None:
                attribution.record("udp", client, upstream)
            upstream.sendto(query, target)
            sock.sendto(upstream.recv(65535), client)
        except OSError:
            pass  # the resolver retries or times out, as with a lost datagram


# ------------------------------------------------------------------------------------------ the terminal

@contextlib.contextmanager
def terminal(master: int | None):
    """With a pty: the host terminal raw, relayed both ways, its size followed; restored on any exit."""
    if master is None:
        yield
        return
    saved = termios.tcgetattr(0)
    termios.tcsetattr(master, termios.TCSANOW, saved)  # on a master: the agent's side starts like ours

    def follow_size(*_) -> None:  # TIOCSWINSZ on the master signals SIGWINCH to the agent's foreground
        fcntl.ioctl(master, termios.TIOCSWINSZ, fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))

    follow_size()
    previous = signal.signal(signal.SIGWINCH, follow_size)
    done = threading.Event()
    output = threading.Thread(target=pump, args=(master, 1, done), daemon=True)
    typing = threading.Thread(target=pump, args=(0, master, done), daemon=True)
    ttymod.setraw(0)  # before the first byte is relayed: cooked, the host would add a second CR to each line
    output.start()
    typing.start()
    try:
        yield
        output.join(2)  # the agent's last output (EIO once every process holding the pty is gone)
    finally:
        done.set()
        typing.join(1)  # before the master's descriptor can be reused
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)
        os.close(master)


def pump(src: int, dst: int, done: threading.Event) -> None:
    """Bytes from `src` to `dst` until EOF, an error (EIO: the pty's last holder is gone) or `done`."""
    try:
        while not done.is_set():
            if not select.select([src], [], [], 0.1)[0]:
                continue
            data = os.read(src, 65536)
            if not data:
                return
            while data:
                data = data[os.write(dst, data):]
    except OSError:
        pass
