"""JSON files (docker's `config.json` with `auths.HOST.auth`, GCP service-account keys with `private_key`,
any other `*.json` labelled secret): every scalar leaf is a value under its key path (array positions are
numbers: `keys.0`). Strings are replaced inside their quotes; numbers, booleans and null by a quoted sentinel.
The scanner's result is checked against the json module: the file must parse, and each leaf we replace must
decode to what json reads there, with nothing left over."""

from __future__ import annotations

import json
import re

from ifc.secretfiles.items import ByteOffsets, Item, Parsed, Unparsable, check_spans, decode_utf8

_WS = re.compile(r"[ \t\r\n]*")
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')
_SCALAR = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")


class _Scanner:
    def __init__(self, text: str):
        self.text = text
        self.off = ByteOffsets(text)
        self.items: list[Item] = []
        self.leaves: list[tuple[tuple[str, ...], object]] = []

    def ws(self, i: int) -> int:
        return _WS.match(self.text, i).end()

    def expect(self, i: int, c: str) -> int:
        if not self.text.startswith(c, i):
            raise Unparsable(f"expected `{c}` at character {i}")
        return i + 1

    def value(self, i: int, path: tuple[str, ...]) -> int:
        i = self.ws(i)
        c = self.text[i:i + 1]
        if c == "{":
            i = self.ws(i + 1)
            if self.text.startswith("}", i):
                return i + 1
            while True:
                m = _STRING.match(self.text, i)
                if not m:
                    raise Unparsable(f"expected a key at character {i}")
                key = json.loads(m.group(0))
                i = self.expect(self.ws(m.end()), ":")
                i = self.ws(self.value(i, (*path, key)))
                if self.text.startswith(",", i):
                    i = self.ws(i + 1)
                    continue
                return self.expect(i, "}")
        if c == "[":
            i = self.ws(i + 1)
            if self.text.startswith("]", i):
                return i + 1
            n = 0
            while True:
                i = self.ws(self.value(i, (*path, str(n))))
                n += 1
                if self.text.startswith(",", i):
                    i += 1
                    continue
                return self.expect(i, "]")
        if c == '"':
            m = _STRING.match(self.text, i)
            if not m:
                raise Unparsable(f"bad string at character {i}")
            decoded = json.loads(m.group(0))
            if m.end() - i > 2:
                self.items.append(Item(path, self.off(i + 1), self.off(m.end() - 1), decoded.encode()))
            self.leaves.append((path, decoded))
            return m.end()
        m = _SCALAR.match(self.text, i)
        if not m:
            raise Unparsable(f"unexpected character at {i}")
        self.items.append(Item(path, self.off(i), self.off(m.end()), m.group(0).encode(), left=b'"', right=b'"'))
        self.leaves.append((path, json.loads(m.group(0))))
        return m.end()


def _leaves(doc, path=()):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(doc, list):
        for n, v in enumerate(doc):
            yield from _leaves(v, (*path, str(n)))
    else:
        yield path, doc


def parse(data: bytes) -> Parsed:
    text = decode_utf8(data)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise Unparsable(f"not JSON: {exc}") from None
    scanner = _Scanner(text)
    end = scanner.ws(scanner.value(0, ()))
    if end != len(text):
        raise Unparsable("text after the JSON value")
    # A duplicate key: json keeps the last, every occurrence is served replaced; collapsed the same way, the
    # leaves must agree.
    if dict(scanner.leaves) != dict(_leaves(doc)):
        raise Unparsable("values read differently by the json module")
    return check_spans(Parsed("json", data, tuple(scanner.items)))
