"""`ifc check --workspace`: which files the mount will serve with sentinels, which keys, and where each value
may go (the hosts its `secret ... from file ... key ...` binding names, or nowhere), before a run starts.

Reads each candidate without following symlinks, as the mount does (`O_NOFOLLOW`); prints keys, never values."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ifc.policy.model import Policy
from ifc.secretfiles import format_of, key_matches, parse

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
LIMIT = 4 * 1024 * 1024  # larger files are reported, not parsed


@dataclass(frozen=True)
class SentinelFile:
    path: str
    format: str
    keys: tuple[tuple[str, str], ...]  # (key, where its value may go: hosts, or "nowhere")
    comments: int = 0
    problem: str | None = None  # why it is served as it is (under its full label) instead


def sentinel_file(policy: Policy, rel: str, path: str) -> SentinelFile | None:
    """What the mount will make of workspace file `rel` (at `path`), or None when it is not a candidate."""
    if not policy.sentinel_file(rel):
        return None
    fmt = format_of(rel) or "?"
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        return SentinelFile(rel, fmt, (), problem=f"cannot read: {(exc.strerror or str(exc)).lower()}")
    try:
        st = os.fstat(fd)
        if st.st_size > LIMIT or not _regular(st.st_mode):
            return SentinelFile(rel, fmt, (), problem="not a regular file under 4 MiB: served as it is, secret")
        if st.st_nlink > 1:
            return SentinelFile(rel, fmt, (), problem="has other hard links: served as it is, secret")
        data = os.read(fd, LIMIT + 1)
    except OSError as exc:
        return SentinelFile(rel, fmt, (), problem=f"cannot read: {(exc.strerror or str(exc)).lower()}")
    finally:
        os.close(fd)
    parsed = parse(rel, data)
    if parsed is None:
        return SentinelFile(rel, fmt, (), problem=f"does not parse as {fmt}: served as it is, secret")
    bindings = [s for s in policy.secrets_ if s.workspace_file and s.ref == rel and s.key is not None]
    keys = []
    for item in parsed.values:
        bound = [s for s in bindings if key_matches(item, s.key)]
        where = "; ".join(f"{s.name} to {', '.join(p.text for p in s.endpoints) or 'nowhere'}" for s in bound)
        keys.append((item.key, where or "nowhere"))
    comments = len(parsed.items) - len(parsed.values)
    return SentinelFile(rel, parsed.format, tuple(keys), comments)


def _regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)
