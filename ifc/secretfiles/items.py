"""What a recognised secret file is made of: the values in it (each a key path and the exact bytes it occupies),
and the two ways through it — serving (each value's bytes replaced by a sentinel) and writing back (each
sentinel the sandbox left unchanged replaced by the exact bytes it stood for).

Every format parser returns a `Parsed`, or raises `Unparsable`: a file that cannot be taken apart completely is
never served half-replaced, it keeps today's taint semantics (the caller serves it as it is, labelled secret).
Comments are values too (kind `comment`): a commented-out old key is as secret as a live one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KEY_SEP = "."


class Unparsable(ValueError):
    """The content is not (all) of the format asked for: it is not sentinelised."""


@dataclass(frozen=True)
class Item:
    """One value in a file: `raw` = data[start:end] is replaced on serving by `left + sentinel + right`
    (`left`/`right` are quotes where the format needs a string in place of, say, a number). `value` is what a
    program reading the file would get (escapes decoded): the bytes the egress hook sends in the sentinel's place."""

    path: tuple[str, ...]
    start: int
    end: int
    value: bytes
    kind: str = "value"  # value | comment
    left: bytes = b""
    right: bytes = b""

    @property
    def key(self) -> str:
        return join_key(self.path)


@dataclass(frozen=True)
class Parsed:
    format: str
    data: bytes
    items: tuple[Item, ...] = field(default=())

    @property
    def values(self) -> tuple[Item, ...]:
        return tuple(i for i in self.items if i.kind == "value")

    def keys(self) -> list[str]:
        return [i.key for i in self.values]


def join_key(path: tuple[str, ...]) -> str:
    """`("auths", "https://index.docker.io/v1/", "auth")` → `auths.https://index\\.docker\\.io/v1/.auth`: segments
    joined with `.`, a `.` or `\\` inside a segment escaped with `\\` (the policy's `key "..."` spelling)."""
    return KEY_SEP.join(s.replace("\\", "\\\\").replace(".", "\\.") for s in path)


def split_key(key: str) -> tuple[str, ...]:
    """The inverse of `join_key`."""
    out, cur, i = [], [], 0
    while i < len(key):
        c = key[i]
        if c == "\\" and i + 1 < len(key):
            cur.append(key[i + 1])
            i += 2
            continue
        if c == KEY_SEP:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return tuple(out)


def key_matches(item: Item, key: str) -> bool:
    """Does the policy's `key` name this value? Either by the escaped path, or — for a one-segment key such as
    `.npmrc`'s `//registry.npmjs.org/:_authToken` — by the segment written as it is."""
    return item.kind == "value" and (item.key == key or (len(item.path) == 1 and item.path[0] == key))


class ByteOffsets:
    """Character index → byte offset in the UTF-8 encoding of `text` (parsers work on text, spans are bytes)."""

    def __init__(self, text: str):
        self.text = text
        self.ascii = text.isascii()
        self._cache: dict[int, int] = {}

    def __call__(self, i: int) -> int:
        if self.ascii:
            return i
        got = self._cache.get(i)
        if got is None:
            got = self._cache[i] = len(self.text[:i].encode())
        return got


def decode_utf8(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unparsable(f"not UTF-8 at byte {exc.start}") from None
    if text.startswith("\ufeff"):
        raise Unparsable("starts with a byte-order mark")
    return text


def check_spans(parsed: Parsed) -> Parsed:
    """Spans in order and disjoint; a parser bug here would serve real bytes, so it is refused, not trusted."""
    last = 0
    for item in parsed.items:
        if item.start < last or item.end < item.start or item.end > len(parsed.data):
            raise Unparsable("overlapping values")
        last = item.end
    return parsed
