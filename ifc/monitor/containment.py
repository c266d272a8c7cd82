"""Containment: what the sandbox may never reach, whatever the policy's grants and labels say.

Authority and flow (the rest of the monitor) answer "may this subject move this data there?". These rules
answer a question before it: "is the object inside the sandbox's world at all?" — a symlink leading out of
the workspace, a file whose other names lie outside, a device node, an extended attribute the kernel
trusts, an address inside the host's own network. They need what only an enforcement point can see (the
disk, the resolver), so the adapters collect it as `Facts` on the request and the monitor applies the
rules here, inside `decide`: a containment denial is logged like any other, with a rule named
`containment: ...`. Keeping them in one place, as plain functions, is what lets them be tested on their
own (tests/test_containment.py) and keeps the adapters free of decisions.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from ifc.match import PORT_SCHEMES, Endpoint
from ifc.policy.model import Policy

# Read-only system trees a symlink in the workspace may point into (a venv's `bin/python`).
SYSTEM_PREFIXES: tuple[str, ...] = tuple(dict.fromkeys(
    ("/usr", "/bin", "/lib", "/lib64", "/sbin", "/opt", "/etc/alternatives", sys.base_prefix)))

# Node types a workspace may hold; a device node would hand the sandbox the device itself.
PLAIN_NODES = frozenset({stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK})

# Extended-attribute namespaces the kernel or a security module acts on (capabilities, SELinux labels,
# and `trusted.*`, readable only by root, where the host may keep its own data): never set from inside.
GUARDED_XATTRS = frozenset({"security", "trusted"})

METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200"))
CGNAT = ipaddress.ip_network("100.64.0.0/10")

# Ops that change a file's inode (its data or metadata), not only one of its names. Through a hard link whose
# other names lie outside the workspace they would change the file outside: the enforcement point first gives
# the name an inode of its own (copy-up) and asks with `outside_links` only if it could not. Reading through
# such a link is the workspace's content under the workspace's label; a new name, a rename or a delete
# touches only names inside.
INODE_CHANGES = frozenset({"write", "chmod"})

# The ops that are only containment questions: no authority, no flow, no effect.
#   readlink  may the sandbox see this symlink's target (it would follow it)?
#   resolve   may the hook connect to these addresses (`Facts.addresses`) for this endpoint?
CONTAINMENT_OPS = ("readlink", "resolve")


@dataclass(frozen=True, slots=True)
class Facts:
    """What an enforcement point saw, for the rules below. Frozen and hashable: the monitor's fast path keys
    on it, so a cached answer is only reused for the same facts."""

    symlink_target: str | None = None  # the target held by the symlink being made or read at the request's path
    symlinks_on_walk: frozenset[str] = frozenset()  # paths of `symlink_walk` that are symlinks on disk
    backing_root: str | None = None  # where the workspace really lives (a symlink there goes around the monitor)
    mountpoint: str | None = None  # where the sandbox sees the workspace (a symlink there stays inside)
    outside_links: bool = False  # the file has hard links (names) outside the workspace
    xattr: str | None = None  # the extended attribute being set or removed
    node_type: int | None = None  # `stat.S_IFMT` of a node being made by mknod
    addresses: tuple[str, ...] | None = None  # what the request's host resolved to
    inspected: bool = False  # the hook decides every request on this connection again (method and path)
    sentinels: bool = False  # a read returns the file served with sentinels for its values (`ifc.secretfiles`)
    beneath: tuple[str, ...] = ()  # a renamed directory's every name, relative to it: each moves with it
    # a rename: each symlink it moves (the moved name itself, or one beneath a moved directory), as its new name and
    # the facts of the symlink rule there — a relative target means something else from another directory
    moved_symlinks: tuple[tuple[str, Facts], ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    rule: str
    reason: str


def check(policy: Policy, op: str, target: str, endpoint: Endpoint | None, facts: Facts | None) -> Refusal | None:
    """The first containment rule the request breaks, or None. `target` is the monitor's normalised path."""
    if endpoint is not None and op in ("connect", "resolve"):
        refusal = ip_literal(policy, endpoint)
        if refusal is not None:
            return refusal
    if facts is None:
        return None
    if facts.symlink_target is not None:
        refusal = symlink(target, facts)
        if refusal is not None:
            return refusal
    for name, moved in facts.moved_symlinks:
        refusal = symlink(name, moved)
        if refusal is not None:
            return Refusal(refusal.rule, f"moved to `{name}`, a {refusal.reason}")
    if facts.outside_links and op in INODE_CHANGES:
        return Refusal("containment: hard link",
                       f"`{target}` has hard links outside the workspace and the link could not be broken: "
                       "changing it would change the file outside")
    if facts.xattr is not None:
        refusal = xattr(facts.xattr)
        if refusal is not None:
            return refusal
    if facts.node_type is not None and facts.node_type not in PLAIN_NODES:
        return Refusal("containment: device", "device nodes cannot be made in the workspace")
    if facts.addresses is not None and endpoint is not None:
        return addresses(policy, endpoint, facts.addresses)
    return None


# ------------------------------------------------------------------------------------------ files

def inside(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/") or "/"
    return path == prefix or path.startswith(prefix + "/") or prefix == "/"


def _walk(rel: str, link_target: str) -> Iterator[tuple[str, str | None]]:
    """The steps of resolving a relative symlink target by name from the link's directory: ("enter", path)
    for each component, ("up", None) for a `..`, and ("out", None) where it climbs above the root."""
    parts = [p for p in rel.split("/")[:-1] if p]
    for part in link_target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                yield "out", None
                return
            parts.pop()
            yield "up", None
            continue
        parts.append(part)
        yield "enter", "/".join(parts)


def symlink_walk(rel: str, link_target: str) -> list[str]:
    """The workspace paths a relative symlink target at `rel` passes through by name: the enforcement point
    tells the rule which of them are symlinks (`Facts.symlinks_on_walk`)."""
    if link_target.startswith("/"):
        return []
    return [path for step, path in _walk(rel, link_target) if step == "enter"]


def symlink(rel: str, facts: Facts) -> Refusal | None:
    """A symlink at `rel` holding `facts.symlink_target` may be made or read only if following it stays in the
    workspace, in the mount, or in a read-only system tree — never in the backing directory (around the
    monitor). Past a symlink the walk's real position is unknown, so a later `..` is refused."""
    link_target = facts.symlink_target or ""
    if not link_target or "\0" in link_target:
        return Refusal("containment: symlink", "empty symlink target")
    if link_target.startswith("/"):
        norm = os.path.normpath(link_target)
        if facts.backing_root and inside(norm, facts.backing_root):
            return Refusal("containment: symlink",
                           f"symlink to `{link_target}` points into the backing directory, around the monitor")
        if facts.mountpoint and inside(norm, facts.mountpoint):
            return None
        if any(inside(norm, p) for p in SYSTEM_PREFIXES if p != "/"):
            return None
        return Refusal("containment: symlink", f"symlink to `{link_target}` points outside the workspace")
    walked_link = False
    for step, path in _walk(rel, link_target):
        if step == "out" or (step == "up" and walked_link):
            return Refusal("containment: symlink", f"symlink to `{link_target}` climbs out of the workspace")
        if step == "enter" and not walked_link:
            walked_link = path in facts.symlinks_on_walk
    return None


def symlink_destination(rel: str, facts: Facts) -> str | None:
    """Where a contained symlink at `rel` (`check` allowed it) leads by name: the workspace name ("" for the root),
    an absolute path (a read-only system tree), or None when unknown (its walk passes another symlink)."""
    link_target = facts.symlink_target or ""
    if link_target.startswith("/"):
        norm = os.path.normpath(link_target)
        if facts.mountpoint and inside(norm, facts.mountpoint):
            return os.path.relpath(norm, facts.mountpoint).removeprefix(".")
        return norm
    where = "/".join(p for p in rel.split("/")[:-1] if p)
    for step, path in _walk(rel, link_target):
        if step == "enter" and path in facts.symlinks_on_walk:
            return None
        where = path if step == "enter" else where.rpartition("/")[0]
    return where


def xattr_namespace(name: str) -> str:
    return name.split(".", 1)[0] if "." in name else ""


def xattr(name: str) -> Refusal | None:
    namespace = xattr_namespace(name)
    if namespace in GUARDED_XATTRS:
        return Refusal("containment: xattr", f"`{namespace}.*` attributes cannot be changed in the workspace")
    return None


# ------------------------------------------------------------------------------------------ network

def special_kind(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address is not an ordinary public one, or None."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr in METADATA_ADDRESSES:
        return "cloud-metadata"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:
        return "link-local"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_multicast:
        return "multicast"
    if isinstance(addr, ipaddress.IPv4Address) and addr in CGNAT:
        return "shared (CGNAT)"
    if addr.is_private or addr.is_reserved:
        return "private"
    return None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def named_by_ip(policy: Policy, scheme: str, ip: str, port: int) -> bool:
    """Does an endpoint rule name this address by IP or CIDR (not by `*`)? The scheme is not compared:
    `tcp://127.0.0.0/8:*` admits the address for any protocol the name's own rule allows."""
    for rule in policy.endpoint_rules:
        for pattern in rule.patterns:
            if pattern.host == "*" or pattern._network is None:
                continue
            if pattern.matches_connection(Endpoint(pattern.scheme or scheme, ip, port)) and not any(
                    not x.restricted and x.matches_connection(Endpoint(x.scheme or scheme, ip, port))
                    for x in rule.excepts):
                return True
    return False


def ip_literal(policy: Policy, endpoint: Endpoint) -> Refusal | None:
    """A host given as an address skips every name rule, so it needs a rule naming it by IP or CIDR."""
    host = endpoint.host.strip("[]")
    if is_ip_literal(host) and not named_by_ip(policy, endpoint.scheme, host, endpoint.port):
        return Refusal("containment: ip literal",
                       f"`{host}` is an IP literal and no endpoint rule names it by IP or CIDR")
    return None


def addresses(policy: Policy, endpoint: Endpoint, resolved: tuple[str, ...]) -> Refusal | None:
    """A name may resolve anywhere: loopback, private, link-local, CGNAT, multicast and metadata addresses
    need a rule naming them by IP or CIDR, or a public name could reach the host's own network."""
    if not resolved:
        return Refusal("containment: address", f"`{endpoint.host}` has no address")
    for text in resolved:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            return Refusal("containment: address", f"`{endpoint.host}` resolves to `{text}`, not an address")
        kind = special_kind(addr)
        if kind is not None and not named_by_ip(policy, endpoint.scheme, str(addr), endpoint.port):
            return Refusal("containment: address",
                           f"`{endpoint.host}` resolves to {kind} address {addr}, which no endpoint rule names by IP")
    return None


def connect_scheme(policy: Policy, host: str, port: int) -> str:
    """Which endpoint rule judges a CONNECT tunnel: `tcp://` when a raw-TCP rule names the host and port (the
    tunnel is then spliced as bytes), else `smtp://` on a mail submission port (mail is judged as mail, whatever
    rides inside), else `https://` (the bytes must be TLS)."""
    endpoint = Endpoint("tcp", host, port)
    if any(p.scheme == "tcp" and p.matches(endpoint) for rule in policy.endpoint_rules for p in rule.patterns):
        return "tcp"
    return "smtp" if PORT_SCHEMES.get(port) == "smtp" else "https"
