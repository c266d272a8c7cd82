"""Compiler: name resolution, lattice, precedence, includes — and errors that point at use and definition."""

from __future__ import annotations

from pathlib import Path

import pytest

from ifc.match import Endpoint
from ifc.policy import compile_file, compile_text
from ifc.policy.labels import Label

BASE = "labels { secrecy public < internal < secret  secrecy customer  integrity untrusted < trusted }\n"


def compiled(text: str):
    result = compile_text(BASE + text, "p.flow")
    assert result.policy is not None, [(d.span.line, d.message) for d in result.diagnostics]
    return result.policy


def errors(text: str):
    result = compile_text(BASE + text, "p.flow")
    assert result.policy is None
    return [d for d in result.diagnostics if d.severity.name == "ERROR"]


def test_chain_encoding_and_join():
    p = compiled('files { "a" secret "b" internal + customer "c" public + untrusted }')
    a, b, c = (p.file_label(x).label for x in "abc")
    assert a.secrecy == {"internal", "secret"} and a.integrity == 1
    assert b.secrecy == {"internal", "customer"}
    assert c == Label(frozenset(), 0)
    joined = a.join(b).join(c)
    assert p.lattice.describe(joined) == "secret + customer, untrusted"


def test_last_matching_file_rule_wins_and_except_falls_through():
    p = compiled('files { "**" internal  ".env*" secret except ".env.example"  "docs/**" public }')
    assert p.lattice.describe(p.file_label(".env").label) == "secret, trusted"
    assert p.lattice.describe(p.file_label("sub/.env.local").label) == "secret, trusted"
    assert p.lattice.describe(p.file_label(".env.example").label) == "internal, trusted"
    assert p.lattice.describe(p.file_label("docs/a.md").label) == "public, trusted"
    assert p.file_label("docs/a.md").rule.index == 2


def test_unlabelled_file_is_public_and_trusted():
    p = compiled('files { "src/**" internal }')
    match = p.file_label("README.md")
    assert match.rule is None and match.label == p.lattice.bottom


def test_endpoints_last_match_wins_and_unknown_is_none():
    p = compiled('endpoints { "https://*.example.com" clearance internal  "https://evil.example.com" as bad }')
    assert p.endpoint_rule(Endpoint.parse("https://evil.example.com")).groups == {"bad"}
    assert p.endpoint_rule(Endpoint.parse("https://ok.example.com")).clearance == {"internal"}
    assert p.endpoint_rule(Endpoint.parse("https://example.org")) is None


def test_named_labels_resolve_including_earlier_named_labels():
    p = compiled('labels { label pii = internal + customer  label hot = pii + secret } files { "x" hot }')
    assert p.file_label("x").label.secrecy == {"internal", "secret", "customer"}


def test_unknown_name_points_at_use_and_suggests_definition():
    [e] = errors('files { "a" secert }')
    assert e.code == "unknown-name" and "`secert`" in e.message
    assert (e.span.line, e.span.column) == (2, 13)
    assert e.help == "did you mean `secret`?"
    assert e.related and e.related[0].span.line == 1


def test_duplicate_definition_points_at_both():
    [e] = errors("labels { secrecy customer }")
    assert e.code == "duplicate-definition"
    assert e.span.line == 2 and e.related[0].span.line == 1


def test_integrity_level_used_as_clearance_is_wrong_kind():
    [e] = errors('endpoints { "https://a.com" clearance untrusted }')
    assert e.code == "wrong-kind" and e.related


def test_bad_patterns_are_located_inside_the_string():
    errs = errors('files { "src/**x" secret } endpoints { "ftp://a.com" }')
    assert [e.code for e in errs] == ["bad-pattern", "bad-pattern"]
    assert errs[0].span.column == 9 + 1 + len("src/")
    assert "unknown scheme" in errs[1].message


def test_a_secret_command_that_does_not_split_is_an_error_at_its_string():
    [e] = errors('secret K from command "cat \'~/token" to "https://a.com"')
    assert e.code == "bad-secret" and "does not parse: no closing quotation" in e.message
    assert (e.span.line, e.span.column) == (2, 23) and e.help


def test_delegate_must_be_covered_by_own_grants():
    [e] = errors('agent a { read "src/**" delegate read "**" }')
    assert e.code == "delegate-widens"
    ok = compiled('agent a { read "src/**" connect "https://*.x.com" delegate read "src/lib/**" '
                  'delegate connect "https://api.x.com" }')
    assert [g.pattern for g in ok.agents["a"].delegable] == ["src/lib/**", "https://api.x.com"]


def test_holds_unknown_capability_and_group():
    errs = errors("agent a { holds nothing } deny secret -> extrenal")
    assert {e.code for e in errs} == {"unknown-name"}


def test_agent_declassifications_for_tokens():
    p = compiled('declassify push: internal -> "https://github.com" agent a { holds push }')
    assert p.agents["a"].declassifications == (("internal", "https://github.com"),)


def test_all_errors_in_one_pass_syntax_and_meaning():
    result = compile_text(BASE + 'files { "a" secert }\ndeny secret external\nagent a { read "x" "y" }\n', "p.flow")
    assert [d.span.line for d in result.diagnostics if d.severity.name == "ERROR"] == [2, 3, 4]


def test_includes_are_textual_and_cycles_are_errors(tmp_path: Path):
    (tmp_path / "labels.flow").write_text(BASE)
    (tmp_path / "main.flow").write_text('include "labels.flow"\nfiles { "**" secret }\n')
    p = compile_file(tmp_path / "main.flow").policy
    assert p is not None and p.file_label("x").label.secrecy == {"internal", "secret"}
    (tmp_path / "a.flow").write_text('include "b.flow"\n')
    (tmp_path / "b.flow").write_text('include "a.flow"\n')
    result = compile_file(tmp_path / "a.flow")
    assert [d.code for d in result.diagnostics] == ["include-cycle"]
    (tmp_path / "m.flow").write_text('include "nope.flow"\n')
    [d] = compile_file(tmp_path / "m.flow").diagnostics
    assert d.code == "include-missing" and d.span.line == 1


def test_unreadable_policy_is_a_diagnostic(tmp_path: Path):
    (tmp_path / "bin.flow").write_bytes(b"\xff\xfe\x00")
    [d] = compile_file(tmp_path / "bin.flow").diagnostics
    assert d.code == "unreadable" and "UTF-8" in d.message


def test_policy_is_hashable_and_digest_is_stable():
    a = compiled('files { "a" secret }')
    b = compiled('files { "a" secret }')
    assert a == b and hash(a) == hash(b) and a.digest == b.digest
    assert compiled('files { "a" internal }').digest != a.digest


@pytest.mark.parametrize("shipped", sorted(Path("policies").glob("*.flow")))
def test_shipped_policies_compile(shipped):
    assert compile_file(shipped).policy is not None
