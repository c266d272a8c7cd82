"""Rights a token carries, and how a request is matched against them.

A right is `OP PATTERN`: `read`, `write`, `create`, `delete` and `exec` take a path glob; `connect` takes an
endpoint pattern, which may name a URL path and methods
(`connect https://github.com/acme/** methods GET,POST`); `declassify TAG to ENDPOINT` lets the monitor release
data tagged TAG to endpoints that match. `caps` treats patterns as opaque text and matches them with
`ifc.match`; tags are opaque strings (caps knows nothing of labels).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from caps.errors import RightError
from ifc.match import METHODS_WORD, Endpoint, EndpointPattern, Glob, PatternError

PATH_OPS = ("read", "write", "create", "delete", "exec")
CONNECT = "connect"
DECLASSIFY = "declassify"
OPS = (*PATH_OPS, CONNECT, DECLASSIFY)

MAX_PATTERN_BYTES = 512
MAX_TAG_BYTES = 64
MAX_PATH_BYTES = 4096
MAX_SEGMENT_BYTES = 255  # NAME_MAX
# Glob matching backtracks: a holder who may append blocks could otherwise pick a pattern such as
# `**/**/**/z` that takes seconds against a long path. These bounds keep the worst case to milliseconds.
MAX_DOUBLE_STARS = 1
MAX_STARS_PER_SEGMENT = 2
MAX_WILDCARDS = 3

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
        problem = check_text("pattern", self.pattern, MAX_PATTERN_BYTES)
        if problem is None and self.op in PATH_OPS:
            problem = glob_problem(self.pattern)
        elif problem is None:
            path = url_path(self.pattern)
            problem = None if path is None else glob_problem(path)
        return problem

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


def glob_problem(pattern: str) -> str | None:
    """Token-specific limits on a glob (its syntax is `ifc.match`'s to check).

    Globs compile to backtracking regexes, whose worst case grows with the product of the ways each
    wildcard can match. A holder who may append blocks chooses the pattern and the path, so tokens allow
    at most MAX_WILDCARDS wildcards in all (`*` counts one, a `**` segment one, and a pattern without `/`
    one more, since it matches at any depth), at most one `**` and at most two `*` in one segment.
    """
    if pattern.startswith("~"):
        return f"glob `{pattern}` is not a workspace path (`~` is not allowed in tokens)"
    segments: list[tuple[str, int]] = []  # (raw text, unescaped `*` count), split on unescaped `/`
    text: list[str] = []
    stars, i = 0, 0
    escaped = "\\" in pattern
    if not escaped:  # the common case: let str do the splitting
        segments = [(seg, seg.count("*")) for seg in pattern.split("/")]
    while escaped and i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            text.append(pattern[i : i + 2])
            i += 2
            continue
        if ch == "/":
            segments.append(("".join(text), stars))
            text, stars = [], 0
        else:
            text.append(ch)
            stars += ch == "*"
        i += 1
    if escaped:
        segments.append(("".join(text), stars))
    named = [(seg, n) for seg, n in segments if seg]
    double = sum(1 for seg, _ in named if seg == "**")
    single = [n for seg, n in named if seg != "**"]
    unanchored = len(named) == 1 and not pattern.startswith("/")  # matches at any depth: a hidden `**/`
    total = double + sum(single) + unanchored
    if double > MAX_DOUBLE_STARS:
        return f"glob `{pattern}` has more than {MAX_DOUBLE_STARS} `**` segment"
    if any(n > MAX_STARS_PER_SEGMENT for n in single):
        return f"glob `{pattern}` has more than {MAX_STARS_PER_SEGMENT} `*` in one path segment"
    if total > MAX_WILDCARDS:
        return f"glob `{pattern}` has more than {MAX_WILDCARDS} wildcards"
    return None


def url_path(pattern: str) -> str | None:
    """The path glob of an endpoint pattern's text (`/acme/**` of `https://github.com/acme/** methods GET`), held to
    the same backtracking bounds as a path right: it is matched against request paths the holder chooses."""
    rest = pattern.partition(METHODS_WORD)[0].partition("://")[2]
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else None


def path_problem(path: str) -> str | None:
    """Why `path` is not a normalised workspace-relative posix path (None if it is).

    Globs are matched against text, so `src/../etc/passwd` must never reach `src/**`: anything that is
    not already normalised is denied rather than normalised here.
    """
    if not path or path.startswith("/") or "\x00" in path:
        return f"target `{path}` is not a workspace-relative path"
    if len(path) > MAX_PATH_BYTES:
        return f"target path is longer than {MAX_PATH_BYTES} characters"
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            return f"target `{path}` is not a normalised workspace path"
        if len(segment) > MAX_SEGMENT_BYTES:
            return f"target path has a name longer than {MAX_SEGMENT_BYTES} characters"
    return None


@functools.lru_cache(maxsize=8192)
def _matcher(op: str, pattern: str) -> Glob | EndpointPattern:
    """Compiled matcher for one pattern, shared by every token that carries it (tokens minted from the same
    policy repeat the same patterns). Raises RightError."""
    return Right(op if op != DECLASSIFY else CONNECT, pattern).compile()


def clear_pattern_cache() -> None:
    """Forget compiled patterns (benchmarks use this to measure a truly cold verifier)."""
    _matcher.cache_clear()


class CompiledRights:
    """The rights of one block, grouped for matching. Patterns are compiled on first use, per operation,
    so verifying a token does not pay for patterns no request asks about. Raises RightError from `allows_*`
    if a pattern the request needs does not compile (callers deny)."""

    __slots__ = ("_compiled", "_patterns", "rights")

    def __init__(self, rights: Iterable[Right]) -> None:
        self.rights: tuple[Right, ...] = tuple(rights)
        patterns: dict[str | tuple[str, str], list[str]] = {}
        for right in self.rights:
            key = right.op if right.tag is None else (right.op, right.tag)
            patterns.setdefault(key, []).append(right.pattern)
        self._patterns = {key: tuple(ps) for key, ps in patterns.items()}
        self._compiled: dict[str | tuple[str, str], tuple] = {}

    def _matchers(self, key: str | tuple[str, str]) -> tuple:
        matchers = self._compiled.get(key)
        if matchers is None:
            op = key if isinstance(key, str) else key[0]
            matchers = tuple(_matcher(op, p) for p in self._patterns.get(key, ()))
            self._compiled[key] = matchers  # a race here only compiles twice
        return matchers

    def allows_path(self, op: str, path: str) -> bool:
        return any(g.matches(path) for g in self._matchers(op))

    def allows_connect(self, endpoint: Endpoint) -> bool:
        return any(p.matches(endpoint) for p in self._matchers(CONNECT))

    def allows_declassify(self, tag: str, endpoint: Endpoint) -> bool:
        return any(p.matches(endpoint) for p in self._matchers((DECLASSIFY, tag)))

    def describe(self) -> str:
        return ", ".join(f"`{r}`" for r in self.rights) or "nothing"
