"""Path globs and endpoint patterns: the one matcher shared by policies and capability tokens.

Both the policy compiler and `caps/` match paths and endpoints; keeping a single implementation means a
token and a policy can never disagree about what `src/**` or `*.github.com` covers.

Globs follow .gitignore so that users predict them without reading docs:
  - a pattern without a `/` (other than a trailing one) matches a name at any depth (`*.pem`, `.env*`);
  - a pattern with a `/` is anchored at the workspace root (a leading `/` is allowed and means the same);
  - a match also covers everything beneath it (`secrets` and `secrets/` label the whole tree);
  - `*` and `?` stay within one path segment, `**` spans segments, `[a-z]`/`[!a-z]` are classes,
    `\\` escapes the next character; `~/` anchors at the host user's home (for host paths).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from functools import cached_property

SCHEMES = ("https", "http", "smtp", "dns", "tcp")
DEFAULT_PORTS: dict[str, tuple[int, ...]] = {
    "https": (443,),
    "http": (80,),
    "smtp": (25, 465, 587),
    "dns": (53,),
}
PORT_SCHEMES = {443: "https", 80: "http", 25: "smtp", 465: "smtp", 587: "smtp", 53: "dns"}
HTTP_SCHEMES = ("https", "http")  # the schemes whose requests have a method and a path
METHODS_WORD = " methods "  # `https://host/path methods GET,POST`: how a pattern with methods is written as text
_METHOD = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}$")  # an RFC 9110 token
_PCHARS = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*$")  # RFC 3986 path characters
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class PatternError(ValueError):
    """A malformed glob or endpoint; `column` is 0-based within the pattern text."""

    def __init__(self, message: str, column: int = 0, help: str | None = None):
        super().__init__(message)
        self.message = message
        self.column = column
        self.help = help


# --------------------------------------------------------------------------------------------- globs


# A glob compiles to a list of tokens; the regex (for matching) and the automaton (for exact set
# questions in `ifc.glob_sets`) are both rendered from the same tokens, so they cannot disagree.
#   ("lit", c)            one literal character
#   ("set", chars, neg)   one character of a class (`?` is the empty negated class); never `/`
#   ("star",)             `[^/]*`        within a segment
#   ("dirs",)             `(?:[^/]+/)*`  zero or more whole directories
#   ("all",)              `.*`           anything, across segments
#   ("desc",)             `(?:/.*)?`     optionally, anything beneath the match
MAX_CLASS_RANGE = 4096


def _class_tokens(pattern: str, start: int, offset: int) -> tuple[tuple, int]:
    """Parse a `[...]` class starting at `start`; return (token, index after `]`)."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] in "!^"
    if negate:
        i += 1
    chars: set[str] = set()
    first = True
    while i < len(pattern) and (pattern[i] != "]" or first):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            i += 1
            ch = pattern[i]
        if i + 2 < len(pattern) and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            lo, hi = ch, pattern[i + 2]
            if ord(hi) < ord(lo):
                raise PatternError(f"empty character range `{lo}-{hi}`", offset + i)
            if ord(hi) - ord(lo) > MAX_CLASS_RANGE:
                raise PatternError(f"character range `{lo}-{hi}` is too large", offset + i)
            chars.update(chr(c) for c in range(ord(lo), ord(hi) + 1))
            i += 3
        else:
            chars.add(ch)
            i += 1
        first = False
    if i >= len(pattern):
        raise PatternError("unclosed character class", offset + start,
                           help="close it with `]` or escape `[` as `\\[`")
    if "/" in chars:
        raise PatternError("a character class cannot contain `/`", offset + start)
    return ("set", frozenset(chars), negate), i + 1


def _segment_tokens(segment: str, offset: int) -> list[tuple]:
    out: list[tuple] = []
    i = 0
    while i < len(segment):
        ch = segment[i]
        if ch == "*":
            if i + 1 < len(segment) and segment[i + 1] == "*":
                raise PatternError(
                    "`**` must be a whole path segment", offset + i, help="use `*` to match within a name"
                )
            out.append(("star",))
        elif ch == "?":
            out.append(("set", frozenset(), True))
        elif ch == "[":
            token, i = _class_tokens(segment, i, offset)
            out.append(token)
            continue
        elif ch == "\\":
            if i + 1 >= len(segment):
                raise PatternError("trailing `\\` escapes nothing", offset + i)
            i += 1
            out.append(("lit", segment[i]))
        else:
            out.append(("lit", ch))
        i += 1
    return out


def _split_segments(body: str) -> list[tuple[str, int]]:
    """Split on unescaped `/`, remembering each segment's column."""
    segments, start, i = [], 0, 0
    while i < len(body):
        if body[i] == "\\":
            i += 2
            continue
        if body[i] == "/":
            segments.append((body[start:i], start))
            start = i + 1
        i += 1
    segments.append((body[start:], start))
    return segments


def glob_tokens(pattern: str, home: str | None = None) -> tuple[tuple, ...]:
    """Translate a policy glob into tokens over normalised posix paths (see the table above)."""
    if not pattern:
        raise PatternError("empty pattern", 0, help='use `"**"` to match every file')
    if "\x00" in pattern:
        raise PatternError("pattern contains a NUL byte", pattern.index("\x00"))
    body, offset = pattern, 0
    lead: list[tuple] = []
    if body.startswith("~/") or body == "~":
        home = (home if home is not None else os.path.expanduser("~")).rstrip("/")
        lead = [("lit", c) for c in home + "/"]
        body, offset = body[2:], 2
        anchored = True
    elif body.startswith("/"):
        body, offset = body.lstrip("/"), len(body) - len(body.lstrip("/"))
        anchored = True
    else:
        anchored = False
    body = body.rstrip("/")
    if not body:
        return (*lead, ("all",))
    segments = _split_segments(body)
    anchored = anchored or len(segments) > 1
    tokens: list[tuple] = lead if anchored else [("dirs",)]
    for index, (segment, col) in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "":
            raise PatternError("empty path segment (`//`)", offset + col)
        if segment in (".", ".."):
            raise PatternError(f"`{segment}` is not allowed in a pattern", offset + col,
                               help="patterns are relative to the workspace root")
        if segment == "**":
            # a trailing `**` means "something inside": one character at least, then anything
            tokens.extend((("set", frozenset(), True), ("all",)) if last else (("dirs",),))
        else:
            tokens.extend(_segment_tokens(segment, offset + col))
            if not last:
                tokens.append(("lit", "/"))
    tokens.append(("desc",))  # a match covers everything beneath it, like .gitignore directories
    return tuple(tokens)


_TOKEN_REGEX = {"star": "[^/]*", "dirs": "(?:[^/]+/)*", "all": ".*", "desc": "(?:/.*)?"}


def tokens_to_regex(tokens: tuple[tuple, ...]) -> str:
    parts = []
    for token in tokens:
        if token[0] == "lit":
            parts.append(re.escape(token[1]))
        elif token[0] == "set":
            inner = "".join(re.escape(c) for c in sorted(token[1]))
            parts.append(f"[^/{inner}]" if token[2] else f"[{inner}]")
        else:
            parts.append(_TOKEN_REGEX[token[0]])
    return "^" + "".join(parts) + "$"


def glob_to_regex(pattern: str, home: str | None = None) -> str:
    return tokens_to_regex(glob_tokens(pattern, home))


@dataclass(frozen=True)
class Glob:
    """A compiled path glob; equality and hashing use the pattern text."""

    text: str
    tokens: tuple[tuple, ...] = field(compare=False, repr=False)

    @classmethod
    def compile(cls, text: str, home: str | None = None) -> Glob:
        return cls(text, glob_tokens(text, home))

    @cached_property
    def regex(self) -> str:
        return tokens_to_regex(self.tokens)

    @cached_property
    def _compiled(self) -> re.Pattern[str]:
        return re.compile(self.regex, re.DOTALL)

    def matches(self, path: str) -> bool:
        return self._compiled.match(path) is not None

    @property
    def matches_everything(self) -> bool:
        return self.text.strip("/") in ("**", "*") and not self.text.startswith("~")

    @cached_property
    def literal_prefix(self) -> str | None:
        """The fixed text every match starts with, for anchored globs (None: it may start anywhere)."""
        if self.tokens and self.tokens[0][0] == "dirs":
            return None
        prefix = []
        for token in self.tokens:
            if token[0] != "lit":
                break
            prefix.append(token[1])
        return "".join(prefix)

    def overlap(self, other: Glob) -> str | None:
        """A path both globs match, or None when none exists (exact: automaton intersection).

        Cheap answers first — a concrete example of one that the other matches, or literal prefixes
        that cannot both begin one path — so the checker's pairwise questions stay fast."""
        for example in (*self.examples(), *other.examples()):
            if self.matches(example) and other.matches(example):
                return example
        a, b = self.literal_prefix, other.literal_prefix
        if a is not None and b is not None and not (a.startswith(b) or b.startswith(a)):
            return None
        from ifc.glob_sets import witness

        return witness(self.tokens, require=(other.tokens,))

    def within(self, others: tuple[Glob, ...], minus: tuple[Glob, ...] = ()) -> bool:
        """Does every path this glob matches also match one of `others` and none of `minus`? (Exact.)"""
        for example in self.examples():  # one uncovered example settles it without a search
            if not any(o.matches(example) for o in others) or any(m.matches(example) for m in minus):
                return False
        from ifc.glob_sets import escapes

        # a glob that shares no path with this one can neither cover nor remove any of its paths: leaving it out
        # keeps the answer exact and the product small (one automaton per glob: a rule listing many disjoint
        # names, as the host-config list does, made this search explode and `ifc check` run for minutes)
        others = tuple(o for o in others if self.overlap(o) is not None)
        minus = tuple(m for m in minus if self.overlap(m) is not None)
        if not others:
            return False
        return escapes(self.tokens, cover=tuple(o.tokens for o in others), minus=tuple(m.tokens for m in minus)) is None

    @cached_property
    def _examples(self) -> tuple[str, ...]:
        from ifc.glob_sets import witness

        guesses = [p for p in self._guesses() if self.matches(p)]
        shortest = witness(self.tokens, require=())
        if shortest is not None and shortest not in guesses:
            guesses.append(shortest)
        return tuple(guesses)

    def examples(self) -> list[str]:
        """Concrete paths this glob matches (each verified): witnesses for lints and messages."""
        return list(self._examples)

    def _guesses(self) -> list[str]:
        """Readable candidate paths built from the pattern text (checked by `_examples`)."""
        home = self.text.startswith("~")
        body = (os.path.expanduser("~") + "/" + self.text[2:]) if home else self.text.lstrip("/")
        body = body.rstrip("/")
        variants = []
        for star, dstar in (("x", "d"), ("", ""), ("a.b", "d/e")):
            out, i = [], 0
            while i < len(body):
                ch = body[i]
                if body.startswith("**", i):
                    out.append(dstar)
                    i += 2
                    if not dstar and i < len(body) and body[i] == "/":
                        i += 1
                    continue
                if ch == "*":
                    out.append(star)
                elif ch == "?":
                    out.append("q")
                elif ch == "[":
                    end = body.find("]", i + 2)
                    cls_body = body[i + 1:end if end > 0 else len(body)].lstrip("!^")
                    negated = body[i + 1:i + 2] in ("!", "^")
                    out.append("~" if negated else (cls_body[:1] or "x"))
                    i = (end + 1) if end > 0 else len(body)
                    continue
                elif ch == "\\" and i + 1 < len(body):
                    i += 1
                    out.append(body[i])
                else:
                    out.append(ch)
                i += 1
            path = re.sub(r"/+", "/", "".join(out))
            path = ("/" if home else "") + (path.strip("/") or "x")
            if path not in variants:
                variants.append(path)
        return variants


def glob_literal(path: str) -> str:
    """A glob matching the workspace path `path` (and what is beneath it) and no other: glob characters in the
    name are escaped and the pattern is anchored, so a fix suggested for a file named `*` or `key` never grants
    every file, or every `key` at any depth."""
    return "/" + re.sub(r"([*?\[\]\\])", r"\\\1", path.lstrip("/"))


def normalise_path(path: str) -> str:
    """Normalise a workspace path for matching; `..` that climbs above the root is rejected. A backslash is an
    ordinary character of a POSIX name (`a\\b` is one file, not `a/b`)."""
    if "\x00" in path:
        raise PatternError("path contains a NUL byte", path.index("\x00"))
    segments = path.split("/")  # the common case, a path that is already normal, costs one split and three scans
    if "" not in segments and "." not in segments and ".." not in segments:
        return path
    parts: list[str] = []
    for part in segments:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise PatternError("path climbs above the workspace root", 0)
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


# ----------------------------------------------------------------------------------------- endpoints

_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Endpoint:
    """A concrete network destination a request names: a connection (`path` None) or, for HTTP, one request
    on it (`method` and `path`, the path normalised by `request_path`, without its leading `/` or query).

    `inspected` marks a connection whose every request the hook decides again with its method and path (a
    plain-HTTP forward, or a TLS tunnel it terminates): only then may a pattern naming paths or methods admit
    the connection itself. It is a fact the hook states (`Facts.inspected`), never written in text."""

    scheme: str
    host: str
    port: int
    method: str | None = None
    path: str | None = None
    inspected: bool = False

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """`[METHOD ]scheme://host[:port][/path[?query]]` (a method and a path only for http and https)."""
        method, text = _split_method(text)
        scheme, host_text, port_text, col, path_text = _split_endpoint(text)
        host = _parse_host(host_text, col, concrete=True)
        if port_text is None:
            if scheme is None:
                raise PatternError("endpoint needs a port or a scheme", len(text),
                                   help="write `host:443` or `https://host`")
            if scheme == "tcp":
                raise PatternError("a `tcp://` endpoint needs a port", len(text))
            port = DEFAULT_PORTS[scheme][0]
        else:
            port = _parse_port(port_text, col + len(host_text) + 1)
        if scheme is None:
            scheme = PORT_SCHEMES.get(port, "tcp")
        path = None if path_text is None else request_path(path_text.partition("?")[0].partition("#")[0])
        if method is not None and path is None:
            raise PatternError("a request with a method needs a path", len(text), help="e.g. `GET https://host/`")
        if path is not None and scheme not in HTTP_SCHEMES:
            raise PatternError(f"a `{scheme}` endpoint has no path", 0, help="only http and https requests have paths")
        return cls(scheme, host, port, method, path)

    @property
    def connection(self) -> Endpoint:
        """The connection this request travels on (no method, no path)."""
        return Endpoint(self.scheme, self.host, self.port) if self.path is not None or self.inspected else self

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{self.scheme}://{host}:{self.port}"
        if self.path is not None:
            text += "/" + self.path
        return f"{self.method} {text}" if self.method else text


def _split_method(text: str) -> tuple[str | None, str]:
    text = text.strip()
    head, space, rest = text.partition(" ")
    if not space:
        return None, text
    if not _METHOD.match(head):
        raise PatternError(f"`{head}` is not an HTTP method", 0, help="methods are tokens such as `GET` or `POST`")
    return head, rest.strip()


def request_path(raw: str) -> str:
    """A request's path as patterns match it, or PatternError when it is not in normal form.

    Servers resolve what a path means (dot segments, percent-encoding, `//`), so a path that two servers could
    read two ways is refused rather than normalised here: `..` and `.` segments (also encoded), empty segments,
    an encoded `/`, `\\` or NUL, characters outside RFC 3986. Percent-encoded unreserved characters are decoded
    (`/%61cme` is `/acme`, RFC 3986 §6.2.2.2) and a trailing `/` is dropped; what remains is compared as is."""
    if not raw.startswith("/"):
        raise PatternError("a request path starts with `/`", 0)
    if not _PCHARS.match(raw):
        bad = next(i for i, ch in enumerate(raw) if not _PCHARS.match(ch))
        raise PatternError(f"character {raw[bad]!r} is not allowed in a path", bad)
    out, i = [], 0
    while i < len(raw):
        ch = raw[i]
        if ch == "%":
            pair = raw[i + 1:i + 3]
            if len(pair) != 2 or any(c not in "0123456789abcdefABCDEF" for c in pair):
                raise PatternError("bad percent-encoding", i)
            decoded = chr(int(pair, 16))
            if decoded in "/\\\x00":
                raise PatternError(f"an encoded {decoded!r} in a path is read differently by different servers", i)
            out.append(decoded if decoded in _UNRESERVED else "%" + pair.upper())
            i += 3
            continue
        out.append(ch)
        i += 1
    body = "".join(out)[1:]
    if body.endswith("/"):
        body = body[:-1]
    if body and any(seg in ("", ".", "..") for seg in body.split("/")):
        raise PatternError("a path with `.`, `..` or empty segments is not in normal form", 0,
                           help="send the path the server will see")
    return body


def _split_endpoint(text: str) -> tuple[str | None, str, str | None, int, str | None]:
    """(scheme, host, port text, host column, path text starting with `/` or None)."""
    scheme: str | None = None
    rest, col = text.strip(), 0
    if not rest:
        raise PatternError("empty endpoint", 0)
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        scheme = scheme.lower()
        col = len(scheme) + 3
        if scheme not in SCHEMES:
            raise PatternError(f"unknown scheme `{scheme}`", 0,
                               help="schemes are " + ", ".join(f"`{s}`" for s in SCHEMES))
    path = None
    if "/" in rest and not _looks_like_cidr(rest):
        slash = rest.index("/")
        if scheme not in HTTP_SCHEMES:
            raise PatternError(f"only `https://` and `http://` endpoints have a path (this is {scheme or 'no'} "
                               "scheme)", col + slash,
                               help="write `https://host/path`" if scheme is None else "name the host and port only")
        rest, path = rest[:slash], rest[slash:]
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise PatternError("unclosed `[` in IPv6 address", col)
        host, tail = rest[1:end], rest[end + 1:]
        if tail and not tail.startswith(":"):
            raise PatternError("expected `:port` after `]`", col + end + 1)
        return scheme, host, (tail[1:] if tail else None), col + 1, path
    if rest.count(":") > 1:
        raise PatternError("IPv6 addresses go in brackets", col, help="write `[::1]:443`")
    host, _, port = rest.partition(":")
    return scheme, host, (port if _ else None), col, path


def _looks_like_cidr(text: str) -> bool:
    return bool(re.match(r"^(\[[0-9a-fA-F:.]+/\d+\]|[0-9.]+/\d+)(:.*)?$", text))


def _parse_port(text: str, col: int) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise PatternError(f"bad port `{text}`", col, help="ports are 1-65535")
    return int(text)


def _parse_host(text: str, col: int, concrete: bool) -> str:
    host = text.lower().rstrip(".")
    if not host:
        raise PatternError("missing host", col)
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.split(".")
    for index, label in enumerate(labels):
        if not concrete and label in ("*", "**") and index == 0:
            continue
        if not _HOST_LABEL.match(label):
            hint = "wildcards go only in the first label: `*.example.com` or `**.example.com`"
            raise PatternError(f"bad host name `{text}`", col, help=None if concrete else hint)
    return host


@dataclass(frozen=True)
class EndpointPattern:
    """`[scheme://]host[:port|:lo-hi|:*][/path glob][ methods M,N]`: exact host, `*.` one label, `**.` any depth,
    `*` any host, IPs and CIDRs. A missing port means the scheme's default ports, or any port without a scheme.

    A path glob and a method set (http and https only) narrow the pattern to some requests: `*` stays within a
    path segment, `**` spans segments, and a path matches exactly (`/acme` is not `/acme/x`: write `/acme/**`);
    `/**` alone is every path, the same as no path.
    Such a pattern admits a connection (no path yet) only when the hook decides every request on it
    (`Endpoint.inspected`)."""

    text: str
    scheme: str | None = field(compare=False)
    host: str = field(compare=False)
    ports: tuple[tuple[int, int], ...] | None = field(compare=False)  # None: any port
    path: Glob | None = field(compare=False, default=None)  # None: every path
    methods: frozenset[str] | None = field(compare=False, default=None)  # None: every method

    @classmethod
    def parse(cls, text: str) -> EndpointPattern:
        url, methods = _split_methods(text)
        scheme, host_text, port_text, col, path_text = _split_endpoint(url)
        if methods is not None and scheme not in HTTP_SCHEMES:
            raise PatternError("only `https://` and `http://` patterns take methods", 0,
                               help="write the scheme: `https://host`")
        host_text = host_text.lower()
        if host_text == "*":
            host = "*"
        elif "/" in host_text:
            try:
                host = str(ipaddress.ip_network(host_text, strict=False))
            except ValueError as exc:
                raise PatternError(f"bad network `{host_text}`", col) from exc
        else:
            host = _parse_host(host_text, col, concrete=False)
        port_col = col + len(host_text) + 1
        ports: tuple[tuple[int, int], ...] | None
        if port_text is None:
            if scheme == "tcp":
                raise PatternError("a `tcp://` pattern needs a port", len(text), help="e.g. `tcp://db.internal:5432`")
            ports = tuple((p, p) for p in DEFAULT_PORTS[scheme]) if scheme else None
        elif port_text == "*":
            ports = None
        elif "-" in port_text:
            lo_text, _, hi_text = port_text.partition("-")
            lo, hi = _parse_port(lo_text, port_col), _parse_port(hi_text, port_col + len(lo_text) + 1)
            if lo > hi:
                raise PatternError(f"empty port range `{port_text}`", port_col)
            ports = ((lo, hi),)
        else:
            port = _parse_port(port_text, port_col)
            ports = ((port, port),)
        path = None if path_text in (None, "/**") else _path_glob(path_text, len(url) - len(path_text))
        return cls(text, scheme, host, ports, path, methods)

    @property
    def restricted(self) -> bool:
        """Does the pattern name paths or methods (so it admits only some requests of a connection)?"""
        return self.path is not None or self.methods is not None

    @cached_property
    def _network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        try:
            return ipaddress.ip_network(self.host)
        except ValueError:
            return None

    @property
    def matches_everything(self) -> bool:
        return self.host == "*" and self.ports is None and self.scheme is None

    @property
    def names_hosts(self) -> bool:
        """Does the pattern name its hosts one by one (an exact name or one address)? A secret may be bound
        only to such patterns: `*`, `*.example.com` or a network also covers hosts nobody named."""
        network = self._network
        return not self.host.startswith("*") and (network is None or network.num_addresses == 1)

    def matches_host(self, host: str) -> bool:
        if self.host == "*":
            return True
        network = self._network
        if network is not None:
            try:
                return ipaddress.ip_address(host) in network
            except ValueError:
                return False
        if self.host.startswith("**."):
            return host.endswith(self.host[2:])
        if self.host.startswith("*."):
            suffix = self.host[1:]
            return host.endswith(suffix) and "." not in host[: -len(suffix)] and len(host) > len(suffix)
        return host == self.host

    def matches_connection(self, endpoint: Endpoint) -> bool:
        """Scheme, port and host only: could some request on this connection match?"""
        if self.scheme is not None and self.scheme != endpoint.scheme:
            return False
        if self.ports is not None and not any(lo <= endpoint.port <= hi for lo, hi in self.ports):
            return False
        return self.matches_host(endpoint.host)

    def matches(self, endpoint: Endpoint) -> bool:
        """A request matches on its method and path too; a connection matches a pattern naming paths or methods
        only when every request on it will be decided again (`inspected`)."""
        if not self.matches_connection(endpoint):
            return False
        if self.path is None and self.methods is None:
            return True
        if endpoint.path is None:
            return endpoint.inspected
        if self.methods is not None and endpoint.method not in self.methods:
            return False
        return self.path is None or self.path.matches(endpoint.path)

    def covers(self, inner: EndpointPattern) -> bool:
        """Does every endpoint `inner` matches also match this pattern?"""
        if self.methods is not None and (inner.methods is None or not inner.methods <= self.methods):
            return False
        if self.path is not None and (inner.path is None or not inner.path.within((self.path,))):
            return False
        if self.scheme is not None and self.scheme != inner.scheme:
            return False
        if self.ports is not None and (inner.ports is None or not all(
                any(olo <= lo and hi <= ohi for olo, ohi in self.ports) for lo, hi in inner.ports)):
            return False
        if self.host == "*":
            return True
        if inner.host == "*":
            return False
        if self._network is not None:
            inner_net = inner._network
            return inner_net is not None and inner_net.version == self._network.version and \
                inner_net.subnet_of(self._network)
        if inner.host.startswith("**."):
            return self.host.startswith("**.") and inner.host.endswith(self.host[2:])
        if inner.host.startswith("*."):
            return (self.host.startswith("**.") and inner.host[1:].endswith(self.host[2:])) or \
                self.host == inner.host
        return self.matches_host(inner.host)

    def example(self) -> Endpoint:
        """One concrete endpoint this pattern matches (for lints and `ifc check` paths)."""
        host = self.host
        if host == "*":
            host = "example.com"
        elif self._network is not None:
            host = str(self._network.network_address)
        elif host.startswith("**."):
            host = "a.b" + host[2:]
        elif host.startswith("*."):
            host = "a" + host[1:]
        port = self.ports[0][0] if self.ports else DEFAULT_PORTS.get(self.scheme or "https", (443,))[0]
        if not self.restricted:
            return Endpoint(self.scheme or PORT_SCHEMES.get(port, "tcp"), host, port)
        method = min(self.methods) if self.methods else "GET"
        path = self.path.examples()[0] if self.path is not None else ""
        return Endpoint(self.scheme or PORT_SCHEMES.get(port, "tcp"), host, port, method, path)

    def __str__(self) -> str:
        return self.text


def _split_methods(text: str) -> tuple[str, frozenset[str] | None]:
    """`URL methods GET,POST` → (URL, {GET, POST}); the language writes `"URL" methods GET, POST`."""
    url, word, listed = text.partition(METHODS_WORD)
    if not word:
        return text, None
    methods = [m.strip() for m in listed.split(",")]
    for method in methods:
        if not _METHOD.match(method):
            raise PatternError(f"`{method}` is not an HTTP method", len(url) + len(METHODS_WORD),
                               help="methods are tokens such as `GET` or `POST`")
    return url, frozenset(methods)


def methods_text(url: str, methods: list[str]) -> str:
    """The text of a pattern with methods, as `EndpointPattern.parse` reads it (grants and token rights)."""
    return f"{url}{METHODS_WORD}{','.join(methods)}" if methods else url


def _path_glob(text: str, offset: int) -> Glob:
    """A URL path glob: anchored at `/`, and exact (unlike a file glob, `/acme` does not cover `/acme/x`)."""
    if not text.strip("/"):
        return Glob(text, ())  # the root path only
    try:
        tokens = glob_tokens(text)
    except PatternError as exc:
        raise PatternError(exc.message, offset + exc.column, exc.help) from None
    return Glob(text, tokens[:-1])  # without ("desc",): a path match covers nothing beneath it
