"""INI files as Python's configparser reads them (AWS `credentials`/`config`, `.pypirc`, `.npmrc`): `[section]`,
`key = value` or `key: value`, whole-line `#`/`;` comments. Values are the rest of the line (configparser has no
inline comments by default, and the AWS CLI reads them the same way). Continuation lines (an indented line after
a value) and anything else make the file unparsable. The result is checked against configparser itself: every
value it reads must be one we replace, or the file is not served sentinelised.

`.npmrc` has no sections and only `=`: keys like `//registry.npmjs.org/:_authToken` are one segment. Only npm's
credential settings (and comments) are served as sentinels: the rest of an `.npmrc` (`registry`, `@scope:registry`,
`strict-ssl`, ...) is configuration npm must read as it is on every command, and holds nothing secret."""

from __future__ import annotations

import configparser
import dataclasses
import re

from ifc.secretfiles.items import ByteOffsets, Item, Parsed, Unparsable, check_spans, decode_utf8

_SECTION = re.compile(r"[ \t]*\[([^\]\n]+)\][ \t]*\r?$")
_OPTION = re.compile(r"([^=:\s][^=:\n]*?)[ \t]*[=:][ \t]*")
_NPM_OPTION = re.compile(r"([^=\s][^=\n]*?)[ \t]*=[ \t]*")
# npm's auth-related settings (docs.npmjs.com, "npmrc": auth-related configuration), bare or `//host/:`-scoped
NPM_CREDENTIALS = frozenset({"_auth", "_authToken", "_password", "password", "username", "email", "certfile",
                             "keyfile"})


def _lines(text: str):
    pos, no = 0, 0
    while pos < len(text):
        no += 1
        eol = text.find("\n", pos)
        eol = len(text) if eol == -1 else eol
        yield no, pos, eol
        pos = eol + 1


def _scan(data: bytes, fmt: str, sections: bool) -> Parsed:
    text = decode_utf8(data)
    off = ByteOffsets(text)
    items: list[Item] = []
    section: tuple[str, ...] = ()
    option = _OPTION if sections else _NPM_OPTION
    for no, pos, eol in _lines(text):
        line = text[pos:eol]
        stripped = line.strip()
        if not stripped:
            continue
        if stripped[0] in "#;":
            start = pos + line.index(stripped[0]) + 1  # the marker stays, so the file still parses
            end = pos + len(line.rstrip("\r"))
            if end > start:
                items.append(Item((f"#{no}",), off(start), off(end), text[start:end].encode(), "comment"))
            continue
        if line[0] in " \t":
            raise Unparsable(f"line {no}: continuation lines are not supported")
        if sections and (m := _SECTION.match(line)):
            section = (m.group(1).strip(),)
            continue
        m = option.match(line)
        if not m:
            raise Unparsable(f"line {no} is neither `[section]` nor `key = value`")
        if sections and not section:
            raise Unparsable(f"line {no}: a value before any `[section]`")
        start = pos + m.end()
        end = pos + len(line.rstrip(" \t\r"))
        if end > start:
            items.append(Item((*section, m.group(1).strip()), off(start), off(end), text[start:end].encode()))
    parsed = check_spans(Parsed(fmt, data, tuple(items)))
    _cross_check(text, parsed, sections)
    return parsed


def _cross_check(text: str, parsed: Parsed, sections: bool) -> None:
    """configparser must read exactly the values we found (same keys, same values, nothing else non-empty)."""
    cp = configparser.RawConfigParser(delimiters=("=", ":") if sections else ("=",), strict=False,
                                      interpolation=None, comment_prefixes=("#", ";"), empty_lines_in_values=False,
                                      default_section="\x00")  # `[DEFAULT]` is a section like any other here
    cp.optionxform = str  # keep case, as the AWS CLI's own reader does
    try:
        cp.read_string(text if sections else "[npmrc]\n" + text)
    except configparser.Error as exc:
        raise Unparsable(f"configparser: {str(exc).splitlines()[0]}") from None
    theirs = {}
    for name in cp.sections():
        for k, v in cp.items(name, raw=True):
            if v:
                theirs[((name,) if sections else ()) + (k,)] = v.encode()
    ours = {}
    for item in parsed.values:
        ours[item.path] = item.value  # the last one wins, as in configparser
    if theirs != ours:
        raise Unparsable("values read differently by configparser")


def parse(data: bytes) -> Parsed:
    return _scan(data, "ini", sections=True)


def parse_npmrc(data: bytes) -> Parsed:
    parsed = _scan(data, "npmrc", sections=False)
    return dataclasses.replace(parsed, items=tuple(
        i for i in parsed.items if i.kind == "comment" or i.path[-1].rpartition(":")[2] in NPM_CREDENTIALS))
