"""Deterministic binary encoding of tokens, and the `ifc1_` text form.

Layout (all integers big-endian; see docs/tokens.md for why each field exists):

    token    = version:u8 (=1)  flags:u8 (bit 0 = sealed, others 0)  nblocks:u8  block{nblocks}  proof
    block    = length:u16  payload[length]  signature[64]
    proof    = seed[32]        the private key for the last block's `next_key` (attenuable form)
             | signature[64]   that key's signature over the last block's signature (sealed form)
    payload  = field*          tags strictly increasing, each at most once, nothing after the last
    field    = 0x01 key_id[8]          host key that signed block 0             block 0 only, required
             | 0x02 token_id[16]       random id of the minted token            block 0 only, required
             | 0x03 not_before:u64     unix seconds                             required in block 0
             | 0x04 expires:u64        unix seconds, exclusive                  required in block 0
             | 0x05 n:u8 (len:u8 audience){n}     sorted, unique, n >= 1        required in block 0
             | 0x06 n:u16 right{n}     sorted by encoding, unique               required in block 0
             | 0x07 n:u16 right{n}     delegable: rights of derived tokens      block 0 only
             | 0x08 next_key[32]       Ed25519 public key for the next block    required
    right    = op:u8  [len:u8 tag  when op is declassify]  len:u16 pattern

Every value has exactly one encoding, so equal tokens are equal bytes and the token hash is a sound cache
key. The decoder parses hostile input: every length is bounded before it is used and any deviation from the
canonical form is `malformed`, never another exception.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from caps.errors import Reason, RightError, TokenError
from caps.rights import DECLASSIFY, MAX_PATTERN_BYTES, MAX_TAG_BYTES, OPS, Right

VERSION = 1
TEXT_PREFIX = "ifc1_"
FLAG_SEALED = 0x01

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32
KEY_ID_BYTES = 8
TOKEN_ID_BYTES = 16

MAX_BLOCKS = 16
MAX_PAYLOAD_BYTES = 16 * 1024
MAX_TOKEN_BYTES = 64 * 1024
MAX_TEXT_CHARS = len(TEXT_PREFIX) + (MAX_TOKEN_BYTES * 4 + 2) // 3
MAX_RIGHTS = 256
MAX_AUDIENCES = 16
MAX_AUDIENCE_BYTES = 128

TAG_KEY_ID = 0x01
TAG_TOKEN_ID = 0x02
TAG_NOT_BEFORE = 0x03
TAG_EXPIRES = 0x04
TAG_AUDIENCE = 0x05
TAG_RIGHTS = 0x06
TAG_DELEGABLE = 0x07
TAG_NEXT_KEY = 0x08

_OP_CODES = {op: i + 1 for i, op in enumerate(OPS)}
_OP_NAMES = {code: op for op, code in _OP_CODES.items()}
_U64_MAX = 2**64 - 1
_AUDIENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]*\Z")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*\Z")


def _malformed(message: str) -> TokenError:
    return TokenError(Reason.MALFORMED, message)


@dataclass(frozen=True, slots=True)
class Block:
    """The signed content of one block. `None` means the block says nothing about that field."""

    next_key: bytes
    key_id: bytes | None = None
    token_id: bytes | None = None
    not_before: int | None = None
    expires: int | None = None
    audience: tuple[str, ...] | None = None
    rights: tuple[Right, ...] | None = None
    delegable: tuple[Right, ...] | None = None


@dataclass(frozen=True, slots=True)
class SignedBlock:
    payload: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class RawToken:
    """A token split into its frames; nothing in it has been checked beyond the framing."""

    blocks: tuple[SignedBlock, ...]
    sealed: bool
    proof: bytes


def audience_problem(audience: str) -> str | None:
    if not audience or len(audience) > MAX_AUDIENCE_BYTES or not _AUDIENCE.match(audience):
        return f"`{audience}` is not a valid audience (letters, digits and `._:@/+-`, at most 128)"
    return None


# ---------------------------------------------------------------------------------------------- encoding


def _encode_right(right: Right) -> bytes:
    pattern = right.pattern.encode("utf-8")
    out = bytes([_OP_CODES[right.op]])
    if right.op == DECLASSIFY:
        tag = right.tag.encode("ascii")  # type: ignore[union-attr]
        out += bytes([len(tag)]) + tag
    return out + struct.pack(">H", len(pattern)) + pattern


def _encode_rights(tag: int, rights: Iterable[Right]) -> bytes:
    encoded = sorted({_encode_right(r) for r in rights})
    if len(encoded) > MAX_RIGHTS:
        raise RightError(f"a block holds at most {MAX_RIGHTS} rights")
    return bytes([tag]) + struct.pack(">H", len(encoded)) + b"".join(encoded)


def encode_block(block: Block) -> bytes:
    """The canonical payload of `block` (rights and audiences sorted and de-duplicated)."""
    out = bytearray()
    if block.key_id is not None:
        out += bytes([TAG_KEY_ID]) + block.key_id
    if block.token_id is not None:
        out += bytes([TAG_TOKEN_ID]) + block.token_id
    if block.not_before is not None:
        out += bytes([TAG_NOT_BEFORE]) + struct.pack(">Q", block.not_before)
    if block.expires is not None:
        out += bytes([TAG_EXPIRES]) + struct.pack(">Q", block.expires)
    if block.audience is not None:
        audiences = sorted(set(block.audience))
        out += bytes([TAG_AUDIENCE, len(audiences)])
        for audience in audiences:
            out += bytes([len(audience)]) + audience.encode("ascii")
    if block.rights is not None:
        out += _encode_rights(TAG_RIGHTS, block.rights)
    if block.delegable is not None:
        out += _encode_rights(TAG_DELEGABLE, block.delegable)
    out += bytes([TAG_NEXT_KEY]) + block.next_key
    if len(out) > MAX_PAYLOAD_BYTES:
        raise RightError(f"a block is at most {MAX_PAYLOAD_BYTES} bytes; this one is {len(out)}")
    return bytes(out)


def encode_token(raw: RawToken) -> bytes:
    out = bytearray([VERSION, FLAG_SEALED if raw.sealed else 0, len(raw.blocks)])
    for block in raw.blocks:
        out += struct.pack(">H", len(block.payload)) + block.payload + block.signature
    out += raw.proof
    return bytes(out)


_TEXT_TOKEN = re.compile(re.escape(TEXT_PREFIX) + r"[A-Za-z0-9_-]{16,}")


def redact(text: str) -> str:
    """`text` with every token in it cut to its first characters: logs and reports keep command lines (an
    agent may pass its token in argv, e.g. in a proxy URL) but must not keep a usable credential."""
    return _TEXT_TOKEN.sub(lambda m: m.group(0)[: len(TEXT_PREFIX) + 8] + "…(token redacted)", text)


def to_text(data: bytes) -> str:
    return TEXT_PREFIX + base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# ---------------------------------------------------------------------------------------------- decoding


def from_text(text: str) -> bytes:
    """Bytes of an `ifc1_` token; anything not in canonical text form is `malformed`."""
    if not isinstance(text, str):
        raise _malformed("a token in text form must be a string")
    if len(text) > MAX_TEXT_CHARS:
        raise _malformed(f"token is longer than {MAX_TEXT_CHARS} characters")
    if not text.startswith(TEXT_PREFIX):
        m = re.match(r"ifc(\d+)_", text)
        if m:
            raise _malformed(f"unsupported token version `{m.group(1)}`")
        raise _malformed("not an ifc token (it should start with `ifc1_`)")
    body = text[len(TEXT_PREFIX) :]
    if not _BASE64URL.match(body) or len(body) % 4 == 1:
        raise _malformed("token text is not base64url")
    try:
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise _malformed("token text is not base64url") from None
    if to_text(data) != text:  # unused low bits set: a second spelling of the same bytes
        raise _malformed("token text is not in canonical form")
    return data


def split_token(data: bytes) -> RawToken:
    """Split the framing: header, length-prefixed blocks, proof. Payloads are not parsed here."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _malformed("a token in binary form must be bytes")
    data = bytes(data)
    size = len(data)
    if size > MAX_TOKEN_BYTES:
        raise _malformed(f"token is larger than {MAX_TOKEN_BYTES} bytes")
    if size < 3:
        raise _malformed("token is truncated")
    version, flags, count = data[0], data[1], data[2]
    if version != VERSION:
        raise _malformed(f"unsupported token version `{version}`")
    if flags & ~FLAG_SEALED:
        raise _malformed("token has unknown flags set")
    if not 1 <= count <= MAX_BLOCKS:
        raise _malformed(f"token must have between 1 and {MAX_BLOCKS} blocks, not {count}")
    sealed = bool(flags & FLAG_SEALED)
    blocks = []
    pos = 3
    for _ in range(count):
        if pos + 2 > size:
            raise _malformed("token is truncated")
        length = (data[pos] << 8) | data[pos + 1]
        pos += 2
        if length > MAX_PAYLOAD_BYTES:
            raise _malformed(f"block is larger than {MAX_PAYLOAD_BYTES} bytes")
        end = pos + length + SIGNATURE_BYTES
        if end > size:
            raise _malformed("token is truncated")
        blocks.append(SignedBlock(data[pos : pos + length], data[pos + length : end]))
        pos = end
    proof_size = SIGNATURE_BYTES if sealed else SEED_BYTES
    if size - pos != proof_size:
        raise _malformed("token is truncated" if size - pos < proof_size else "token has trailing bytes")
    return RawToken(tuple(blocks), sealed, data[pos:])


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise _malformed("block is truncated")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise _malformed("block is truncated")
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "big")

    def text(self, n: int, what: str) -> str:
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed(f"{what} is not valid utf-8") from None


@functools.lru_cache(maxsize=8192)
def _right(op: str, pattern: str, tag: str | None) -> Right:
    """A validated Right, shared across tokens (tokens minted from one policy repeat the same rights)."""
    return Right(op, pattern, tag)


def clear_right_cache() -> None:
    _right.cache_clear()


def _read_rights(reader: _Reader) -> tuple[Right, ...]:
    # Hot path of a cold verify (a policy-sized block 0 has ~20 rights): index arithmetic, no helper calls.
    data, pos, size = reader.data, reader.pos, len(reader.data)
    if pos + 2 > size:
        raise _malformed("block is truncated")
    count = (data[pos] << 8) | data[pos + 1]
    pos += 2
    if count > MAX_RIGHTS:
        raise _malformed(f"block has more than {MAX_RIGHTS} rights")
    rights = []
    previous = b""
    try:
        for _ in range(count):
            start = pos
            if pos >= size:
                raise _malformed("block is truncated")
            op = _OP_NAMES.get(data[pos])
            pos += 1
            if op is None:
                raise _malformed("block has a right with an unknown operation")
            tag = None
            if op == DECLASSIFY:
                if pos >= size:
                    raise _malformed("block is truncated")
                n = data[pos]
                if n > MAX_TAG_BYTES or pos + 1 + n > size:
                    raise _malformed("block has a bad tag")
                tag = data[pos + 1 : pos + 1 + n].decode("utf-8")
                pos += 1 + n
            if pos + 2 > size:
                raise _malformed("block is truncated")
            n = (data[pos] << 8) | data[pos + 1]
            pos += 2
            if n > MAX_PATTERN_BYTES or pos + n > size:
                raise _malformed("block has a bad pattern")
            pattern = data[pos : pos + n].decode("utf-8")
            pos += n
            encoded = data[start:pos]
            if encoded <= previous:
                raise _malformed("block rights are not in canonical order")
            previous = encoded
            rights.append(_right(op, pattern, tag))
    except UnicodeDecodeError:
        raise _malformed("block has a right that is not valid utf-8") from None
    except RightError as exc:
        raise _malformed(f"block has a bad right: {exc}") from None
    reader.pos = pos
    return tuple(rights)


def _read_audience(reader: _Reader) -> tuple[str, ...]:
    count = reader.u8()
    if not 1 <= count <= MAX_AUDIENCES:
        raise _malformed(f"block must name between 1 and {MAX_AUDIENCES} audiences")
    audiences = []
    for _ in range(count):
        audience = reader.text(reader.u8(), "audience")
        if audience_problem(audience) is not None:
            raise _malformed("block has an invalid audience")
        if audiences and audience <= audiences[-1]:
            raise _malformed("block audiences are not in canonical order")
        audiences.append(audience)
    return tuple(audiences)


_BLOCK0_REQUIRED = (TAG_KEY_ID, TAG_TOKEN_ID, TAG_NOT_BEFORE, TAG_EXPIRES, TAG_AUDIENCE, TAG_RIGHTS)
_BLOCK0_ONLY = (TAG_KEY_ID, TAG_TOKEN_ID, TAG_DELEGABLE)
_FIELD_NAMES = {
    TAG_KEY_ID: "key id",
    TAG_TOKEN_ID: "token id",
    TAG_NOT_BEFORE: "not-before time",
    TAG_EXPIRES: "expiry",
    TAG_AUDIENCE: "audience",
    TAG_RIGHTS: "rights",
    TAG_DELEGABLE: "delegable rights",
    TAG_NEXT_KEY: "next key",
}


def decode_block(payload: bytes, index: int) -> Block:
    """Parse one block's payload; `index` decides which fields are required or forbidden."""
    reader = _Reader(payload)
    values: dict[int, object] = {}
    last_tag = 0
    while reader.pos < len(payload):
        tag = reader.u8()
        if tag not in _FIELD_NAMES:
            raise _malformed(f"block {index} has an unknown field")
        if tag <= last_tag:
            raise _malformed(f"block {index} fields are repeated or out of order")
        last_tag = tag
        if index > 0 and tag in _BLOCK0_ONLY:
            raise _malformed(f"attenuation block {index} may not carry a {_FIELD_NAMES[tag]}")
        if tag == TAG_KEY_ID:
            values[tag] = reader.take(KEY_ID_BYTES)
        elif tag == TAG_TOKEN_ID:
            values[tag] = reader.take(TOKEN_ID_BYTES)
        elif tag in (TAG_NOT_BEFORE, TAG_EXPIRES):
            values[tag] = reader.u64()
        elif tag == TAG_AUDIENCE:
            values[tag] = _read_audience(reader)
        elif tag in (TAG_RIGHTS, TAG_DELEGABLE):
            values[tag] = _read_rights(reader)
        else:
            values[tag] = reader.take(PUBLIC_KEY_BYTES)
            if reader.pos != len(payload):
                raise _malformed(f"block {index} has bytes after its next key")
    if TAG_NEXT_KEY not in values:
        raise _malformed(f"block {index} has no next key")
    if index == 0:
        for tag in _BLOCK0_REQUIRED:
            if tag not in values:
                raise _malformed(f"block 0 has no {_FIELD_NAMES[tag]}")
    return Block(
        next_key=values[TAG_NEXT_KEY],  # type: ignore[arg-type]
        key_id=values.get(TAG_KEY_ID),  # type: ignore[arg-type]
        token_id=values.get(TAG_TOKEN_ID),  # type: ignore[arg-type]
        not_before=values.get(TAG_NOT_BEFORE),  # type: ignore[arg-type]
        expires=values.get(TAG_EXPIRES),  # type: ignore[arg-type]
        audience=values.get(TAG_AUDIENCE),  # type: ignore[arg-type]
        rights=values.get(TAG_RIGHTS),  # type: ignore[arg-type]
        delegable=values.get(TAG_DELEGABLE),  # type: ignore[arg-type]
    )


def check_time(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64_MAX:
        raise RightError(f"{what} must be a whole number of unix seconds")
    return value


__all__ = [
    "MAX_AUDIENCE_BYTES",
    "MAX_BLOCKS",
    "MAX_PAYLOAD_BYTES",
    "MAX_TOKEN_BYTES",
    "TEXT_PREFIX",
    "VERSION",
    "Block",
    "RawToken",
    "SignedBlock",
    "audience_problem",
    "decode_block",
    "encode_block",
    "encode_token",
    "from_text",
    "split_token",
    "to_text",
]
