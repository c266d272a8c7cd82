"""The encoding parses hostile input: every corruption fails with a reason, never another exception."""

from __future__ import annotations

import itertools

import pytest
from caps_testkit import AUDIENCE, HOST, NOW, mint
from hypothesis import given, settings
from hypothesis import strategies as st

import caps
from caps.encoding import (
    MAX_BLOCKS,
    RawToken,
    SignedBlock,
    decode_block,
    encode_block,
    encode_token,
    from_text,
    split_token,
    to_text,
)

ONE = mint()
THREE = caps.attenuate(caps.attenuate(ONE, rights=["read src/**"], now=NOW), ttl=60, now=NOW)
FOUR = caps.attenuate(THREE, rights=["read src/*.py"], now=NOW)
SEALED = caps.seal(caps.attenuate(ONE, rights=["read docs/**"], now=NOW))
TOKENS = {"one": ONE, "three": THREE, "four": FOUR, "sealed": SEALED}
VERIFIER = caps.Verifier([HOST.public], audience=AUDIENCE)


def _verify(token: str | bytes) -> caps.VerifiedToken:
    return VERIFIER.verify(token, now=NOW + 1)


@pytest.mark.parametrize("name", TOKENS)
def test_tokens_verify_and_round_trip(name):
    token = TOKENS[name]
    assert token.startswith("ifc1_")
    data = from_text(token)
    assert to_text(data) == token
    assert encode_token(split_token(data)) == data
    assert _verify(token).blocks == len(split_token(data).blocks)
    assert _verify(data).token_id == _verify(token).token_id  # binary form verifies the same


def test_encoding_is_canonical():
    raw = split_token(from_text(ONE))
    block = decode_block(raw.blocks[0].payload, 0)
    shuffled = type(block)(
        **{
            **{f: getattr(block, f) for f in block.__slots__},
            "rights": tuple(reversed(block.rights)) * 2,
            "audience": ("b-run", AUDIENCE, "b-run"),
        }
    )
    again = decode_block(encode_block(shuffled), 0)
    assert again.rights == block.rights
    assert again.audience == tuple(sorted({AUDIENCE, "b-run"}))


@pytest.mark.parametrize("name", TOKENS)
def test_every_single_byte_flip_fails(name):
    data = from_text(TOKENS[name])
    for i, mask in itertools.product(range(len(data)), (0x01, 0x80, 0xFF)):
        flipped = bytearray(data)
        flipped[i] ^= mask
        with pytest.raises(caps.TokenError) as info:
            _verify(bytes(flipped))
        assert isinstance(info.value.reason, caps.Reason)


@pytest.mark.parametrize("name", TOKENS)
def test_every_truncation_fails(name):
    data = from_text(TOKENS[name])
    for n in range(len(data)):
        with pytest.raises(caps.TokenError) as info:
            _verify(data[:n])
        assert info.value.reason is caps.Reason.MALFORMED


@pytest.mark.parametrize("name", ["three", "four", "sealed"])
def test_block_reordering_and_removal_fail(name):
    raw = split_token(from_text(TOKENS[name]))
    n = len(raw.blocks)
    for k in range(1, n + 1):
        for order in itertools.permutations(range(n), k):
            if order == tuple(range(n)):
                continue
            moved = RawToken(tuple(raw.blocks[i] for i in order), raw.sealed, raw.proof)
            with pytest.raises(caps.TokenError) as info:
                _verify(encode_token(moved))
            assert info.value.reason in (caps.Reason.BAD_SIGNATURE, caps.Reason.MALFORMED)


def test_dropping_the_last_block_is_caught_by_the_proof():
    raw = split_token(from_text(FOUR))
    cut = RawToken(raw.blocks[:-1], raw.sealed, raw.proof)
    with pytest.raises(caps.TokenError) as info:
        _verify(encode_token(cut))
    assert info.value.reason is caps.Reason.BAD_SIGNATURE
    assert "proof" in info.value.message


def test_splicing_blocks_from_another_family_fails():
    other = caps.attenuate(mint(), rights=["read src/**"], now=NOW)
    a, b = split_token(from_text(THREE)), split_token(from_text(other))
    spliced = RawToken((a.blocks[0], b.blocks[1]), False, b.proof)
    with pytest.raises(caps.TokenError) as info:
        _verify(encode_token(spliced))
    assert info.value.reason is caps.Reason.BAD_SIGNATURE


@given(
    index=st.integers(min_value=0),
    char=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/. "),
)
@settings(max_examples=300, deadline=None)
def test_any_text_edit_fails(index, char):
    token = THREE
    i = index % len(token)
    edited = token[:i] + char + token[i + 1 :]
    if edited == token:
        return
    with pytest.raises(caps.TokenError):
        _verify(edited)


@given(st.binary(max_size=600))
@settings(max_examples=400, deadline=None)
def test_random_bytes_fail_with_a_reason(data):
    with pytest.raises(caps.TokenError):
        _verify(data)
    with pytest.raises(caps.TokenError):
        caps.inspect(data)


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_random_text_fails_with_a_reason(text):
    with pytest.raises(caps.TokenError):
        _verify("ifc1_" + text)
    with pytest.raises(caps.TokenError):
        _verify(text)


@given(prefix=st.binary(min_size=3, max_size=3), tail=st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_plausible_headers_with_garbage_fail(prefix, tail):
    data = bytes([1, prefix[1] & 1, prefix[2] % 4 + 1]) + tail
    with pytest.raises(caps.TokenError):
        _verify(data)


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_garbage_payloads_under_valid_framing_fail(data):
    payloads = data.draw(st.lists(st.binary(max_size=200), min_size=1, max_size=4))
    raw = RawToken(tuple(SignedBlock(p, bytes(64)) for p in payloads), False, bytes(32))
    with pytest.raises(caps.TokenError):
        _verify(encode_token(raw))


def test_decoder_bounds():
    with pytest.raises(caps.TokenError, match="between 1 and"):
        _verify(bytes([1, 0, MAX_BLOCKS + 1]) + bytes(100))
    with pytest.raises(caps.TokenError, match="larger than"):
        _verify(bytes([1, 0, 1]) + bytes(70_000))
    with pytest.raises(caps.TokenError, match="longer than"):
        _verify("ifc1_" + "A" * 100_000)
    with pytest.raises(caps.TokenError, match="unsupported token version `2`"):
        _verify("ifc2_AAAA")
    with pytest.raises(caps.TokenError, match="not an ifc token"):
        _verify("eyJhbGciOi.xx.yy")


def test_non_canonical_text_is_refused():
    body = ONE[len("ifc1_") :]
    # Flip the unused low bits of the last character: same bytes, different spelling.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(body[-1])
    pad_bits = {2: 4, 3: 2}[len(body) % 4]
    twin = "ifc1_" + body[:-1] + alphabet[last | ((1 << pad_bits) - 1)]
    assert twin != ONE
    with pytest.raises(caps.TokenError, match="canonical"):
        from_text(twin)


def test_attenuation_stops_at_max_blocks():
    token = ONE
    for _ in range(MAX_BLOCKS - 1):
        token = caps.attenuate(token, ttl=100, now=NOW)
    assert _verify(token).blocks == MAX_BLOCKS
    with pytest.raises(caps.CapsError):
        caps.attenuate(token, ttl=100, now=NOW)


@given(st.sampled_from(sorted(TOKENS)), st.text(max_size=30), st.text(max_size=30))
def test_redact_leaves_no_usable_token_in_a_command_line(name, before, after):
    line = f"{before}curl -x http://ifc:{TOKENS[name]}@10.0.2.100:3128 {after}"
    redacted = caps.redact(line)
    assert TOKENS[name] not in redacted and "(token redacted)" in redacted
    assert redacted.startswith(before) and redacted.endswith(after)
    assert caps.redact("ifc1_short and plain words") == "ifc1_short and plain words"
