"""Attenuation only narrows: for random rights and requests, a derived token never allows what its parent
denies, and what it allows is exactly what every block allows (checked against an independent oracle)."""

from __future__ import annotations

import pytest
from caps_testkit import AUDIENCE, HOST, NOW, mint
from hypothesis import given, settings
from hypothesis import strategies as st

import caps
from ifc.match import Endpoint, EndpointPattern, Glob

GLOBS = [
    "**",
    "src/**",
    "src/*.py",
    "src/a.py",
    "docs/**",
    "*.md",
    "tests/**",
    "src/*/x.py",
    "src",
    "*",
    "/src/b",
]
PATHS = [
    "src/a.py",
    "src/b/x.py",
    "src/b",
    "docs/r.md",
    "README.md",
    "tests/t.py",
    "src/x.py/y",
    "a.md",
    "docs",
]
ENDPOINT_PATTERNS = [
    "https://*.github.com",
    "https://api.github.com:443",
    "*:443",
    "https://pypi.org",
    "*:*",
    # narrowed to paths and methods: a child naming these must never reach what its parent does not
    "https://api.github.com/repos/acme/**",
    "https://api.github.com/repos/acme/** methods GET",
    "https://*.github.com/repos/*/x methods GET,POST",
    "https://api.github.com/ methods HEAD",
    "https://api.github.com methods POST",
]
ENDPOINTS = [
    "https://api.github.com",
    "https://pypi.org",
    "http://pypi.org",
    "https://x.github.com",
    "tcp://db:5432",
    "GET https://api.github.com/repos/acme/x",
    "POST https://api.github.com/repos/acme/x/pulls",
    "POST https://api.github.com/repos/attacker/x",
    "GET https://x.github.com/repos/attacker/x",
    "HEAD https://api.github.com/",
    # a connection the hook inspects: patterns naming paths admit it, each request on it is decided again
    Endpoint("https", "api.github.com", 443, inspected=True),
]
TAGS = ["secret", "pii"]
PATH_OPS = ["read", "write", "create", "delete", "exec"]

path_right = st.builds(caps.Right, st.sampled_from(PATH_OPS), st.sampled_from(GLOBS))
connect_right = st.builds(caps.Right, st.just("connect"), st.sampled_from(ENDPOINT_PATTERNS))
declassify_right = st.builds(
    caps.Right, st.just("declassify"), st.sampled_from(ENDPOINT_PATTERNS), st.sampled_from(TAGS)
)
rights = st.lists(st.one_of(path_right, connect_right, declassify_right), max_size=8)
requests = st.one_of(
    st.tuples(st.sampled_from(PATH_OPS), st.sampled_from(PATHS), st.none()),
    st.tuples(st.just("connect"), st.sampled_from(ENDPOINTS), st.none()),
    st.tuples(st.just("declassify"), st.sampled_from(ENDPOINTS), st.sampled_from(TAGS)),
)
# An attenuation step: new rights or none (no rights restriction), maybe a shorter ttl, maybe an audience.
steps = st.tuples(
    st.one_of(st.none(), rights),
    st.one_of(st.none(), st.integers(min_value=1, max_value=7200)),
    st.one_of(st.none(), st.sampled_from([[AUDIENCE], [AUDIENCE, "run-7"]])),
)


def oracle(block_rights: list[list[caps.Right] | None], op: str, target: str, tag: str | None) -> bool:
    """Allowed iff every block that lists rights lists one matching the request. Uses ifc.match only."""

    def one(r: caps.Right) -> bool:
        if r.op != op or r.tag != tag:
            return False
        if op in PATH_OPS:
            return Glob.compile(r.pattern).matches(target)
        endpoint = target if isinstance(target, Endpoint) else Endpoint.parse(target)
        return EndpointPattern.parse(r.pattern).matches(endpoint)

    return all(any(one(r) for r in rs) for rs in block_rights if rs is not None)


@given(root=rights, chain=st.lists(steps, min_size=1, max_size=4), request=requests, when=st.integers(0, 7300))
@settings(max_examples=300, deadline=None)
def test_attenuation_never_widens(root, chain, request, when):
    verifier = caps.Verifier([HOST.public], audience=AUDIENCE)
    op, target, tag = request
    tokens = [mint(rights=root, audience=[AUDIENCE, "run-7"], ttl=3600)]
    blocks: list[list[caps.Right] | None] = [root]
    audiences = {AUDIENCE, "run-7"}
    for new_rights, ttl, audience in chain:
        try:
            tokens.append(caps.attenuate(tokens[-1], rights=new_rights, ttl=ttl, audience=audience, now=NOW))
        except caps.CapsError:
            # refused: an attenuation that restricts nothing, or one naming an audience already dropped
            assert (new_rights is None and ttl is None and audience is None) or not set(audience) <= audiences
            continue
        audiences &= set(audience or audiences)
        blocks.append(new_rights)
        now = NOW + when
        parent, child = tokens[-2], tokens[-1]
        got = verifier.authorize(child, op, target, tag=tag, now=now)
        if got.allowed:
            assert verifier.authorize(parent, op, target, tag=tag, now=now).allowed
        for audience_ in (AUDIENCE, "run-7"):
            other = caps.Verifier([HOST.public], audience=audience_)
            if other.authorize(child, op, target, tag=tag, now=now).allowed:
                assert other.authorize(parent, op, target, tag=tag, now=now).allowed
        if when < min([3600] + [t for _, t, _ in chain if t is not None]):
            assert got.allowed == oracle(blocks, op, target, tag)


@given(root=rights, delegable=rights, child=st.one_of(st.none(), rights), request=requests)
@settings(max_examples=200, deadline=None)
def test_delegable_bounds_every_derived_token(root, delegable, child, request):
    op, target, tag = request
    token = mint(rights=root, delegable=delegable)
    derived = caps.attenuate(token, rights=child, ttl=60, now=NOW)
    verifier = caps.Verifier([HOST.public], audience=AUDIENCE)
    assert verifier.authorize(token, op, target, tag=tag, now=NOW).allowed == oracle([root], op, target, tag)
    expect = oracle([root, child], op, target, tag) and oracle([delegable], op, target, tag)
    assert verifier.authorize(derived, op, target, tag=tag, now=NOW).allowed == expect


def test_derived_token_limits_are_intersections(verifier):
    token = mint(audience=[AUDIENCE, "run-7"], ttl=3600)
    child = caps.attenuate(token, ttl=600, audience=[AUDIENCE], now=NOW + 100)
    grandchild = caps.attenuate(child, ttl=7200, not_before=NOW + 200, now=NOW + 100)  # a longer ttl is moot
    v = verifier.verify(grandchild, now=NOW + 300)
    assert (v.not_before, v.expires, v.audiences) == (NOW + 200, NOW + 700, frozenset({AUDIENCE}))
    with pytest.raises(caps.TokenError) as info:
        caps.Verifier([HOST.public], audience="run-7").verify(child, now=NOW + 300)
    assert info.value.reason is caps.Reason.WRONG_AUDIENCE


def test_attenuating_to_a_foreign_audience_is_refused():
    with pytest.raises(caps.RightError, match="not one the token is addressed to"):
        caps.attenuate(mint(), audience=["run-99"], now=NOW)


def test_nothing_to_attenuate():
    with pytest.raises(caps.CapsError, match="nothing to attenuate"):
        caps.attenuate(mint(), now=NOW)


def test_sealed_tokens_cannot_be_attenuated_but_verify(verifier):
    sealed = caps.seal(mint())
    assert verifier.authorize(sealed, "read", "src/a.py", now=NOW).allowed
    for attempt in (lambda: caps.attenuate(sealed, ttl=10, now=NOW), lambda: caps.seal(sealed)):
        with pytest.raises(caps.TokenError) as info:
            attempt()
        assert info.value.reason is caps.Reason.SEALED
    born_sealed = mint(seal=True)
    assert caps.inspect(born_sealed).sealed
    assert verifier.authorize(born_sealed, "read", "src/a.py", now=NOW).allowed
    sealed_child = caps.attenuate(mint(), rights=["read docs/**"], seal=True, now=NOW)
    assert caps.inspect(sealed_child).sealed and len(caps.inspect(sealed_child).blocks) == 2


def test_mint_requires_expiry_and_audience():
    with pytest.raises(caps.RightError, match="expiry"):
        caps.mint(HOST, rights=["read **"], audience=AUDIENCE, now=NOW)
    with pytest.raises(caps.RightError, match="audience"):
        caps.mint(HOST, rights=["read **"], audience=[], ttl=10, now=NOW)
    with pytest.raises(caps.RightError, match="not a valid audience"):
        caps.mint(HOST, rights=["read **"], audience="run 42", ttl=10, now=NOW)
    with pytest.raises(caps.RightError, match="ttl must be positive"):
        caps.mint(HOST, rights=["read **"], audience=AUDIENCE, ttl=0, now=NOW)


def test_empty_rights_allow_nothing(verifier):
    child = caps.attenuate(mint(), rights=[], now=NOW)
    assert not verifier.authorize(child, "read", "src/a.py", now=NOW).allowed


def test_a_child_naming_a_wider_path_still_reaches_only_what_its_parent_names():
    verifier = caps.Verifier([HOST.public], audience=AUDIENCE)
    parent = mint(rights=[caps.Right("connect", "https://github.com/acme/** methods GET,POST")])
    child = caps.attenuate(parent, rights=[caps.Right("connect", "https://github.com/**")], ttl=60, now=NOW)
    push = "POST https://github.com/attacker/x.git/git-receive-pack"
    assert not verifier.authorize(parent, "connect", push, now=NOW).allowed
    assert not verifier.authorize(child, "connect", push, now=NOW).allowed
    ours = "POST https://github.com/acme/x.git/git-receive-pack"
    assert verifier.authorize(child, "connect", ours, now=NOW).allowed
    get_only = caps.attenuate(parent, rights=[caps.Right.parse("connect https://github.com/acme/** methods GET")],
                              ttl=60, now=NOW)
    assert not verifier.authorize(get_only, "connect", ours, now=NOW).allowed
    assert verifier.authorize(get_only, "connect", "GET https://github.com/acme/x.git/info/refs", now=NOW).allowed
    # a blind connection cannot be checked request by request: only an inspected one is admitted
    assert not verifier.authorize(parent, "connect", "https://github.com", now=NOW).allowed
    assert verifier.authorize(parent, "connect", Endpoint("https", "github.com", 443, inspected=True), now=NOW).allowed


def test_a_path_in_a_connect_right_has_the_backtracking_bounds_of_a_path_right():
    with pytest.raises(caps.RightError):
        caps.Right("connect", "https://h/**/a/**/b")
    with pytest.raises(caps.RightError):
        caps.Right("connect", "https://h/*a*b*c/x")
    right = caps.Right.parse("connect https://h/repos/*/x methods GET,POST")
    assert right.pattern == "https://h/repos/*/x methods GET,POST"
