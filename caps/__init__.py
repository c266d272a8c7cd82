"""Capability tokens: mint, attenuate offline, verify fast, expire, revoke.

Safe recipes live here; the signed chain (`caps.chain`) and its binary encoding (`caps.encoding`) sit below.

    host = HostKey.generate()
    token = mint(host, rights=["read src/**", "write src/**"], audience="run-42", ttl=3600)
    child = attenuate(token, rights=["read src/**"], ttl=600)          # offline, no host key needed
    verifier = Verifier([host.public], audience="run-42")
    verifier.authorize(child, "read", "src/a.py", now=time.time())     # Decision(allowed=True)

Every verification failure is a `TokenError` with a `Reason`. See docs/tokens.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from caps.chain import append_block, proof_ok, revocation_id, seal_chain, start_chain
from caps.clock import format_time, parse_duration
from caps.encoding import (
    MAX_BLOCKS,
    Block,
    RawToken,
    audience_problem,
    check_time,
    decode_block,
    encode_token,
    from_text,
    redact,
    split_token,
    to_text,
)
from caps.errors import (
    CapsError,
    KeyFileError,
    Reason,
    RevocationListError,
    RightError,
    TokenError,
)
from caps.keys import HostKey, PublicKey, load_host_key, load_public_key, write_key
from caps.revocation import RevocationList, revoke_in_file
from caps.rights import Right
from caps.verifier import Decision, VerifiedToken, Verifier

__all__ = [
    "BlockInfo",
    "CapsError",
    "Decision",
    "HostKey",
    "KeyFileError",
    "PublicKey",
    "Reason",
    "RevocationList",
    "RevocationListError",
    "Right",
    "RightError",
    "TokenError",
    "TokenInfo",
    "VerifiedToken",
    "Verifier",
    "attenuate",
    "format_time",
    "inspect",
    "load_host_key",
    "load_public_key",
    "mint",
    "parse_duration",
    "redact",
    "revocation_ids",
    "revoke",
    "revoke_in_file",
    "rights_for_agent",
    "seal",
    "verify",
    "write_key",
]


def _rights(rights: Iterable[Right | str]) -> tuple[Right, ...]:
    if isinstance(rights, str | Right):
        rights = (rights,)
    out = []
    for right in rights:
        if isinstance(right, str):
            out.append(Right.parse(right))
        else:
            right.compile()  # reject a bad pattern now, not at every verifier
            out.append(right)
    return tuple(out)


def _audiences(audience: str | Iterable[str]) -> tuple[str, ...]:
    audiences = (audience,) if isinstance(audience, str) else tuple(audience)
    if not audiences:
        raise RightError("a token needs an audience (the sandbox run id)")
    for a in audiences:
        if (problem := audience_problem(a)) is not None:
            raise RightError(problem)
    return audiences


def _expiry(now: float, ttl: float | None, expires: int | None, required: bool) -> int | None:
    if ttl is not None and expires is not None:
        raise RightError("give a ttl or an expiry time, not both")
    if ttl is not None:
        if ttl <= 0:
            raise RightError("ttl must be positive")
        return check_time(int(now + ttl), "expiry")
    if expires is not None:
        return check_time(expires, "expiry")
    if required:
        raise RightError("a token needs an expiry", help="pass `ttl=` (seconds) or `expires=` (unix seconds)")
    return None


def mint(
    host: HostKey,
    *,
    rights: Iterable[Right | str],
    audience: str | Iterable[str],
    ttl: float | None = None,
    expires: int | None = None,
    not_before: int | None = None,
    delegable: Iterable[Right | str] | None = None,
    now: float | None = None,
    seal: bool = False,
) -> str:
    """Mint a token signed by `host`. An expiry (`ttl` seconds or `expires`) and an audience are required.

    `delegable`, if given, bounds every token derived from this one: a token with attenuation blocks must
    also be allowed by `delegable`. `seal=True` returns a token its holder cannot attenuate.
    """
    now = time.time() if now is None else now
    start = check_time(int(now) if not_before is None else not_before, "not-before time")
    end = _expiry(now, ttl, expires, required=True)
    assert end is not None
    if end <= start:
        raise RightError("token would expire before it becomes valid")
    block = Block(
        next_key=b"",
        key_id=host.key_id,
        token_id=os.urandom(16),
        not_before=start,
        expires=end,
        audience=_audiences(audience),
        rights=_rights(rights),
        delegable=None if delegable is None else _rights(delegable),
    )
    raw = start_chain(host, block)
    return to_text(encode_token(seal_chain(raw) if seal else raw))


def _parse(token: str | bytes) -> tuple[RawToken, tuple[Block, ...]]:
    data = from_text(token) if isinstance(token, str) else token
    raw = split_token(data)
    blocks = tuple(decode_block(b.payload, i) for i, b in enumerate(raw.blocks))
    return raw, blocks


def _attenuable(token: str | bytes) -> tuple[RawToken, tuple[Block, ...]]:
    raw, blocks = _parse(token)
    if raw.sealed:
        raise TokenError(Reason.SEALED, "token is sealed and cannot be attenuated")
    if not proof_ok(raw, blocks[-1].next_key):
        raise TokenError(Reason.BAD_SIGNATURE, "token proof does not match its last block")
    return raw, blocks


def attenuate(
    token: str | bytes,
    *,
    rights: Iterable[Right | str] | None = None,
    ttl: float | None = None,
    expires: int | None = None,
    not_before: int | None = None,
    audience: str | Iterable[str] | None = None,
    now: float | None = None,
    seal: bool = False,
) -> str:
    """Append a block that only restricts: `rights` (allowed only if the parent also allows), an earlier
    expiry, a later start, a subset of the audiences. Works offline, without the host key.

    Nothing here can widen the token: a verifier allows a request only if every block allows it, takes the
    earliest expiry and the latest start, and intersects the audiences.
    """
    raw, blocks = _attenuable(token)
    if len(blocks) >= MAX_BLOCKS:
        raise CapsError(f"token already has {MAX_BLOCKS} blocks, the most a token may have")
    if rights is None and ttl is None and expires is None and not_before is None and audience is None:
        if not seal:
            raise CapsError("nothing to attenuate: give rights, a ttl or expiry, a start time or an audience")
        return to_text(encode_token(seal_chain(raw)))
    now = time.time() if now is None else now
    audiences = None
    if audience is not None:
        audiences = _audiences(audience)
        current = _effective_audiences(blocks)
        outside = sorted(set(audiences) - current)
        if outside:
            raise RightError(
                f"audience `{outside[0]}` is not one the token is addressed to",
                help="the token's audiences: " + ", ".join(f"`{a}`" for a in sorted(current)),
            )
    block = Block(
        next_key=b"",
        not_before=None if not_before is None else check_time(not_before, "not-before time"),
        expires=_expiry(now, ttl, expires, required=False),
        audience=audiences,
        rights=None if rights is None else _rights(rights),
    )
    derived = append_block(raw, block)
    return to_text(encode_token(seal_chain(derived) if seal else derived))


def seal(token: str | bytes) -> str:
    """Return the sealed form: same rights, but the holder can no longer attenuate it."""
    raw, _ = _attenuable(token)
    return to_text(encode_token(seal_chain(raw)))


def verify(
    token: str | bytes,
    keys: Iterable[HostKey | PublicKey | bytes],
    *,
    audience: str,
    now: float | None = None,
    revocations: RevocationList | None = None,
) -> VerifiedToken:
    """One-shot verification (no cache worth keeping). For repeated checks, keep a `Verifier`."""
    verifier = Verifier(keys, audience=audience, revocations=revocations, cache_size=1, memo_size=1)
    return verifier.verify(token, now=time.time() if now is None else now)


def revocation_ids(token: str | bytes) -> tuple[str, ...]:
    """Revocation ids of the token's blocks, block 0 first. Does not verify the token."""
    raw = split_token(from_text(token) if isinstance(token, str) else token)
    return tuple(revocation_id(b.signature) for b in raw.blocks)


def revoke(token: str | bytes, revocations: RevocationList, *, family: bool = False) -> RevocationList:
    """A new list revoking `token` and everything derived from it (its last block), or with `family=True`
    every token minted with it (its block 0: parents, siblings and descendants alike)."""
    ids = revocation_ids(token)
    return revocations.with_revoked([ids[0] if family else ids[-1]])


@dataclass(frozen=True, slots=True)
class BlockInfo:
    index: int
    block: Block
    revocation_id: str


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a token says, without checking that it is true (signatures are not verified)."""

    sealed: bool
    size: int
    blocks: tuple[BlockInfo, ...]

    @property
    def token_id(self) -> str:
        return self.blocks[0].block.token_id.hex()  # type: ignore[union-attr]

    @property
    def key_id(self) -> str:
        return self.blocks[0].block.key_id.hex()  # type: ignore[union-attr]

    @property
    def not_before(self) -> int:
        return max(b.block.not_before for b in self.blocks if b.block.not_before is not None)

    @property
    def expires(self) -> int:
        return min(b.block.expires for b in self.blocks if b.block.expires is not None)

    @property
    def audiences(self) -> frozenset[str]:
        return _effective_audiences(tuple(b.block for b in self.blocks))


def _effective_audiences(blocks: tuple[Block, ...]) -> frozenset[str]:
    result = frozenset(blocks[0].audience or ())
    for block in blocks[1:]:
        if block.audience is not None:
            result &= frozenset(block.audience)
    return result


def inspect(token: str | bytes) -> TokenInfo:
    """Decode a token for display. Raises `TokenError(MALFORMED)`; checks no signature."""
    data = from_text(token) if isinstance(token, str) else bytes(token)
    raw, blocks = _parse(data)
    infos = tuple(
        BlockInfo(i, block, revocation_id(signed.signature))
        for i, (block, signed) in enumerate(zip(blocks, raw.blocks, strict=True))
    )
    return TokenInfo(raw.sealed, len(data), infos)


def rights_for_agent(agent) -> tuple[tuple[Right, ...], tuple[Right, ...]]:
    """(rights, delegable) for a compiled policy's agent: its grants and declassifications, and what it may
    hand on. Duck-typed on `.grants`, `.delegable` (`Grant(op, pattern)`) and `.declassifications`
    (`(tag, endpoint pattern)` pairs), so caps does not depend on the policy package."""
    rights = [Right(g.op, g.pattern) for g in agent.grants]
    rights += [Right("declassify", endpoint, tag) for tag, endpoint in agent.declassifications]
    delegable = tuple(Right(g.op, g.pattern) for g in agent.delegable)
    return _rights(rights), _rights(delegable)
