"""`Verifier`: checks tokens against a set of host public keys, with a bounded cache.

Two caches, both bounded LRU maps, both holding only facts that do not depend on time, audience or
revocation (those are checked on every call, so the cache can never hand out a stale allow):

* token cache, keyed by the token exactly as presented (or its hash, for long or binary tokens): the
  verified token (or, for a token that failed for a reason that cannot change, that reason);
* prefix memo, keyed by a running hash over blocks 0..i: the verified, compiled state after block i. A
  derived token shares its parent's blocks byte for byte, so it pays only for its new blocks and its proof.

The set of host keys is fixed for a verifier's life; to retire a key, build a new `Verifier`.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from caps.chain import block_message, proof_ok, revocation_id, signature_ok
from caps.clock import format_time
from caps.encoding import Block, decode_block, from_text, split_token
from caps.errors import Reason, RevocationListError, TokenError
from caps.keys import HostKey, PublicKey, key_id
from caps.revocation import RevocationList
from caps.rights import CONNECT, DECLASSIFY, OPS, PATH_OPS, CompiledRights, path_problem
from ifc.match import Endpoint, PatternError

# Reasons that depend only on the token's bytes and the (fixed) key set: safe to cache negatively.
_STICKY = frozenset({Reason.MALFORMED, Reason.UNKNOWN_KEY, Reason.BAD_SIGNATURE})


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to "may this token do this?". `block` is the block that denied, if one did."""

    allowed: bool
    reason: Reason | None = None
    message: str = ""
    block: int | None = None

    def __bool__(self) -> bool:
        return self.allowed


_ALLOW = Decision(True)


@dataclass(frozen=True, slots=True)
class _Prefix:
    """Verified state after some block: everything needed to extend the chain or decide a request."""

    next_key: bytes
    key_id: str
    token_id: str
    not_before: int
    expires: int
    audiences: frozenset[str]
    revocation_ids: tuple[str, ...]
    rights: tuple[tuple[int, CompiledRights], ...]
    delegable: CompiledRights | None
    blocks: int


@dataclass(frozen=True, slots=True, eq=False)
class VerifiedToken:
    """A token whose signatures and proof have been checked. Immutable; shared through the cache.

    It says nothing about time, audience or revocation on its own: call `Verifier.verify` (or
    `Verifier.authorize`) for each operation rather than keeping one of these around.
    """

    token_id: str
    key_id: str
    blocks: int
    sealed: bool
    not_before: int
    expires: int
    audiences: frozenset[str]
    revocation_ids: tuple[str, ...]
    _rights: tuple[tuple[int, CompiledRights], ...] = field(repr=False)
    _delegable: CompiledRights | None = field(repr=False)

    def check(self, op: str, target: str | Endpoint, *, tag: str | None = None) -> Decision:
        """Is `op` on `target` allowed by every block? Never raises; unknown requests are denied."""
        if not isinstance(op, str) or op not in OPS:
            return Decision(False, Reason.NOT_ALLOWED, f"unknown operation `{op}`")
        if (op == DECLASSIFY) != isinstance(tag, str) or (tag is not None and op != DECLASSIFY):
            return Decision(False, Reason.NOT_ALLOWED, "a tag is needed for `declassify` and only there")
        if op in PATH_OPS:
            if not isinstance(target, str):
                return Decision(False, Reason.NOT_ALLOWED, "target is not a path")
            problem = path_problem(target)
            if problem is not None:
                return Decision(False, Reason.NOT_ALLOWED, problem)
            return self._decide(lambda r: r.allows_path(op, target), f"{op} `{target}`")
        endpoint = target
        if not isinstance(endpoint, Endpoint):
            try:
                endpoint = Endpoint.parse(target)  # type: ignore[arg-type]
            except (PatternError, TypeError, AttributeError, ValueError):
                return Decision(False, Reason.NOT_ALLOWED, f"target `{target}` is not an endpoint")
        if op == CONNECT:
            return self._decide(lambda r: r.allows_connect(endpoint), f"connect to `{target}`")
        return self._decide(lambda r: r.allows_declassify(tag, endpoint), f"declassify `{tag}` to `{target}`")

    def allows(self, op: str, target: str | Endpoint, *, tag: str | None = None) -> bool:
        return self.check(op, target, tag=tag).allowed

    def path_patterns(self) -> tuple[str, ...]:
        """Every path pattern the token's checks read (each block's rights, and what block 0 delegates)."""
        compiled = [rights for _, rights in self._rights] + ([self._delegable] if self._delegable is not None else [])
        return tuple(dict.fromkeys(r.pattern for rights in compiled for r in rights.rights if r.op in PATH_OPS))

    def _decide(self, test, what: str) -> Decision:
        try:
            return self._decide_unsafe(test, what)
        except Exception as exc:  # a pattern that does not compile (or a matcher bug): deny, never raise
            return Decision(False, Reason.MALFORMED, f"token has a pattern that cannot be matched: {exc}")

    def _decide_unsafe(self, test, what: str) -> Decision:
        for index, rights in self._rights:
            if not test(rights):
                where = "the token" if index == 0 else f"block {index}"
                return Decision(
                    False,
                    Reason.NOT_ALLOWED,
                    f"{where} does not allow {what} (it allows {rights.describe()})",
                    index,
                )
        if self._delegable is not None and self.blocks > 1 and not test(self._delegable):
            return Decision(
                False,
                Reason.NOT_ALLOWED,
                f"block 0 does not let derived tokens {what} (it delegates {self._delegable.describe()})",
                0,
            )
        return _ALLOW


@dataclass(slots=True)
class VerifierStats:
    cache_hits: int = 0
    cache_misses: int = 0
    prefix_hits: int = 0
    signatures_checked: int = 0


class _LRU:
    __slots__ = ("_data", "_lock", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self._data: OrderedDict[str | bytes, object] = OrderedDict()
        self._lock = threading.Lock()
        self.maxsize = maxsize

    def get(self, key: str | bytes):
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: str | bytes, value: object) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


def _as_public_key(key: HostKey | PublicKey | bytes) -> bytes:
    if isinstance(key, HostKey):
        return key.public_key
    if isinstance(key, PublicKey):
        return key.key
    if isinstance(key, bytes) and len(key) == 32:
        return key
    raise TypeError("keys must be HostKey, PublicKey or 32-byte Ed25519 public keys")


_SHORT_TOKEN = 4096


def _finite(now: object) -> bool:
    try:
        return math.isfinite(now)  # type: ignore[arg-type]
    except TypeError:
        return False


def _cache_key(token: str | bytes) -> str | bytes:
    """The token cache key. Short text tokens key the dict themselves (Python hashes a string once and
    compares in full on a hit, so there is no collision to worry about); long ones and binary tokens are
    keyed by a BLAKE2b-256 digest, in separate domains, so memory stays bounded under hostile input."""
    if isinstance(token, str):
        if len(token) <= _SHORT_TOKEN:
            return token
        return hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=32, person=b"ifc-t").digest()
    if isinstance(token, bytes):
        return hashlib.blake2b(token, digest_size=32, person=b"ifc-b").digest()
    raise TokenError(Reason.MALFORMED, "a token must be text or bytes")


class Verifier:
    """Verifies tokens for one audience against a fixed set of host public keys.

    `verify(token, now=...)` returns a `VerifiedToken` or raises `TokenError`; `authorize(...)` never
    raises and returns a `Decision`. Time is always an argument, in unix seconds.
    """

    def __init__(
        self,
        keys: Iterable[HostKey | PublicKey | bytes] | Mapping[bytes, bytes],
        *,
        audience: str,
        revocations: RevocationList | None = None,
        cache_size: int = 4096,
        memo_size: int = 16384,
    ) -> None:
        publics = keys.values() if isinstance(keys, Mapping) else keys
        self._keys: dict[bytes, bytes] = {key_id(pk): pk for pk in map(_as_public_key, publics)}
        if not self._keys:
            raise ValueError("a verifier needs at least one host public key")
        self.audience = audience
        self._revocations = revocations or RevocationList()
        # called when a newer list is installed: answers cached outside the verifier may no longer hold
        self.on_revocations: list[Callable[[], None]] = []
        self._revoked = self._revocations.revoked
        self._unreadable: str | None = None  # why the revocation list could not be read (`revocations_lost`)
        self._tokens = _LRU(cache_size)
        self._prefixes = _LRU(memo_size)
        self.stats = VerifierStats()

    # --------------------------------------------------------------------------------- revocation

    @property
    def revocations(self) -> RevocationList:
        return self._revocations

    def set_revocations(self, revocations: RevocationList) -> None:
        """Install a newer revocation list. Takes effect on the next call; refuses an older epoch."""
        if revocations.epoch < self._revocations.epoch:
            raise RevocationListError(
                f"revocation list epoch {revocations.epoch} is older than the loaded epoch {self._revocations.epoch}"
            )
        self._revocations = revocations
        self._revoked = revocations.revoked
        self._unreadable = None
        for moved in self.on_revocations:
            moved()

    @property
    def revocations_unreadable(self) -> bool:
        return self._unreadable is not None

    def revocations_lost(self, reason: str) -> None:
        """The revocation list can no longer be read (corrupt, removed, unreadable): a revocation in it may be
        hidden, so no token verifies until a list is installed again (fail closed)."""
        self._unreadable = reason
        for moved in self.on_revocations:
            moved()

    # --------------------------------------------------------------------------------- verification

    def verify(self, token: str | bytes, *, now: float) -> VerifiedToken:
        key = _cache_key(token)
        entry = self._tokens.get(key)
        if entry is None:
            self.stats.cache_misses += 1
            try:
                entry = self._verify_uncached(token)
            except TokenError as exc:
                if exc.reason in _STICKY:
                    self._tokens.put(key, (exc.reason, exc.message))
                raise
            self._tokens.put(key, entry)
        else:
            self.stats.cache_hits += 1
            if type(entry) is tuple:
                raise TokenError(*entry)
        # Checked on every call, cached or not: the cache holds nothing that time or revocation changes.
        if not _finite(now):  # NaN compares false with everything: it would pass both time checks
            raise TokenError(Reason.EXPIRED, "the current time given to the verifier is not a number")
        if self._unreadable is not None:
            raise TokenError(Reason.REVOKED, f"the revocation list cannot be read ({self._unreadable}): no token "
                                             "is honoured until it can")
        if not self._revoked.isdisjoint(entry.revocation_ids):
            raise TokenError(Reason.REVOKED, "token has been revoked")
        if now < entry.not_before:
            raise TokenError(Reason.NOT_YET_VALID, f"token is not valid before {format_time(entry.not_before)}")
        if now >= entry.expires:
            raise TokenError(Reason.EXPIRED, f"token expired at {format_time(entry.expires)}")
        if self.audience not in entry.audiences:
            raise TokenError(Reason.WRONG_AUDIENCE, f"token is not addressed to `{self.audience}`")
        return entry

    def authorize(
        self, token: str | bytes, op: str, target: str | Endpoint, *, now: float, tag: str | None = None
    ) -> Decision:
        """Verify `token` and check one request against it. Never raises; fails closed."""
        try:
            verified = self.verify(token, now=now)
        except TokenError as exc:
            return Decision(False, exc.reason, exc.message)
        return verified.check(op, target, tag=tag)

    def clear_cache(self) -> None:
        self._tokens.clear()
        self._prefixes.clear()

    def _verify_uncached(self, token: str | bytes) -> VerifiedToken:
        data = from_text(token) if isinstance(token, str) else token
        raw = split_token(data)
        running = hashlib.blake2b(digest_size=32, person=b"ifc-prefix")
        prefix_keys = []
        for signed in raw.blocks:
            running.update(len(signed.payload).to_bytes(2, "big"))
            running.update(signed.payload)
            running.update(signed.signature)
            prefix_keys.append(running.digest())

        state: _Prefix | None = None
        start = 0
        for i in range(len(prefix_keys) - 1, -1, -1):
            state = self._prefixes.get(prefix_keys[i])
            if state is not None:
                self.stats.prefix_hits += 1
                start = i + 1
                break

        for i in range(start, len(raw.blocks)):
            signed = raw.blocks[i]
            block = decode_block(signed.payload, i)
            if i == 0:
                public = self._keys.get(block.key_id)  # type: ignore[arg-type]
                if public is None:
                    raise TokenError(
                        Reason.UNKNOWN_KEY,
                        f"token was minted by unknown host key `{block.key_id.hex()}`",  # type: ignore[union-attr]
                    )
                previous = b""
            else:
                public = state.next_key  # type: ignore[union-attr]
                previous = raw.blocks[i - 1].signature
            self.stats.signatures_checked += 1
            if not signature_ok(public, block_message(i, previous, signed.payload), signed.signature):
                raise TokenError(Reason.BAD_SIGNATURE, f"signature of block {i} does not verify")
            state = _extend(state, block, i, signed.signature)
            self._prefixes.put(prefix_keys[i], state)

        assert state is not None
        if raw.sealed:
            self.stats.signatures_checked += 1
        if not proof_ok(raw, state.next_key):
            raise TokenError(
                Reason.BAD_SIGNATURE, "token proof does not match its last block (blocks removed or altered)"
            )
        return VerifiedToken(
            token_id=state.token_id,
            key_id=state.key_id,
            blocks=state.blocks,
            sealed=raw.sealed,
            not_before=state.not_before,
            expires=state.expires,
            audiences=state.audiences,
            revocation_ids=state.revocation_ids,
            _rights=state.rights,
            _delegable=state.delegable,
        )


def _compile(rights, index: int) -> CompiledRights:
    try:
        return CompiledRights(rights)
    except Exception as exc:  # hostile patterns must fail closed, whatever the matcher raises
        raise TokenError(Reason.MALFORMED, f"block {index} has a pattern that does not compile: {exc}") from None


def _extend(state: _Prefix | None, block: Block, index: int, signature: bytes) -> _Prefix:
    rid = revocation_id(signature)
    compiled = _compile(block.rights, index) if block.rights is not None else None
    if state is None:
        return _Prefix(
            next_key=block.next_key,
            key_id=block.key_id.hex(),  # type: ignore[union-attr]
            token_id=block.token_id.hex(),  # type: ignore[union-attr]
            not_before=block.not_before,  # type: ignore[arg-type]
            expires=block.expires,  # type: ignore[arg-type]
            audiences=frozenset(block.audience),  # type: ignore[arg-type]
            revocation_ids=(rid,),
            rights=((0, compiled),),  # type: ignore[arg-type]
            delegable=_compile(block.delegable, 0) if block.delegable is not None else None,
            blocks=1,
        )
    return _Prefix(
        next_key=block.next_key,
        key_id=state.key_id,
        token_id=state.token_id,
        not_before=state.not_before if block.not_before is None else max(state.not_before, block.not_before),
        expires=state.expires if block.expires is None else min(state.expires, block.expires),
        audiences=state.audiences if block.audience is None else state.audiences & frozenset(block.audience),
        revocation_ids=(*state.revocation_ids, rid),
        rights=state.rights if compiled is None else (*state.rights, (index, compiled)),
        delegable=state.delegable,
        blocks=state.blocks + 1,
    )
