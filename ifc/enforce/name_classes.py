"""The globs a decision on a workspace name reads: what makes two names one *class* for the mount's fast path.

The monitor decides a create, a delete, or a change of mode, owner or times on a name by what the name and its
directory match — the policy's file rules and their `except`s, the flow rules' and capabilities' file sinks, the
agent's grants, the token's rights, host-executed configuration — and by the name's stored label, record and other
names, the run's taint and the token's window (`Monitor.decide_made`). So two names with no stored label that
match the same of these globs, in directories that match the same, are decided alike; fastpath.c answers the
second as the monitor answered the first, having matched both against the globs collected here. Secret-file
formats (a file served with sentinels) are no globs of these: the C side sends every such name to Python.

Any glob forgotten here would merge two classes the monitor tells apart: `globs` walks the policy's own data for
every `Glob` it holds rather than listing where they are, and tests/test_fuse_made.py holds that no glob a
decision reads is missing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from ifc.match import Glob, PatternError
from ifc.policy import hostcfg
from ifc.policy.model import Agent, Policy


def held(obj, seen: set[int] | None = None) -> Iterator[Glob]:
    """Every `Glob` reachable from `obj` through dataclass fields, tuples, lists, sets and dict values."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Glob):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from held(getattr(obj, f.name), seen)
    elif isinstance(obj, (tuple, list, set, frozenset)):
        for item in obj:
            yield from held(item, seen)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from held(item, seen)


def globs(policy: Policy, agent: Agent | None, token_patterns: Iterable[str] = ()) -> tuple[Glob, ...]:
    """The globs that tell classes apart, each once (by its tokens): the policy's, the agent's grants on paths,
    the token's path rights (`VerifiedToken.path_patterns`), and host-executed configuration's."""
    found = list(held(policy))
    patterns = [g.pattern for g in agent.grants if g.op != "connect"] if agent is not None else []
    for pattern in (*patterns, *token_patterns):
        try:
            found.append(Glob.compile(pattern))
        except PatternError:
            continue  # the monitor refuses what it cannot match: no class is answered that way
    for kind in hostcfg.HOST_CONFIG:
        found += [*kind.compiled[0], *kind.compiled[1]]
    return tuple({g.tokens: g for g in found}.values())
