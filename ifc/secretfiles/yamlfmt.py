"""YAML files (`*.yaml`, `*.yml`: Kubernetes secrets, CI credentials, app settings), read with PyYAML's safe
parser, whose events carry the exact character span of every scalar. Every value scalar is replaced (plain ones
as they stand, quoted ones inside their quotes); comments — a `#` outside every scalar, at a line's start or after
a blank — too. What the parser cannot hand over as spans that stay valid when replaced makes the file
unparsable: block scalars (`|`, `>`), anchors and aliases (one value in two places), explicit tags, directives,
keys that are not scalars, more than one document."""

from __future__ import annotations

import yaml

from ifc.secretfiles.items import ByteOffsets, Item, Parsed, Unparsable, check_spans, decode_utf8


class _Frame:
    __slots__ = ("index", "key", "kind", "want_key")

    def __init__(self, kind: str):
        self.kind = kind  # map | seq
        self.want_key = kind == "map"
        self.key: str | None = None
        self.index = 0

    def position(self) -> str:
        return self.key if self.kind == "map" else str(self.index)

    def advance(self) -> None:
        if self.kind == "map":
            self.want_key, self.key = True, None
        else:
            self.index += 1


def parse(data: bytes) -> Parsed:
    text = decode_utf8(data)
    try:
        events = list(yaml.parse(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise Unparsable(f"not YAML: {str(exc).splitlines()[0]}") from None
    off = ByteOffsets(text)
    items: list[Item] = []
    scalars: list[tuple[int, int]] = []  # every scalar's characters, keys included: comments lie outside them
    stack: list[_Frame] = []
    documents = 0
    for ev in events:
        if isinstance(ev, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1 or ev.version or ev.tags:
                raise Unparsable("directives or more than one document")
            continue
        if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None) or getattr(ev, "tag", None):
            raise Unparsable("anchors, aliases and explicit tags are not supported")
        top = stack[-1] if stack else None
        if isinstance(ev, yaml.ScalarEvent):
            start, end = ev.start_mark.index, ev.end_mark.index
            scalars.append((start, end))
            if top is not None and top.want_key:
                top.key, top.want_key = ev.value, False
                continue
            if ev.style in ("|", ">"):
                raise Unparsable("block scalars are not supported")
            path = tuple(f.position() for f in stack)
            if ev.style in ("'", '"'):
                start, end = start + 1, end - 1
            if end > start:
                items.append(Item(path, off(start), off(end), ev.value.encode()))
            if top is not None:
                top.advance()
        elif isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if top is not None and top.want_key:
                raise Unparsable("a key that is not a scalar")
            stack.append(_Frame("map" if isinstance(ev, yaml.MappingStartEvent) else "seq"))
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            stack.pop()
            if stack:
                stack[-1].advance()
    items += _comments(text, scalars, off)
    return check_spans(Parsed("yaml", data, tuple(sorted(items, key=lambda i: i.start))))


def _comments(text: str, scalars: list[tuple[int, int]], off: ByteOffsets) -> list[Item]:
    """`#` outside every scalar, at a line's start or after a blank, to the end of its line (the `#` stays)."""
    out, spans, at, line = [], sorted(scalars), 0, 1
    k = 0
    i = text.find("#")
    while i != -1:
        while k < len(spans) and spans[k][1] <= i:
            k += 1
        inside = k < len(spans) and spans[k][0] <= i < spans[k][1]
        if not inside and (i == 0 or text[i - 1] in " \t\n"):
            end = text.find("\n", i)
            end = len(text) if end == -1 else end
            stop = end - 1 if end > i and text[end - 1] == "\r" else end
            line += text.count("\n", at, i)
            at = i
            if stop > i + 1:
                out.append(Item((f"#{line}",), off(i + 1), off(stop), text[i + 1:stop].encode(), "comment"))
            i = text.find("#", end)
            continue
        i = text.find("#", i + 1)
    return out
