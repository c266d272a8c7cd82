"""A taint that outlives a run through data the monitor does not see: an agent's home kept between runs
(`ifc run --preset NAME --keep-state`). The agent reads and writes its home directly (it is no part of the
mediated workspace), so whatever the run held may be in it; the next run that gets that home starts with that
taint, as if it had read it.

The file (beside the kept home, never shown to the sandbox) holds a label by name:
`{"secrecy": ["internal", ...], "integrity": "untrusted"}`. Fail closed at every step: `begin` records the
top of the lattice *before* the run starts (a run that dies leaves its home as "may hold anything"), `finish`
replaces it with the run's final taint joined with what it started with; a file that does not parse, or that
names a tag or level this policy does not know, is read as the top. One run at a time (`hold`): two runs sharing
a home would each record only their own taint, and the later record would hide the other's."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from ifc.policy.labels import Label, Lattice

_held: list[int] = []  # lock descriptors, kept open (and so held) for the life of the process


def hold(path: Path) -> bool:
    """Take the home's lock for the life of this process; False when another run holds it."""
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held.append(fd)
    return True


def top(lattice: Lattice) -> Label:
    return Label(frozenset().union(*lattice.tag_closure.values()), 0)


def read(path: Path, lattice: Lattice) -> Label | None:
    """The label recorded at `path`, None when there is none (a home never used), the top when unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return top(lattice)
    known = set().union(*lattice.tag_closure.values())
    try:
        tags = frozenset(data["secrecy"])
        integrity = lattice.integrity_levels.index(data["integrity"])
    except (KeyError, TypeError, ValueError):
        return top(lattice)
    if not tags <= known:
        return top(lattice)
    closed = frozenset().union(tags, *(lattice.tag_closure.get(t, frozenset()) for t in tags))
    return Label(closed, integrity)


def write(path: Path, label: Label, lattice: Lattice) -> None:
    """Replace the record atomically (a crash leaves the old one or the new one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"secrecy": sorted(label.secrecy),
                               "integrity": lattice.integrity_levels[label.integrity]}) + "\n", encoding="utf-8")
    os.replace(tmp, path)
