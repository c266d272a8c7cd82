"""Verifier: reasons, revocation, the token cache and the prefix memo."""

from __future__ import annotations

import threading

import pytest
from caps_testkit import AUDIENCE, HOST, NOW, OTHER_HOST, mint
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import caps
from caps.encoding import encode_token, from_text, split_token


def reason(verifier: caps.Verifier, token: str, now: float = NOW + 1) -> caps.Reason | None:
    try:
        verifier.verify(token, now=now)
    except caps.TokenError as exc:
        return exc.reason
    return None


def test_reasons(verifier):
    token = mint(ttl=100)
    assert reason(verifier, token) is None
    assert reason(verifier, token, now=NOW + 100) is caps.Reason.EXPIRED
    assert reason(verifier, token, now=NOW - 1) is caps.Reason.NOT_YET_VALID
    assert reason(caps.Verifier([HOST.public], audience="run-43"), token) is caps.Reason.WRONG_AUDIENCE
    assert reason(caps.Verifier([OTHER_HOST.public], audience=AUDIENCE), token) is caps.Reason.UNKNOWN_KEY
    assert reason(verifier, "nonsense") is caps.Reason.MALFORMED
    verifier.set_revocations(caps.revoke(token, caps.RevocationList()))
    assert reason(verifier, token) is caps.Reason.REVOKED


@pytest.mark.parametrize("now", [float("nan"), float("inf"), "1750000001", None])
def test_a_bad_clock_fails_closed(verifier, now):
    assert reason(verifier, mint(), now=now) is caps.Reason.EXPIRED
    assert not verifier.authorize(mint(), "read", "src/a.py", now=now).allowed


def test_forged_block0_with_another_key_is_bad_signature():
    # Same key id as HOST, but signed by OTHER_HOST: the key id is a hint, the signature decides.
    forged = caps.mint(OTHER_HOST, rights=["read **"], audience=AUDIENCE, ttl=60, now=NOW)
    raw = split_token(from_text(forged))
    payload = bytearray(raw.blocks[0].payload)
    payload[1:9] = HOST.key_id
    tampered = type(raw)((type(raw.blocks[0])(bytes(payload), raw.blocks[0].signature),), False, raw.proof)
    v = caps.Verifier([HOST.public], audience=AUDIENCE)
    assert reason(v, encode_token(tampered)) is caps.Reason.BAD_SIGNATURE


def test_key_rotation_with_two_keys():
    v = caps.Verifier([HOST.public, OTHER_HOST.public_key], audience=AUDIENCE)
    assert reason(v, mint()) is None
    assert reason(v, caps.mint(OTHER_HOST, rights=["read **"], audience=AUDIENCE, ttl=60, now=NOW)) is None


def test_revocation_covers_the_token_and_its_descendants_only(verifier):
    parent = mint()
    child = caps.attenuate(parent, rights=["read src/**"], now=NOW)
    grandchild = caps.attenuate(child, ttl=60, now=NOW)
    sibling = caps.attenuate(parent, rights=["read docs/**"], now=NOW)
    verifier.set_revocations(caps.revoke(child, caps.RevocationList()))
    assert [reason(verifier, t) for t in (parent, child, grandchild, sibling)] == [
        None,
        caps.Reason.REVOKED,
        caps.Reason.REVOKED,
        None,
    ]
    verifier.set_revocations(caps.revoke(grandchild, verifier.revocations, family=True))
    assert all(reason(verifier, t) is caps.Reason.REVOKED for t in (parent, sibling))


def test_revocation_epoch_cannot_go_back(verifier):
    newer = caps.RevocationList().with_revoked(["0" * 32]).with_revoked(["1" * 32])
    verifier.set_revocations(newer)
    with pytest.raises(caps.RevocationListError, match="older"):
        verifier.set_revocations(caps.RevocationList())
    assert verifier.revocations.epoch == 2


def test_derived_token_pays_only_for_its_new_block(verifier):
    parent = caps.attenuate(caps.attenuate(mint(), ttl=900, now=NOW), ttl=800, now=NOW)
    verifier.verify(parent, now=NOW)
    assert verifier.stats.signatures_checked == 3
    child = caps.attenuate(parent, rights=["read src/**"], now=NOW)
    verifier.verify(child, now=NOW)
    assert verifier.stats.signatures_checked == 4 and verifier.stats.prefix_hits == 1
    sealed = caps.seal(caps.attenuate(child, ttl=10, now=NOW))
    verifier.verify(sealed, now=NOW)
    assert verifier.stats.signatures_checked == 6  # its new block and the seal
    verifier.verify(sealed, now=NOW)
    assert verifier.stats.signatures_checked == 6 and verifier.stats.cache_hits == 1


def test_bad_tokens_are_cached_negatively_but_time_never_is(verifier):
    bad = mint()[:-3] + "AAA"
    for _ in range(3):
        assert reason(verifier, bad) is not None
    assert verifier.stats.cache_misses == 1
    token = mint(ttl=100)
    assert reason(verifier, token, now=NOW + 200) is caps.Reason.EXPIRED
    assert reason(verifier, token, now=NOW + 50) is None  # an expiry seen once is not remembered as a failure


def test_cache_is_bounded():
    v = caps.Verifier([HOST.public], audience=AUDIENCE, cache_size=4, memo_size=8)
    for _ in range(20):
        v.verify(caps.attenuate(mint(), ttl=60, now=NOW), now=NOW)
    assert len(v._tokens) <= 4 and len(v._prefixes) <= 8


def test_authorize_never_raises(verifier):
    token = mint()
    cases = [
        ("read", "src/a.py", None, True),
        ("read", "../etc/passwd", None, False),
        ("read", "src/../../etc/passwd", None, False),
        ("read", "/etc/passwd", None, False),
        ("write", "docs/a.md", None, False),
        ("fly", "src/a.py", None, False),
        ("connect", "https://api.github.com", None, True),
        ("connect", "https://api.github.com:8443", None, False),
        ("connect", "not an endpoint", None, False),
        ("declassify", "https://github.com", "push-reviewed", True),
        ("declassify", "https://github.com", "secret", False),
        ("declassify", "https://github.com", None, False),
        ("read", "src/a.py", "tag", False),
        ("read", 42, None, False),
    ]
    for op, target, tag, allowed in cases:
        decision = verifier.authorize(token, op, target, tag=tag, now=NOW)
        assert decision.allowed is allowed, (op, target, decision)
        assert bool(decision) is allowed
        if not allowed:
            assert decision.reason is caps.Reason.NOT_ALLOWED and decision.message
    assert verifier.authorize(b"\x00", "read", "src/a.py", now=NOW).reason is caps.Reason.MALFORMED
    assert verifier.authorize(None, "read", "src/a.py", now=NOW).reason is caps.Reason.MALFORMED


def test_denial_names_the_block(verifier):
    child = caps.attenuate(mint(), rights=["read docs/**"], now=NOW)
    d = verifier.authorize(child, "read", "src/a.py", now=NOW)
    assert d.block == 1 and "block 1 does not allow read `src/a.py`" in d.message


def test_threads_share_one_verifier(verifier):
    tokens = [caps.attenuate(mint(), ttl=60 + i, now=NOW) for i in range(8)]
    errors = []

    def work():
        try:
            for _ in range(50):
                for t in tokens:
                    assert verifier.authorize(t, "read", "src/a.py", now=NOW).allowed
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


class CacheNeverStale(RuleBasedStateMachine):
    """A cached verifier (tiny caches, so eviction happens) must always agree with a fresh one."""

    @initialize()
    def setup(self):
        self.now = NOW
        self.revocations = caps.RevocationList()
        self.cached = caps.Verifier([HOST.public], audience=AUDIENCE, cache_size=3, memo_size=5)
        self.tokens = [mint(ttl=300), mint(ttl=1000, audience=[AUDIENCE, "run-7"])]

    def fresh(self) -> caps.Verifier:
        return caps.Verifier([HOST.public], audience=AUDIENCE, revocations=self.revocations)

    @rule(dt=st.integers(min_value=0, max_value=400))
    def advance(self, dt):
        self.now += dt

    @rule(
        i=st.integers(min_value=0),
        ttl=st.integers(min_value=1, max_value=600),
        glob=st.sampled_from(["src/**", "docs/**", "**"]),
        seal=st.booleans(),
    )
    def attenuate(self, i, ttl, glob, seal):
        parent = self.tokens[i % len(self.tokens)]
        if caps.inspect(parent).sealed or len(caps.inspect(parent).blocks) >= 6:
            return
        self.tokens.append(caps.attenuate(parent, rights=[f"read {glob}"], ttl=ttl, now=self.now, seal=seal))

    @precondition(lambda self: len(self.tokens) > 0)
    @rule(i=st.integers(min_value=0), family=st.booleans())
    def revoke(self, i, family):
        self.revocations = caps.revoke(self.tokens[i % len(self.tokens)], self.revocations, family=family)
        self.cached.set_revocations(self.revocations)

    @rule(i=st.integers(min_value=0), path=st.sampled_from(["src/a.py", "docs/x.md"]))
    def check(self, i, path):
        token = self.tokens[i % len(self.tokens)]
        got = self.cached.authorize(token, "read", path, now=self.now)
        want = self.fresh().authorize(token, "read", path, now=self.now)
        assert (got.allowed, got.reason) == (want.allowed, want.reason)
        if got.allowed:
            info = caps.inspect(token)
            assert info.not_before <= self.now < info.expires
            assert not self.revocations.is_revoked(b.revocation_id for b in info.blocks)

    @invariant()
    def revoked_never_allowed(self):
        for token in self.tokens:
            if self.revocations.is_revoked(caps.revocation_ids(token)):
                assert self.cached.authorize(token, "read", "src/a.py", now=self.now).reason is caps.Reason.REVOKED


TestCacheNeverStale = CacheNeverStale.TestCase
TestCacheNeverStale.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
