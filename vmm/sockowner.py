"""Which process in the sandbox's namespaces holds a socket: attribution for egress denials in
`--isolation namespace`.

Why: the egress hook sees every connection from `ifc run`'s relay (the sandbox's network namespace has only
`lo`, and the relay carries each connection to the host-side hook), so its log can only say `egress from
127.0.0.1:PORT` — the relay's own end. The relay, though, accepted the connection inside the sandbox's network
namespace and knows the client's address there. The kernel's socket table of that namespace
(`/proc/<pid in it>/net/tcp`, `tcp6`, `udp`, `udp6`) maps the address to a socket inode, and the one process
of the sandbox holding a descriptor on `socket:[inode]` (`/proc/PID/fd`) made the connection. Its command line
is read from `/proc/PID/cmdline` while it waits for its answer.

This is exact, read from the host kernel, not from anything the sandbox says; it is still attribution only, as a
process can hand its socket to another or change its own command line (`prctl(PR_SET_MM)` needs privileges the
agent lacks, but `argv[0]` is writable memory): no decision ever depends on it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Owner:
    """The process holding a socket: its pid (in the host's PID namespace) and its argv."""

    pid: int
    argv: tuple[str, ...]


def _address(field: str) -> tuple[str, int]:
    """`0100007F:1F90` → ('127.0.0.1', 8080): /proc/net addresses are the kernel's words in host byte order."""
    raw, _, port = field.partition(":")
    data = bytes.fromhex(raw)
    words = b"".join(struct.pack("=I", struct.unpack(">I", data[i:i + 4])[0]) for i in range(0, len(data), 4))
    address = ipaddress.ip_address(words)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return str(address), int(port, 16)


def socket_inode(ns_pid: int, proto: str, local: tuple[str, int]) -> int | None:
    """The inode of the `proto` ("tcp" or "udp") socket bound to `local` in the network namespace of `ns_pid`."""
    want_ip, want_port = local
    for table in (proto, proto + "6"):
        try:
            with open(f"/proc/{ns_pid}/net/{table}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            ip, port = _address(fields[1])
            if port == want_port and ip in (want_ip, "0.0.0.0", "::"):
                return int(fields[9]) or None
    return None


def _starttime(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])
    return 0


def holders(ns_pid: int, inode: int) -> list[int]:
    """The pids (host namespace) of processes sharing `ns_pid`'s network namespace that hold `socket:[inode]`."""
    try:
        netns = os.readlink(f"/proc/{ns_pid}/ns/net")
    except OSError:
        return []
    wanted = f"socket:[{inode}]"
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{name}/ns/net") != netns:
                continue
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{name}/fd/{fd}") == wanted:
                    found.append(int(name))
                    break
    return found


def owner(ns_pid: int, proto: str, local: tuple[str, int]) -> Owner | None:
    """The process of the sandbox holding the socket at `local` (its address inside the namespace); of several
    holders (a descriptor inherited across fork), the one started last, which is the one using it. None when the
    socket or its process is gone already."""
    inode = socket_inode(ns_pid, proto, local)
    if inode is None:
        return None
    pids = holders(ns_pid, inode)
    for pid in sorted(pids, key=_starttime, reverse=True):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        argv = tuple(part.decode(errors="replace") for part in raw.split(b"\0")[:-1] if raw) or ()
        return Owner(pid, argv)
    return None


def peer_text(sock: socket.socket) -> str:
    """`127.0.0.1:41234`: a socket's own address as the hook logs its peers (`egress from ...`)."""
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"
