"""TOML files (`*.toml` labelled secret: `secrets.toml`, `.streamlit/secrets.toml`, `credentials.toml`): a subset
read line by line — `[table]` headers, `key = value` with bare, quoted or dotted keys, values that are one-line
strings (`"basic"` with escapes, `'literal'`), numbers, booleans and dates, `#` comments. Arrays, inline tables,
multi-line strings and `[[arrays of tables]]` make the file unparsable (it keeps today's taint semantics). The
result is checked against tomllib: every leaf it reads must be one we replace, with the same value."""

from __future__ import annotations

import re
import tomllib

from ifc.secretfiles.items import ByteOffsets, Item, Parsed, Unparsable, check_spans, decode_utf8

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\\n]|\\.)*"'
_LITERAL = r"'[^'\n]*'"
_KEYPART = rf"(?:{_BARE}|{_BASIC}|{_LITERAL})"
_KEY = rf"{_KEYPART}(?:[ \t]*\.[ \t]*{_KEYPART})*"
_TABLE = re.compile(rf"[ \t]*\[[ \t]*({_KEY})[ \t]*\][ \t]*(#.*)?\r?$")
_PAIR = re.compile(rf"[ \t]*({_KEY})[ \t]*=[ \t]*")
_STRING = re.compile(rf"{_BASIC}|{_LITERAL}")
_OTHER = re.compile(r"[0-9A-Za-z+\-_.:]+(?: [0-9][0-9:.+\-Z]*)?")  # numbers, booleans, dates and times
_REST = re.compile(r"[ \t]*(#.*?)?\r?$")


def _key(text: str) -> tuple[str, ...]:
    parts = re.findall(_KEYPART, text)
    return tuple(tomllib.loads(f"x = {p}")["x"] if p[0] in "\"'" else p for p in parts)


def parse(data: bytes) -> Parsed:
    text = decode_utf8(data)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise Unparsable(f"not TOML: {exc}") from None
    off = ByteOffsets(text)
    items: list[Item] = []
    table: tuple[str, ...] = ()
    pos = 0
    for no, line in enumerate(text.split("\n"), 1):
        base = pos
        pos += len(line) + 1

        def comment(m: re.Match, group: int, base: int = base, no: int = no) -> None:
            if m.group(group) and len(m.group(group)) > 1:  # the `#` stays, so the file still parses
                s, e = base + m.start(group) + 1, base + m.end(group)
                items.append(Item((f"#{no}",), off(s), off(e), text[s:e].encode(), "comment"))

        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            m = re.match(r"[ \t]*(#.*?)\r?$", line)
            comment(m, 1)
            continue
        if m := _TABLE.match(line):
            table = _key(m.group(1))
            comment(m, 2)
            continue
        m = _PAIR.match(line)
        if not m:
            raise Unparsable(f"line {no}: only `[table]` and `key = value` lines are supported")
        path = table + _key(m.group(1))
        at = m.end()
        if line.startswith(('"""', "'''"), at):
            raise Unparsable(f"line {no}: multi-line strings are not supported")
        if s := _STRING.match(line, at):
            value = tomllib.loads(f"x = {s.group(0)}")["x"]
            if len(s.group(0)) > 2:
                items.append(Item(path, off(base + at + 1), off(base + s.end() - 1), value.encode()))
            end = s.end()
        elif o := _OTHER.match(line, at):
            raw = o.group(0).rstrip()
            items.append(Item(path, off(base + at), off(base + at + len(raw)), raw.encode(), left=b'"', right=b'"'))
            end = at + len(raw)
        else:
            raise Unparsable(f"line {no}: arrays and inline tables are not supported")
        rest = _REST.match(line, end)
        if not rest:
            raise Unparsable(f"line {no}: text after the value")
        comment(rest, 1)
    parsed = check_spans(Parsed("toml", data, tuple(items)))
    _cross_check(doc, parsed)
    return parsed


def _leaves(doc, path=()):
    for k, v in doc.items():
        if isinstance(v, dict):
            yield from _leaves(v, (*path, k))
        else:
            yield (*path, k), v


def _cross_check(doc: dict, parsed: Parsed) -> None:
    try:
        _compare(doc, parsed)
    except tomllib.TOMLDecodeError as exc:
        raise Unparsable(f"not TOML: {exc}") from None


def _compare(doc: dict, parsed: Parsed) -> None:
    theirs = {p: v for p, v in _leaves(doc) if v != ""}
    ours = {}
    for item in parsed.values:
        raw = parsed.data[item.start:item.end].decode()
        ours[item.path] = tomllib.loads(f"x = {raw}")["x"] if item.left else item.value.decode()
    if ours != theirs or len(ours) != len(parsed.values):
        raise Unparsable("values read differently by tomllib")
