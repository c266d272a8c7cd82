"""`.env` files as python-dotenv, docker compose and most loaders read them: `KEY=value`, an optional `export `,
values unquoted (an inline comment starts at ` #`), `'single'` (literal) or `"double"` (`\\n`, `\\"`, `\\\\`
escapes) quoted, quoted values spanning lines. Comment lines and inline comments are values of kind `comment`.
A line that is none of these makes the file unparsable: it is not served sentinelised."""

from __future__ import annotations

import re

from ifc.secretfiles.items import ByteOffsets, Item, Parsed, Unparsable, check_spans, decode_utf8

_KEY = re.compile(r"[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_.-]*)[ \t]*=[ \t]*")
_DOUBLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "'": "'"}


def _decode_double(raw: str) -> str:
    return re.sub(r"\\(.)", lambda m: _DOUBLE_ESCAPES.get(m.group(1), m.group(0)), raw, flags=re.S)


def _closing(text: str, at: int, quote: str) -> int:
    """Index of the quote closing a value that opened just before `at`."""
    i = at
    while i < len(text):
        c = text[i]
        if c == "\\" and quote == '"':
            i += 2
            continue
        if c == quote:
            return i
        i += 1
    raise Unparsable(f"unterminated {quote} value")


def parse(data: bytes) -> Parsed:
    text = decode_utf8(data)
    off = ByteOffsets(text)
    items: list[Item] = []
    pos = 0
    line_no = 0

    def comment(start: int, end: int) -> None:
        """A comment from its `#` at `start`: the marker stays (the file still parses), its text is replaced."""
        end = start + len(text[start:end].rstrip("\r"))
        if end > start + 1:
            items.append(Item((f"#{line_no}",), off(start + 1), off(end), text[start + 1:end].encode(), "comment"))

    while pos < len(text):
        line_no += 1
        eol = text.find("\n", pos)
        eol = len(text) if eol == -1 else eol
        line = text[pos:eol]
        stripped = line.strip()
        if not stripped:
            pos = eol + 1
            continue
        if stripped.startswith("#"):
            comment(pos + line.index("#"), eol)
            pos = eol + 1
            continue
        m = _KEY.match(text, pos, eol)
        if not m:
            raise Unparsable(f"line {line_no} is not `KEY=value`")
        key = m.group(1)
        at = m.end()
        if at < len(text) and text[at] in "'\"":
            quote = text[at]
            close = _closing(text, at + 1, quote)
            raw = text[at + 1:close]
            value = raw if quote == "'" else _decode_double(raw)
            items.append(Item((key,), off(at + 1), off(close), value.encode()))
            line_no += raw.count("\n")
            rest_end = text.find("\n", close)
            rest_end = len(text) if rest_end == -1 else rest_end
            rest = text[close + 1:rest_end]
            if rest.strip():
                if not rest.lstrip().startswith("#"):
                    raise Unparsable(f"line {line_no}: text after the closing quote")
                comment(close + 1 + rest.index("#"), rest_end)
            pos = rest_end + 1
            continue
        end = eol
        hash_at = re.search(r"[ \t]#", text[at:eol])
        if hash_at:
            end = at + hash_at.start()
            comment(at + hash_at.start() + 1, eol)
        value_end = end
        while value_end > at and text[value_end - 1] in " \t\r":
            value_end -= 1
        if value_end > at:
            if items and items[-1].kind == "comment" and items[-1].start >= off(value_end):
                # keep spans in order: the value goes before its inline comment
                items.insert(len(items) - 1, Item((key,), off(at), off(value_end), text[at:value_end].encode()))
            else:
                items.append(Item((key,), off(at), off(value_end), text[at:value_end].encode()))
        pos = eol + 1
    return check_spans(Parsed("dotenv", data, tuple(items)))
