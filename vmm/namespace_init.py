"""Inside `ifc run --isolation namespace`: PID 1 of the run's PID namespace, and the agent it starts.

`vmm.namespace` forks `init()` as the first process of a fresh PID namespace. As root in the host's user
namespace it unshares mount, network, UTS and IPC namespaces, builds the agent's root the way the microVM's
guest init does (a tmpfs with the host's /usr read-only, the mediated FUSE mount at /workspace, a fresh /etc,
/tmp, /proc, a minimal /dev), pivots into it and drops the old root, brings up `lo`, and opens what the
parent relays (the hook's listening sockets on 127.0.0.1, the pty master) to hand them over a socket pair.
Then it forks the agent, reaps every child, and exits with the agent's status; when it exits (or is killed
because `ifc run` died: PR_SET_PDEATHSIG), the kernel kills everything left in the namespace.

The agent process creates a user namespace last, while still root, mapping only the agent's uid and gid.
The other namespaces belong to the host's user namespace, so no capability inside the new one could change
the agent's mounts, network or hostname; the new one exists so that `max_user_namespaces` can be set to 0
in it: the agent cannot create user namespaces of its own (`unshare -r`), which is where most unprivileged
kernel attack surface lives. It then drops every capability (bounding set included), takes the agent's
uid and gid, sets PR_SET_NO_NEW_PRIVS and execs the command in /workspace.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import platform
import signal
import socket
import struct
import termios
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from vmm.sandbox import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_RDONLY,
    MS_REMOUNT,
    PR_SET_PDEATHSIG,
    PROXY_PORT,
    SANDBOX_TRUST,
    LaunchError,
    bind_readonly,
    check,
    mount,
)

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_NOEXEC = 8
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 24, 47, 4
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
TIOCSPTLCK, TIOCGPTPEER = 0x40045431, 0x5441
DNS_PORT = 53
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Plan:
    """What the init needs to know, fixed before the fork."""

    argv: list[str]
    env: dict[str, str]
    uid: int
    gid: int
    root: str  # an empty directory to build the agent's root on (in the run dir)
    workspace: str  # the FUSE mount (RUN_DIR/mnt)
    tty: bool  # give the agent a fresh pty (the parent relays the host terminal to its master)
    proxy: bool  # listen on 127.0.0.1:3128 inside for the egress hook
    dns: bool  # listen on 127.0.0.1:53 (TCP and UDP) inside for the hook's DNS stub
    trust: bytes | None  # the sandbox's trust store (`vmm.sandbox.trust_bundle`)
    etc: dict[str, bytes] = field(default_factory=dict)  # more files under /etc, root's and read-only (packagecfg)
    layers: tuple[tuple[str, str], ...] = ()  # (host directory, path inside): bound read-only
    home: str | None = None  # a host directory bound read-write at /home/agent (kept agent state)
    home_files: dict[str, bytes] = field(default_factory=dict)  # without `home`: what the fresh home starts with


def init(plan: Plan, ctl: socket.socket) -> NoReturn:
    """PID 1: build the namespace, report `ready` (or `error MESSAGE`) on `ctl`, run the agent, reap."""
    try:
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "cannot tie the init to `ifc run`")
        os.setsid()  # no terminal signals from the host's session
        check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC), "cannot create namespaces")
        build_root(plan)
        check(libc.sethostname(b"sandbox", 7), "cannot set the hostname")
        loopback_up()
        handed, slave = open_handed(plan)
        # `ready NAME...` with those descriptors (SCM_RIGHTS, in that order); this fails (EPIPE) when
        # `ifc run` died before PR_SET_PDEATHSIG took effect, and then nothing runs
        socket.send_fds(ctl, [" ".join(["ready", *handed]).encode()], list(handed.values()))
    except Exception as exc:  # one line back to the parent, which raises it as a LaunchError
        with contextlib.suppress(OSError):
            ctl.send(b"error " + (exc.message if isinstance(exc, LaunchError) else str(exc)).encode())
        os._exit(125)
    for fd in handed.values():
        os.close(fd)
    # `go` once `ifc run` has set up the relays and the terminal (size, raw mode): the agent's first output and
    # its first `stty size` see them; anything else (`ifc run` died: EOF) and nothing runs
    go = ctl.recv(16)
    ctl.close()
    if go != b"go":
        os._exit(125)
    os._exit(reap(start_agent(plan, slave)))


# ------------------------------------------------------------------------------------------ the root

def build_root(plan: Plan) -> None:
    """The agent's root at plan.root, as the guest init builds it; then pivot into it and drop the old one."""
    r = plan.root
    mount("root", r, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for d in ("usr", "workspace", "proc", "dev", "tmp", "etc", "run", "home/agent", "var/tmp"):
        os.makedirs(f"{r}/{d}")
    bind_readonly("/usr", f"{r}/usr")
    mount("none", f"{r}/usr", flags=MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for d in ("bin", "lib", "lib64", "sbin"):
        if os.path.exists(f"/usr/{d}"):
            os.symlink(f"usr/{d}", f"{r}/{d}")
    mount(plan.workspace, f"{r}/workspace", flags=MS_BIND)
    for source, target in plan.layers:  # code the agent runs but may not change
        os.makedirs(f"{r}{target}", exist_ok=True)
        bind_readonly(source, f"{r}{target}")
        mount("none", f"{r}{target}", flags=MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    if plan.home is not None:
        mount(plan.home, f"{r}/home/agent", flags=MS_BIND)
        mount("none", f"{r}/home/agent", flags=MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
    mount("tmp", f"{r}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    os.chmod(f"{r}/var/tmp", 0o1777)
    os.chown(f"{r}/home/agent", plan.uid, plan.gid)
    for name, data in plan.home_files.items():  # the agent's own (its settings, ifc.agents.catalog)
        fd = os.open(f"{r}/home/agent/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            os.fchown(out.fileno(), plan.uid, plan.gid)
            out.write(data)
    etc = {
        "passwd": f"root:x:0:0:root:/:/bin/sh\nagent:x:{plan.uid}:{plan.gid}:agent:/home/agent:/bin/sh\n",
        "group": f"root:x:0:\nagent:x:{plan.gid}:\n",
        "hosts": "127.0.0.1 localhost sandbox\n",
        "hostname": "sandbox\n",
        # the hook's DNS stub, over TCP like the microVM's (UDP is relayed too)
        "resolv.conf": "nameserver 127.0.0.1\noptions use-vc\n" if plan.dns else "",
    }
    for name, text in etc.items():
        Path(f"{r}/etc/{name}").write_text(text)
    for name, data in plan.etc.items():  # the host's package configuration: the agent may read, not change it
        target = Path(f"{r}/etc/{name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(0o444)
    if plan.trust is not None:
        os.makedirs(os.path.dirname(f"{r}{SANDBOX_TRUST}"))
        Path(f"{r}{SANDBOX_TRUST}").write_bytes(plan.trust)
    build_dev(f"{r}/dev")
    os.chdir(r)
    check(libc.syscall(SYS_PIVOT_ROOT[platform.machine()], b".", b"."), "cannot pivot into the new root")
    check(libc.umount2(b".", MNT_DETACH), "cannot drop the host's root")  # the old root, stacked under "."
    os.chdir("/")
    # this PID namespace's; hidepid: the agent sees only its own processes (not the init, which holds
    # `ifc run`'s command line)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")


def build_dev(dev: str) -> None:
    """A minimal /dev: the harmless host devices bound in, a private devpts (the agent's ptys), /dev/shm."""
    mount("dev", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755")
    for name in DEVICES:
        Path(f"{dev}/{name}").touch()
        mount(f"/dev/{name}", f"{dev}/{name}", flags=MS_BIND)
    os.makedirs(f"{dev}/pts")
    mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.makedirs(f"{dev}/shm")
    mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"{dev}/{name}")
    os.symlink("/proc/self/fd", f"{dev}/fd")


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def open_handed(plan: Plan) -> tuple[dict[str, int], int]:
    """What the parent serves (listening sockets on this namespace's loopback, the agent's pty master), and
    the pty's slave for the agent (-1 without a tty)."""
    handed, slave = {}, -1
    if plan.tty:  # from this namespace's devpts, so `tty` and ttyname() name it as the agent sees it
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
        os.fchown(slave, plan.uid, plan.gid)
        handed["pty"] = master
    listen = [("proxy", socket.SOCK_STREAM, PROXY_PORT)] if plan.proxy else []
    if plan.dns:
        listen += [("dns-tcp", socket.SOCK_STREAM, DNS_PORT), ("dns-udp", socket.SOCK_DGRAM, DNS_PORT)]
    for name, kind, port in listen:
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            s.listen(64)
        handed[name] = s.detach()
    return handed, slave


# ------------------------------------------------------------------------------------------ the agent

def start_agent(plan: Plan, slave: int) -> int:
    """Fork the agent; its user namespace's maps are written from here (root in the host's namespace)."""
    from_agent, to_init = os.pipe()  # (read, write)
    from_init, to_agent = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(from_agent)
        os.close(to_agent)
        try:
            enter_agent(plan, slave, to_init, from_init)
        except Exception as exc:
            os.write(2, f"ifc run: cannot start the command: {exc}\n".encode())
        finally:
            os._exit(125)
    for fd in (to_init, from_init, slave):
        if fd >= 0:
            os.close(fd)
    if os.read(from_agent, 1) == b"u":  # the agent has its user namespace: map only its uid and gid
        Path(f"/proc/{pid}/uid_map").write_text(f"{plan.uid} {plan.uid} 1\n")
        Path(f"/proc/{pid}/gid_map").write_text(f"{plan.gid} {plan.gid} 1\n")
        os.write(to_agent, b"m")
    os.close(from_agent)
    os.close(to_agent)
    return pid


def enter_agent(plan: Plan, slave: int, to_init: int, from_init: int) -> NoReturn:
    os.setsid()
    if slave >= 0:  # the fresh pty becomes the agent's controlling terminal
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
    check(libc.unshare(CLONE_NEWUSER), "cannot create a user namespace")
    os.write(to_init, b"u")
    if os.read(from_init, 1) != b"m":
        raise LaunchError("the init did not map the user namespace")
    Path("/proc/sys/user/max_user_namespaces").write_text("0\n")
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last_cap + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "cannot drop the capability bounding set")
    os.setgroups([])
    os.setresgid(plan.gid, plan.gid, plan.gid)
    os.setresuid(plan.uid, plan.uid, plan.uid)
    drop_capabilities()
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "cannot set no_new_privs")
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; an exec'd program must not
        signal.signal(sig, signal.SIG_DFL)
    os.chdir("/workspace")
    try:
        os.execvpe(plan.argv[0], plan.argv, plan.env)
    except OSError as exc:
        os.write(2, f"ifc run: {plan.argv[0]}: {exc.strerror.lower()}\n".encode())
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)


def drop_capabilities() -> None:
    """capset(all zero): setresuid away from an *unmapped* root does not clear them by itself."""
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = ctypes.create_string_buffer(24)  # two empty {effective, permitted, inheritable}
    check(libc.capset(ctypes.c_char_p(header), data), "cannot drop capabilities")
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "cannot clear ambient capabilities")


def reap(agent: int) -> int:
    """Reap every child (PID 1's duty) until the agent exits; its exit status (128+N for signal N)."""
    while True:
        pid, status = os.wait()
        if pid == agent:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code
