"""Serving a parsed secret file with sentinels, and writing the sandbox's version back.

`Sentinels` is one run's table: a value keeps its sentinel for the whole run (the agent reads `.env` twice and
sees the same text; what it wrote back is recognised), and a sentinel is never reused across runs. Restoring is
textual — each sentinel, exactly as it was served (with the quotes it was served in), becomes the bytes it stood
for — so content the sandbox did not change comes back byte for byte, whatever it did around it, and a value
the sandbox replaced stays the sandbox's own (the file stays labelled secret: it still holds real values).
"""

from __future__ import annotations

import secrets as _random
import threading
from dataclasses import dataclass

from ifc.secretfiles.items import Item, Parsed

SENTINEL_PREFIX = "ifc-sentinel-"  # the egress hook's prefix (ifc.enforce.secrets): one scanner finds both


def new_sentinel() -> bytes:
    return (SENTINEL_PREFIX + _random.token_hex(16)).encode()


class Unmergeable(ValueError):
    """What the sandbox wrote cannot take the real values back safely: the write is refused, the file kept."""

    def __init__(self, file: str, why: str):
        super().__init__(f"`{file}`: {why}")
        self.file = file
        self.why = why


@dataclass(frozen=True)
class Placed:
    """A value served in one file: its sentinel, what was put in its place, and the bytes that go back."""

    file: str
    item: Item
    sentinel: bytes

    @property
    def inserted(self) -> bytes:
        return self.item.left + self.sentinel + self.item.right


@dataclass(frozen=True)
class Served:
    data: bytes
    placed: tuple[Placed, ...]

    @property
    def replaced(self) -> int:
        return len(self.placed)


class Sentinels:
    """One run's sentinels for file values, keyed by (file, key path, kind, raw bytes): the same value in the same
    place keeps its sentinel; a changed value gets a new one (the old one keeps restoring what it stood for)."""

    def __init__(self, make=new_sentinel):
        self._make = make
        self._lock = threading.Lock()
        self._by_value: dict[tuple, Placed] = {}
        # per file: sentinel → [(left, right, real bytes, item)], the ways it was served (one per quoting, in
        # practice), each with the value it stood for: it goes back only to that key
        self._by_sentinel: dict[str, dict[bytes, list[tuple[bytes, bytes, bytes, Item]]]] = {}
        self._lengths: set[int] = set()

    def _remember(self, placed: Placed, raw: bytes) -> None:
        ways = self._by_sentinel.setdefault(placed.file, {}).setdefault(placed.sentinel, [])
        ways.append((placed.item.left, placed.item.right, raw, placed.item))
        self._lengths.add(len(placed.sentinel))

    @staticmethod
    def _ident(file: str, parsed: Parsed, item: Item) -> tuple:
        return (file, item.path, item.kind, item.left, item.right, parsed.data[item.start:item.end])

    def preset(self, file: str, parsed: Parsed, item: Item, sentinel: bytes) -> Placed:
        """Give one value a sentinel made beforehand (a policy binding's, which the vault already holds)."""
        with self._lock:
            placed = self._by_value[self._ident(file, parsed, item)] = Placed(file, item, sentinel)
            self._remember(placed, parsed.data[item.start:item.end])
            return placed

    def place(self, file: str, parsed: Parsed, item: Item) -> Placed:
        ident = self._ident(file, parsed, item)
        with self._lock:
            got = self._by_value.get(ident)
            if got is None:
                got = self._by_value[ident] = Placed(file, item, self._make())
                self._remember(got, ident[-1])
            return got

    def serve(self, file: str, parsed: Parsed) -> Served:
        out, placed, at = [], [], 0
        for item in parsed.items:
            p = self.place(file, parsed, item)
            out += [parsed.data[at:item.start], p.inserted]
            placed.append(p)
            at = item.end
        out.append(parsed.data[at:])
        return Served(b"".join(out), tuple(placed))

    def restore(self, file: str, written: bytes) -> bytes:
        """The bytes to store for what the sandbox wrote to `file`: every sentinel it left as served becomes the
        real bytes again. Sentinels of other files stay what they are (a copied sentinel is worthless there).

        A real value goes back only to where it was: the result is parsed again and each restored span must be
        exactly one value of it under the same key (a comment: one comment), else `Unmergeable` — a sentinel
        moved into a key, a section name or the middle of another value would put the real bytes where the next
        serving shows them, and one moved to another key (`NEXT_PUBLIC_KEY=`, `SENTRY_DSN=`) would hand the real
        value to whatever the host's tools do with that key (a public bundle, another service)."""
        with self._lock:
            table = dict(self._by_sentinel.get(file, {}))
            lengths = sorted(self._lengths, reverse=True)
        needle = SENTINEL_PREFIX.encode()
        if not table or needle not in written:
            return written
        out, at, size, spans = [], 0, 0, []
        while True:
            i = written.find(needle, at)
            if i == -1:
                break
            hit = _match_at(written, i, table, lengths, at)
            if hit is None:
                out.append(written[at:i + 1])
                size += i + 1 - at
                at = i + 1
                continue
            start, end, raw, item = hit
            out += [written[at:start], raw]
            size += start - at
            spans.append((size, size + len(raw), item))
            size += len(raw)
            at = end
        out.append(written[at:])
        restored = b"".join(out)
        if spans:
            from ifc.secretfiles.registry import parse  # the registry imports this module's users, not this one

            parsed = parse(file, restored)
            if parsed is None:
                raise Unmergeable(file, "it no longer parses with its real values put back")
            at_items = {(item.start, item.end): item for item in parsed.items}
            for start, end, was in spans:
                now = at_items.get((start, end))
                if now is None:
                    raise Unmergeable(file, "a sentinel was moved out of a value's place")
                if now.kind != was.kind or (was.kind == "value" and now.path != was.path):
                    raise Unmergeable(file, f"the sentinel of `{was.key}` was moved to `{now.key}`: a real value "
                                      "goes back only under its own key")
        return restored

    def placed(self) -> list[Placed]:
        with self._lock:
            return list(self._by_value.values())


def _match_at(data: bytes, i: int, table: dict[bytes, list[tuple[bytes, bytes, bytes, Item]]], lengths: list[int],
              floor: int) -> tuple[int, int, bytes, Item] | None:
    """The served rendering (the sentinel starting at `i`, with the quotes it was served in) found there: (start,
    end, real bytes), the widest rendering first; None when no sentinel of this file starts at `i`."""
    for length in lengths:
        ways = table.get(data[i:i + length])
        if not ways:
            continue
        best = None
        for left, right, raw, item in ways:
            start, end = i - len(left), i + length + len(right)
            if start >= floor and data.startswith(left, start) and data.startswith(right, i + length) and \
                    (best is None or end - start > best[1] - best[0]):
                best = (start, end, raw, item)
        if best is not None:
            return best
    return None
