"""`.netrc` (curl, git, pip, requests): whitespace-separated tokens `machine HOST login L password P account A`,
and `default`. Each login, password and account is a value under `HOST.login` etc. (`default.password` for the
default entry). `#` comment lines are values of kind `comment`. `macdef` (macros), quoted tokens or any other
token make the file unparsable."""

from __future__ import annotations

import re

from ifc.secretfiles.items import ByteOffsets, Item, Parsed, Unparsable, check_spans, decode_utf8

_TOKEN = re.compile(r"\S+")
_FIELDS = {"login", "password", "account"}


def parse(data: bytes) -> Parsed:
    text = decode_utf8(data)
    off = ByteOffsets(text)
    items: list[Item] = []
    tokens: list[tuple[int, int]] = []
    pos = 0
    for no, line in enumerate(text.split("\n"), 1):
        s = line.lstrip()
        if s.startswith("#"):
            start = pos + len(line) - len(s) + 1  # the marker stays, so the file still parses
            end = pos + len(line.rstrip("\r"))
            if end > start:
                items.append(Item((f"#{no}",), off(start), off(end), text[start:end].encode(), "comment"))
        else:
            tokens += [(pos + m.start(), pos + m.end()) for m in _TOKEN.finditer(line)]
        pos += len(line) + 1
    host: str | None = None
    i = 0
    values: list[Item] = []
    while i < len(tokens):
        word = text[tokens[i][0]:tokens[i][1]]
        if word == "machine":
            if i + 1 >= len(tokens):
                raise Unparsable("`machine` without a host")
            host = text[tokens[i + 1][0]:tokens[i + 1][1]]
            i += 2
        elif word == "default":
            host = "default"
            i += 1
        elif word in _FIELDS:
            if host is None or i + 1 >= len(tokens):
                raise Unparsable(f"`{word}` outside a machine entry")
            start, end = tokens[i + 1]
            value = text[start:end]
            if value.startswith('"') or "\\" in value:
                raise Unparsable("quoted or escaped tokens are not supported")
            values.append(Item((host, word), off(start), off(end), value.encode()))
            i += 2
        else:
            raise Unparsable(f"unexpected token `{word[:20]}`")
    items = sorted(items + values, key=lambda it: it.start)
    return check_spans(Parsed("netrc", data, tuple(items)))
