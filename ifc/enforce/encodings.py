"""Responses from hosts that saw a real secret, made safe to hand to the sandbox whatever their encoding.

The scrubber (`ifc.enforce.secrets.StreamScrubber`) masks a real value where its literal bytes appear. A
bound API that echoes the credential it received gzip-compressed, base64-encoded or percent-encoded would
hand the sandbox the real value past it. So, for every exchange with an endpoint a secret is bound to:

  request   `identity_only(headers)`: `Accept-Encoding: identity`, no `TE` — an honest server then sends
            bytes the scrubber can read;
  response  `BodyScrubber(vault, content_encoding, reveal)`: decodes gzip, deflate and br (in any stack the
            `Content-Encoding` lists), masks real values, and emits identity-encoded bytes; any other
            coding is refused before a byte is relayed (`EncodingRefused`: the hook answers 502). It streams
            in bounded pieces and stops at `max_decoded` bytes out of any one layer (a zip bomb is refused,
            not inflated);
  detector  `Reveals`: forms of a real value the literal match misses — other casings, hex, base64 and
            base64url at any alignment, percent-encoding, JSON's `\\/` — are masked as well and *reported*
            (`reveal(held)`, before the bytes holding them are handed on), so the hook raises the run's
            taint to the secret's label (`Monitor.absorb_secret`): a server that echoes the value in one
            form may echo it in one we do not know.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar
from urllib.parse import quote

from ifc.enforce.secrets import Held, StreamScrubber, Vault

try:  # br is decoded where the `brotli` package is installed (a dependency), refused where it is not
    import brotli
except ImportError:  # pragma: no cover - the project depends on it
    brotli = None

PIECE = 1 << 16  # about the most a decoder hands on at once: memory per response stays bounded
MAX_DECODED = 256 << 20  # what one layer may inflate to before the response is refused as a bomb
MIN_ENCODED = 8  # values shorter than this are not looked for in encoded forms (too many false matches)
# headers that describe the encoded bytes and are wrong once they are decoded
_ENCODED_ONLY = frozenset({"content-encoding", "content-length", "transfer-encoding", "content-md5", "digest",
                           "content-digest", "repr-digest"})

_URLSAFE = bytes.maketrans(b"+/", b"-_")

H = TypeVar("H", str, bytes)


class EncodingRefused(Exception):
    """A response the hook cannot make safe: `reason` is one line for the client (502) and the log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------------------------------ request side

def identity_only(headers: Sequence[tuple[H, H]]) -> list[tuple[H, H]]:
    """The request's headers asking for an unencoded response: `Accept-Encoding` becomes `identity`, `TE`
    (transfer codings other than chunked) goes. Names and values keep their type (str or bytes)."""
    out = [(n, v) for n, v in headers if _low(n) not in ("accept-encoding", "te")]
    if headers and isinstance(headers[0][0], bytes):
        out.append((b"Accept-Encoding", b"identity"))  # type: ignore[arg-type]
    else:
        out.append(("Accept-Encoding", "identity"))  # type: ignore[arg-type]
    return out


def _low(name: str | bytes) -> str:
    return (name.decode("latin-1") if isinstance(name, bytes) else name).strip().lower()


def codings(content_encoding: str | bytes | None) -> list[str]:
    """The content codings in the order they were applied (RFC 9110 §8.4), `identity` dropped; refuses
    what cannot be decoded here."""
    text = _low(content_encoding or "")
    out = []
    for token in (t.strip() for t in text.split(",")):
        if token in ("", "identity"):
            continue
        if token == "x-gzip":
            token = "gzip"
        if token not in ("gzip", "deflate", "br"):
            raise EncodingRefused(f"the response is `{token}`-encoded, which the hook cannot decode to mask a "
                                  "secret in it (it decodes gzip, deflate and br)")
        if token == "br" and brotli is None:
            raise EncodingRefused("the response is br-encoded and the `brotli` package is not installed")
        out.append(token)
    return out


# ------------------------------------------------------------------------------------------ decoders

class _Zlib:
    """gzip (members one after another, as RFC 1952 allows) or deflate (zlib-wrapped, or raw as some
    servers send it: told apart by the zlib header's check bits)."""

    def __init__(self, coding: str):
        self.coding = coding
        self.inflate = zlib.decompressobj(31) if coding == "gzip" else None
        self.start = b""  # deflate: the first two bytes, to tell zlib from raw
        self.fed = False

    def decode(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        self.fed = True
        if self.inflate is None:
            data = self.start + data
            if len(data) < 2:
                self.start = data
                return
            zlib_header = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self.inflate = zlib.decompressobj(15 if zlib_header else -15)
        inflate = self.inflate
        while True:
            if inflate.eof:
                if not data:
                    return
                if self.coding != "gzip":
                    raise EncodingRefused("bytes after the end of the deflate stream")
                inflate = self.inflate = zlib.decompressobj(31)  # the next member
            try:
                out = inflate.decompress(data, PIECE)
            except zlib.error as exc:
                raise EncodingRefused(f"the {self.coding} body does not decode ({exc})") from None
            data = inflate.unconsumed_tail or inflate.unused_data
            if out:
                yield out
            if not data and not inflate.eof and len(out) < PIECE:
                return

    def end(self) -> None:
        if self.fed and (self.inflate is None or not self.inflate.eof):
            raise EncodingRefused(f"the {self.coding} body ended before its compressed stream did")


class _Brotli:
    def __init__(self):
        self.inflate = brotli.Decompressor()
        self.fed = False

    def decode(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        self.fed = True
        if self.inflate.is_finished():
            raise EncodingRefused("bytes after the end of the br stream")
        try:
            out = self.inflate.process(data, output_buffer_limit=PIECE)
            while out:  # a limited call may leave output inside (even when it could take input): drain it
                yield out
                out = self.inflate.process(b"", output_buffer_limit=PIECE)
        except brotli.error as exc:
            raise EncodingRefused(f"the br body does not decode ({exc})") from None

    def end(self) -> None:
        if self.fed and not self.inflate.is_finished():
            raise EncodingRefused("the br body ended before its compressed stream did")


# ------------------------------------------------------------------------------------------ the detector

def _base64_forms(value: bytes) -> set[bytes]:
    """The base64 text of `value` wherever it starts in a longer encoded string: for each of the three
    alignments, only the characters made of the value's bits alone (those next to other bytes vary)."""
    forms = set()
    for pad in range(3):
        text = base64.b64encode(b"\0" * pad + value)
        first = -(-pad * 8 // 6)  # the first character whose six bits all come from the value
        last = (pad + len(value)) * 8 // 6  # one past the last such character
        forms.add(text[first:last])
    return forms


class Reveals:
    """The forms a real value takes that the literal scrubber misses.

    Masking them keeps what the hook can see from the sandbox; reporting them lets the run's taint rise
    for what it cannot (an encoding not listed here, in the same response). Searched with `bytes.find` in a
    lowercased copy of the data, every form lowercased too (so any casing matches; base64 matched without
    regard to case costs a false match once in 2^(5·len) or so): a compiled alternation of the same forms
    ran at 14 MB/s, this at hundreds (bench/bench_scrub.py)."""

    def __init__(self, vault: Vault):
        forms: dict[bytes, Held] = {}
        for held in (h for h in vault.held if len(h.value) >= MIN_ENCODED):
            value = held.value
            found = {value, value.hex().encode(), "".join(f"%{b:02x}" for b in value).encode(),
                     quote(value, safe="").encode(), value.replace(b"/", b"\\/")}
            for form in _base64_forms(value):
                found |= {form, form.translate(_URLSAFE)}
            for form in found:
                forms.setdefault(form.lower(), held)
        self.forms = sorted(forms.items(), key=lambda item: len(item[0]), reverse=True)
        self.longest = len(self.forms[0][0]) if self.forms else 0

    def mask(self, data: bytes) -> tuple[bytes, list[Held]]:
        """`data` with every form found replaced by `*` (same length), and the secrets found."""
        if not self.forms:
            return data, []
        lowered = data.lower()
        found: dict[str, Held] = {}
        spans = []
        for form, held in self.forms:
            at = lowered.find(form)
            while at != -1:
                spans.append((at, at + len(form)))
                found[held.name] = held
                at = lowered.find(form, at + 1)
        if not spans:
            return data, []
        masked = bytearray(data)
        for start, end in spans:
            masked[start:end] = b"*" * (end - start)
        return bytes(masked), list(found.values())


class RevealWatch:
    """`Reveals` over a stream split at arbitrary points: the last `longest - 1` bytes are held back until
    the next piece, so a form that starts in what is handed on was wholly seen (and masked, and reported)
    before any of it was."""

    def __init__(self, reveals: Reveals, reveal: Callable[[Held], None]):
        self.reveals = reveals
        self.reveal = reveal
        self.keep = max(reveals.longest - 1, 0)
        self.tail = b""
        self.reported: set[str] = set()

    def feed(self, data: bytes) -> bytes:
        if not self.reveals.forms:
            return data
        masked, found = self.reveals.mask(self.tail + data if self.tail else data)
        self.report(found)
        cut = len(masked) - self.keep
        if cut <= 0:
            self.tail = masked
            return b""
        self.tail = masked[cut:]
        return masked[:cut]

    def flush(self) -> bytes:
        out, self.tail = self.tail, b""
        return out

    def report(self, found: list[Held]) -> None:
        for held in found:
            if held.name not in self.reported:
                self.reported.add(held.name)
                self.reveal(held)


# ------------------------------------------------------------------------------------------ the response

class BodyScrubber:
    """One response body from an endpoint a secret is bound to: decoded, scrubbed, watched, re-emitted
    identity-encoded. Built from the response's `Content-Encoding` before anything is relayed, so an
    encoding it cannot decode is refused (`EncodingRefused`) while the hook can still answer 502.

    `feed(chunk)` and `finish()` yield the bytes to relay, each about `PIECE` bytes at most (br overshoots
    by up to half) plus what a scanner held back; exhaust each before the next call. `reveal(held)` is
    called, before the bytes holding a non-literal form of `held`'s real value are yielded, once per secret.
    Mid-body failures (`EncodingRefused` from `feed`/`finish`: a damaged stream, a bomb) come after the
    head was relayed: the hook then ends the client connection without the body's end, and logs why."""

    def __init__(self, vault: Vault, content_encoding: str | bytes | None, reveal: Callable[[Held], None], *,
                 max_decoded: int = MAX_DECODED, ranged: bool = False):
        layers = codings(content_encoding)
        if layers and ranged:
            raise EncodingRefused("a byte range of an encoded response cannot be decoded to mask a secret in it")
        self.decoding = bool(layers)
        self.layers = [_Brotli() if c == "br" else _Zlib(c) for c in reversed(layers)]
        self.out = [0] * len(self.layers)
        self.max_decoded = max_decoded
        self.scrub = StreamScrubber(vault)
        self.watch = RevealWatch(Reveals(vault), reveal)

    def headers(self, headers: Sequence[tuple[H, H]]) -> list[tuple[H, H]]:
        """The response's headers to relay: values scrubbed and watched like the body (an echo in a header
        is an echo); when the body is decoded, without the headers describing the encoded bytes (the hook
        frames the body itself: chunked to an HTTP/1.1 client, else to the end of the connection) and with
        a strong ETag made weak (the bytes differ, the content does not). Lengths stay right otherwise:
        masking keeps them."""
        out = []
        for name, value in headers:
            low = _low(name)
            if self.decoding and low in _ENCODED_ONLY:
                continue
            raw = value if isinstance(value, bytes) else value.encode("latin-1")
            if self.decoding and low == "etag" and not raw.lower().startswith(b"w/"):
                raw = b"W/" + raw
            raw, found = self.watch.reveals.mask(self.scrub.vault.scrub(raw))
            self.watch.report(found)
            out.append((name, raw if isinstance(value, bytes) else raw.decode("latin-1")))
        return out  # type: ignore[return-value]

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        for piece in self._decoded(chunk, 0):
            out = self.watch.feed(self.scrub.feed(piece))
            if out:
                yield out

    def finish(self) -> Iterator[bytes]:
        """The rest, once the encoded body ended; refuses a compressed stream cut short."""
        for layer in self.layers:
            layer.end()
        out = self.watch.feed(self.scrub.flush()) + self.watch.flush()
        if out:
            yield out

    def _decoded(self, data: bytes, index: int) -> Iterator[bytes]:
        if index == len(self.layers):
            if data:
                yield data
            return
        for piece in self.layers[index].decode(data):
            self.out[index] += len(piece)
            if self.out[index] > self.max_decoded:
                raise EncodingRefused(f"the response inflates past {self.max_decoded} bytes (a decompression bomb?)")
            yield from self._decoded(piece, index + 1)
