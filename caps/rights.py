"""Rights a token carries, and how a request is matched against them.

A right is `OP PATTERN`: `read`, `write`, `create`, `delete` and `exec` take a path glob; `connect` takes an
endpoint pattern; `declassify TAG to ENDPOINT` lets the monitor release data tagged TAG to endpoints that
match. `caps` treats patterns as opaque text and matches them with `ifc.match`; tags are opaque strings
(caps knows nothing of labels).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from caps.errors import RightError
from ifc.match import Endpoint, EndpointPattern, Glob, PatternError

PATH_OPS = ("read", "write", "create", "delete", "exec")
CONNECT = "connect"
DECLASSIFY = "declassify"
OPS = (*PATH_OPS, CONNECT, DECLASSIFY)

MAX_PATTERN_BYTES = 512
MAX_TAG_BYTES = 64

_TAG = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DECLASSIFY_TEXT = re.compile(r"(\S+)\s+to\s+(\S+)\Z")


def check_text(what: str, text: str, limit: int) -> str | None:
    """Return a message if `text` is empty, too long or holds control characters, else None."""
    if not text:
        return f"{what} is empty"
    if len(text.encode("utf-8", "surrogatepass")) > limit:
        return f"{what} is longer than {limit} bytes"
    if _CONTROL.search(text):
        return f"{what} contains a control character"
    if text != text.strip():
        return f"{what} has leading or trailing whitespace"
    return None


@dataclass(frozen=True, slots=True)
class Right:
    """One right. `tag` is set only for `declassify`, whose `pattern` is an endpoint pattern."""

    op: str
    pattern: str
    tag: str | None = None

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise RightError(problem)

    def problem(self) -> str | None:
        """Why this right is not well formed (syntax of the pattern itself is checked by `compile`)."""
        if self.op not in OPS:
            return f"unknown operation `{self.op}`"
        if (self.op == DECLASSIFY) != (self.tag is not None):
            return "only `declassify` rights carry a tag"
        if self.tag is not None and (len(self.tag) > MAX_TAG_BYTES or not _TAG.match(self.tag)):
            return f"`{self.tag}` is not a valid tag name"
        return check_text("pattern", self.pattern, MAX_PATTERN_BYTES)

    @classmethod
    def parse(cls, text: str) -> Right:
        """Parse `read src/**`, `connect https://*.github.com:443` or `declassify TAG to ENDPOINT`."""
        parts = text.strip().split(None, 1)
        if len(parts) != 2:
            raise RightError(f"`{text}` is not a right", help="write `OP PATTERN`, e.g. `read src/**`")
        op, rest = parts
        if op == DECLASSIFY:
            m = _DECLASSIFY_TEXT.match(rest)
            if m is None:
                raise RightError(f"`{text}` is not a right", help="write `declassify TAG to ENDPOINT`")
            right = cls(op, m.group(2), m.group(1))
        else:
            right = cls(op, rest.strip())
        right.compile()
        return right

    def compile(self) -> Glob | EndpointPattern:
        """The matcher for this right's pattern; raises RightError on a bad pattern."""
        try:
            if self.op in PATH_OPS:
                return Glob.compile(self.pattern)
            return EndpointPattern.parse(self.pattern)
        except PatternError as exc:
            kind = "glob" if self.op in PATH_OPS else "endpoint pattern"
            raise RightError(f"bad {kind} `{self.pattern}`: {exc}") from None

    def __str__(self) -> str:
        if self.tag is not None:
            return f"{self.op} {self.tag} to {self.pattern}"
        return f"{self.op} {self.pattern}"


def path_problem(path: str) -> str | None:
    """Why `path` is not a normalised workspace-relative posix path (None if it is).

    Globs are matched against text, so `src/../etc/passwd` must never reach `src/**`: anything that is
    not already normalised is denied rather than normalised here.
    """
    if not path or path.startswith("/") or "\x00" in path:
        return f"target `{path}` is not a workspace-relative path"
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            return f"target `{path}` is not a normalised workspace path"
    return None


class CompiledRights:
    """The rights of one block, compiled for matching. Immutable once built."""

    __slots__ = ("_connect", "_declassify", "_paths", "rights")

    def __init__(self, rights: Iterable[Right]) -> None:
        self.rights: tuple[Right, ...] = tuple(rights)
        paths: dict[str, list[Glob]] = {}
        connect: list[EndpointPattern] = []
        declassify: dict[str, list[EndpointPattern]] = {}
        for right in self.rights:
            matcher = right.compile()
            if right.op in PATH_OPS:
                paths.setdefault(right.op, []).append(matcher)  # type: ignore[arg-type]
            elif right.op == CONNECT:
                connect.append(matcher)  # type: ignore[arg-type]
            else:
                declassify.setdefault(right.tag, []).append(matcher)  # type: ignore[arg-type]
        self._paths = {op: tuple(ms) for op, ms in paths.items()}
        self._connect = tuple(connect)
        self._declassify = {tag: tuple(ms) for tag, ms in declassify.items()}

    def allows_path(self, op: str, path: str) -> bool:
        return any(g.matches(path) for g in self._paths.get(op, ()))

    def allows_connect(self, endpoint: Endpoint) -> bool:
        return any(p.matches(endpoint) for p in self._connect)

    def allows_declassify(self, tag: str, endpoint: Endpoint) -> bool:
        return any(p.matches(endpoint) for p in self._declassify.get(tag, ()))

    def describe(self) -> str:
        return ", ".join(f"`{r}`" for r in self.rights) or "nothing"
