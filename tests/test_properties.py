"""Property tests (hypothesis): robustness of the front end, order independence of decisions, the label
lattice laws and the glob matcher's promises."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ifc.check import check
from ifc.diagnostics import Diagnostic, Severity
from ifc.match import Glob, PatternError
from ifc.monitor.session import Session
from ifc.policy import compile_text
from ifc.policy.labels import Label

POLICIES = sorted((Path(__file__).resolve().parent.parent / "policies").glob("*.flow"))
DEFAULT = Path(__file__).resolve().parent.parent / "policies" / "default.flow"


def _no_includes(path: Path) -> str:
    raise FileNotFoundError(path)  # mutations can invent `include`s: keep the test off the disk


def _front_end(text: str, filename: str) -> None:
    """compile_text and check return diagnostics, whatever the text; any exception fails the test."""
    result = compile_text(text, filename, reader=_no_includes)
    assert all(isinstance(d, Diagnostic) for d in result.diagnostics)
    if result.policy is None:
        assert any(d.severity is Severity.ERROR for d in result.diagnostics), "no policy but no error"
    checked = check(result)
    assert all(isinstance(d, Diagnostic) for d in checked.diagnostics)
    for d in checked.diagnostics:
        assert d.span.line >= 1 and d.span.column >= 1, d


# ------------------------------------------------------------------------------------ (a) mutations

_TOKENS = re.compile(r'"(?:[^"\\\n]|\\.)*"?|#[^\n]*|[A-Za-z_][A-Za-z0-9_-]*|->|\s+|.', re.DOTALL)
_SYNTAX_CHARS = list('{}"\\,:<+=-># \n\t*?[]!~/.') + list("aezAZ_09") + ["->", "é", "\x00", "\u202e"]


@st.composite
def mutated(draw, text: str) -> str:
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "swap", "truncate", "dup-line"]))
        if kind == "delete" and text:
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + text[i + 1:]
        elif kind == "insert":
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.sampled_from(_SYNTAX_CHARS)) + text[i:]
        elif kind == "swap":
            tokens = _TOKENS.findall(text)
            solid = [i for i, t in enumerate(tokens) if not t.isspace()]
            if len(solid) >= 2:
                a, b = draw(st.sampled_from(solid)), draw(st.sampled_from(solid))
                tokens[a], tokens[b] = tokens[b], tokens[a]
                text = "".join(tokens)
        elif kind == "truncate":
            text = text[:draw(st.integers(0, len(text)))]
        elif kind == "dup-line":
            lines = text.splitlines(keepends=True)
            if lines:
                i = draw(st.integers(0, len(lines) - 1))
                lines.insert(draw(st.integers(0, len(lines))), lines[i])
                text = "".join(lines)
    return text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(data=st.data())
def test_mutated_shipped_policies_only_produce_diagnostics(data) -> None:
    """200 mutants in all, spread over every shipped policy (one draw picks the policy). Derandomized: some
    mutants make the checker's exact glob searches take minutes (a known limit, see docs/benchmarks.md), so CI
    runs the same 200 every time rather than a random draw that may hit one."""
    policy = data.draw(st.sampled_from(POLICIES), label="policy")
    text = data.draw(mutated(policy.read_text(encoding="utf-8")), label="mutated text")
    _front_end(text, str(policy))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_random_unicode_only_produces_diagnostics(text: str) -> None:
    _front_end(text, "<random>")


@settings(max_examples=100, deadline=None)
@given(words=st.lists(st.sampled_from([
    "labels", "files", "endpoints", "agent", "secret", "deny", "allow", "declassify", "endorse", "include",
    "secrecy", "integrity", "label", "except", "writes", "require", "clearance", "requires", "returns", "as",
    "from", "to", "read", "connect", "delegate", "holds", "file", "env", "{", "}", ",", ":", "<", "+", "=",
    "->", '"**"', '"https://x.com"', '""', '"a\\q"', "public", "secret", "untrusted", "trusted", "x", "\n",
]), max_size=40))
def test_random_token_soup_only_produces_diagnostics(words: list[str]) -> None:
    _front_end(" ".join(words), "<soup>")


@functools.cache
def _default_policy():
    result = compile_text(DEFAULT.read_text(encoding="utf-8"), str(DEFAULT))
    assert result.policy is not None
    return result.policy


def test_a_long_file_pattern_list_only_produces_diagnostics() -> None:
    patterns = ", ".join(f'"d{i}/**"' for i in range(600))
    _front_end(f"labels {{\n  secrecy public < secret\n}}\nfiles {{\n  {patterns} secret\n}}\n", "<long>")


_SESSION_OPS = st.sampled_from(["read", "write", "create", "delete", "exec", "connect", "send", "x"])
_SESSION_TARGETS = st.one_of(st.text(max_size=30), st.sampled_from([
    ".env", "src/a.py", "../x", "https://api.anthropic.com", "smtp.gmail.com:587", "[::1]:443", "https://",
    "@",
    "ANTHROPIC_API_KEY@https://api.anthropic.com"]))


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(_SESSION_OPS, _SESSION_TARGETS), min_size=1, max_size=6))
def test_session_never_fails_internally(steps) -> None:
    """`decide` turns an internal exception into a denial; no input should need that safety net."""
    policy = _default_policy()
    agent = next(iter(policy.agents_), None)
    for session in (Session(policy), Session(policy, agent)):
        for op, target in steps:
            decision = session.decide(op, target)
            assert "internal error" not in decision.reason, (op, target, decision.reason)


# ------------------------------------------------------------------------------------ (b) order independence

_HEADER = """\
labels {
  secrecy public < internal < secret
  secrecy customer
  integrity untrusted < trusted
}
"""
_ENDPOINTS = [
    '"https://a.example.com" clearance internal returns trusted as ga, external',
    '"https://b.example.com" clearance public returns untrusted as gb, external',
    '"https://c.example.com" clearance secret + customer returns trusted as gc',
]
_LABELS = ["public", "internal", "secret", "customer", "secret + customer", "internal + untrusted",
           "untrusted", "trusted"]
_SOURCES = ["public", "internal", "secret", "customer", "untrusted", "internal + untrusted",
            "secret + customer"]
_SINKS = ['"https://a.example.com"', '"https://b.example.com"', "external", "ga", "gb", "gc",
          'file "d0/**"', 'file "d1/**"', 'file "d2/x/**"']
_TARGETS = ["https://a.example.com", "https://b.example.com", "https://c.example.com", "https://z.example.com"]


@st.composite
def order_case(draw):
    n_files = draw(st.integers(1, 5))
    file_rules = [f'"d{i}/**" {draw(st.sampled_from(_LABELS))}'
                  + (" writes require trusted" if draw(st.booleans()) else "") for i in range(n_files)]
    flows = draw(st.lists(st.builds(lambda e, s, k: f"{e} {s} -> {k}", st.sampled_from(["deny", "allow"]),
                                    st.sampled_from(_SOURCES), st.sampled_from(_SINKS)), max_size=6))
    paths = [f"d{i}/{leaf}" for i in range(n_files + 1) for leaf in ("f", "x/y")] + ["top.txt"]
    file_op = st.sampled_from(["read", "write", "create", "exec", "delete"])
    op = st.one_of(st.tuples(file_op, st.sampled_from(paths)),
                   st.tuples(st.just("connect"), st.sampled_from(_TARGETS)))
    ops = draw(st.lists(op, min_size=1, max_size=8))
    perm = (draw(st.permutations(file_rules)), draw(st.permutations(flows)),
            draw(st.permutations(_ENDPOINTS)))
    return (file_rules, flows, list(_ENDPOINTS)), perm, ops


def _policy_text(file_rules, flows, endpoints) -> str:
    return (_HEADER + "files {\n" + "".join(f"  {r}\n" for r in file_rules) + "}\nendpoints {\n"
            + "".join(f"  {e}\n" for e in endpoints) + "}\n" + "".join(f"{f}\n" for f in flows))


@settings(max_examples=100, deadline=None)
@given(case=order_case())
def test_decisions_do_not_depend_on_the_order_of_unrelated_rules(case) -> None:
    original, permuted, ops = case
    policies = []
    for parts in (original, permuted):
        result = compile_text(_policy_text(*parts), "<order>")
        assert result.policy is not None, [d.message for d in result.errors]
        policies.append(result.policy)
    a, b = (Session(p) for p in policies)
    for op, target in ops:
        da, db = a.decide(op, target), b.decide(op, target)
        assert "internal error" not in da.reason, da.reason
        assert (da.allowed, a.taint) == (db.allowed, b.taint), (op, target, da.reason, db.reason)
        assert a.floated == b.floated
    for op, target in ops:  # and the labels of what was touched agree
        if op != "connect":
            assert a.label_of(target) == b.label_of(target)


# ------------------------------------------------------------------------------------ (c) lattice laws

labels = st.builds(Label, st.frozensets(st.sampled_from(["internal", "secret", "customer", "x"])),
                   st.integers(0, 3))


@given(a=labels, b=labels, c=labels)
def test_label_join_is_a_join(a: Label, b: Label, c: Label) -> None:
    assert a.join(b) == b.join(a)
    assert a.join(b).join(c) == a.join(b.join(c))
    assert a.join(a) == a
    assert a.flows_to(a.join(b)) and b.flows_to(a.join(b))
    if a.flows_to(c) and b.flows_to(c):  # least upper bound
        assert a.join(b).flows_to(c)


@given(a=labels, b=labels, c=labels)
def test_flows_to_is_a_partial_order(a: Label, b: Label, c: Label) -> None:
    assert a.flows_to(a)
    if a.flows_to(b) and b.flows_to(a):
        assert a == b
    if a.flows_to(b) and b.flows_to(c):
        assert a.flows_to(c)
    assert a.flows_to(b) == (a.join(b) == b)


# ------------------------------------------------------------------------------------ (d) globs

_NAME = st.sampled_from(["a", "b", "ab", "a.b", "x_1", "-z", ".env", "A"])
_WILD_SEGMENT = st.one_of(
    _NAME, st.just("*"), st.just("**"), st.just("?"), st.just("*.py"), st.just("a*"), st.just("?b"),
    st.just("[a-c]x"), st.just("[!a]"), st.just("[^ab]*"), st.just("\\*"), st.just("a\\?"), st.just("[.]b"),
)


@st.composite
def glob_patterns(draw):
    segments = draw(st.lists(_WILD_SEGMENT, min_size=1, max_size=4))
    lead = draw(st.sampled_from(["", "", "/", "~/"]))
    tail = draw(st.sampled_from(["", "", "/"]))
    return lead + "/".join(segments) + tail


@settings(max_examples=300)
@given(pattern=glob_patterns())
def test_glob_examples_are_matched(pattern: str) -> None:
    try:
        glob = Glob.compile(pattern)
    except PatternError:
        assume(False)
    examples = glob.examples()
    assert examples
    for example in examples:
        assert glob.matches(example), (pattern, glob.regex, example)


@pytest.mark.parametrize("pattern", ["[!~]", "[!]]x", "[\\]]"])
def test_glob_examples_of_tricky_classes_are_matched(pattern: str) -> None:
    glob = Glob.compile(pattern)
    assert all(glob.matches(e) for e in glob.examples()), (pattern, glob.regex, glob.examples())


_PATH = st.lists(st.sampled_from(["a", "b", "ab", "a.b", ".env"]), min_size=1, max_size=4).map("/".join)


@given(segments=st.lists(st.sampled_from(["a", "b", "ab", "a.b", ".env"]), min_size=1, max_size=3),
       lead=st.sampled_from(["", "/"]), path=_PATH)
def test_literal_glob_matches_itself_and_descendants_only(segments: list[str], lead: str, path: str) -> None:
    literal = "/".join(segments)
    glob = Glob.compile(lead + literal)
    assert glob.matches(literal)
    assert glob.matches(literal + "/child/leaf")
    assert not glob.matches(literal + "x")
    if len(segments) > 1 or lead:  # anchored at the root
        expected = path == literal or path.startswith(literal + "/")
    else:  # a bare name matches that name at any depth, and everything beneath it
        expected = literal in path.split("/")
    assert glob.matches(path) == expected, (lead + literal, path)


# ------------------------------------------------------------------------------------ (e) exact set questions

_CHARS = st.sampled_from(["a", "b", "ab", "a.b", ".env", "x y", "~", "]"])
_PATHS = st.lists(_CHARS, min_size=1, max_size=4).map("/".join)


@settings(max_examples=200, deadline=None)
@given(a=glob_patterns(), b=glob_patterns(), paths=st.lists(_PATHS, max_size=10))
def test_glob_overlap_and_within_agree_with_matching(a: str, b: str, paths: list[str]) -> None:
    try:
        ga, gb = Glob.compile(a), Glob.compile(b)
    except PatternError:
        assume(False)
    witness = ga.overlap(gb)
    if witness is not None:
        assert ga.matches(witness) and gb.matches(witness), (a, b, witness)
    assert (witness is None) == (gb.overlap(ga) is None), (a, b)
    candidates = [*paths, *ga.examples(), *gb.examples()]
    if any(ga.matches(p) and gb.matches(p) for p in candidates):
        assert witness is not None, (a, b, [p for p in candidates if ga.matches(p) and gb.matches(p)])
    assert ga.within((ga,))
    if not a.startswith("~"):
        assert ga.within((Glob.compile("**"), Glob.compile("*")))  # `*` adds the empty path
    if ga.within((gb,)):
        assert all(gb.matches(p) for p in candidates if ga.matches(p)), (a, b)
        assert not ga.within((gb,), minus=(ga,)), (a, b)
