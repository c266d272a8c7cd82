"""Parsing: structure, escapes, and syntax errors that a person can act on."""

from __future__ import annotations

import pytest

from ifc.lang import ast, parse_text
from ifc.lang.lower import decode_string, encode_string


def items(text: str):
    result = parse_text(text, "t.flow")
    assert result.ok, [d.message for d in result.diagnostics]
    return result.file.items


def test_every_statement_kind_parses():
    got = items('''
        include "other.flow"
        labels { secrecy public < internal < secret  secrecy customer  integrity untrusted < trusted
                 label pii = internal + customer }
        files { "**" internal  ".env*", "*.pem" secret except ".env.example"
                ".github/**" internal writes require trusted }
        endpoints { "https://api.x.com" clearance internal returns trusted as model, external
                    "smtp://*" requires trusted }
        secret KEY from env "KEY" to "https://api.x.com"
        agent coder { read "**" write "src/**", "tests/**" delegate read "src/**" holds push }
        deny secret -> external "no"
        deny untrusted -> file ".github/**" "ci"
        allow internal -> "https://api.x.com"
        declassify push: internal -> "https://github.com" "reviewed"
        endorse ci: untrusted -> file ".github/**"
    ''')
    kinds = [type(i).__name__ for i in got]
    assert kinds == ["Include", "LabelsBlock", "FilesBlock", "EndpointsBlock", "SecretDecl", "AgentBlock",
                     "FlowRule", "FlowRule", "FlowRule", "CapabilityDecl", "CapabilityDecl"]
    files = got[2]
    assert [p.text for p in files.rules[1].patterns] == [".env*", "*.pem"]
    assert [p.text for p in files.rules[1].excepts] == [".env.example"]
    assert files.rules[2].writes_require.text == "trusted"
    endpoint = got[3].rules[0]
    assert [g.text for g in endpoint.groups] == ["model", "external"]
    assert got[9].kind == "declassify" and got[9].name.text == "push"


def test_names_that_look_like_keywords_are_labels_where_a_label_is_expected():
    got = items('labels { secrecy file < read < secret < label } files { "a" secret  "b" read + file }')
    rules = got[1].rules
    assert [t.text for t in rules[0].label.terms] == ["secret"]
    assert [t.text for t in rules[1].label.terms] == ["read", "file"]


def test_keywords_are_whole_words():
    result = parse_text("filesx { }", "t.flow")
    assert not result.ok
    assert "filesx" in result.diagnostics[0].message


def test_arrow_is_not_part_of_a_dashed_name():
    got = items("declassify push-reviewed: internal->external")
    assert got[0].name.text == "push-reviewed"
    assert got[0].sink.group.text == "external"


def test_spans_point_at_the_source():
    got = items('\n\nfiles {\n  "a" secret\n}')
    rule = got[0].rules[0]
    assert (rule.span.line, rule.span.column) == (4, 3)
    assert (rule.label.terms[0].span.line, rule.label.terms[0].span.column) == (4, 7)


def test_comments_are_collected_with_positions():
    result = parse_text('# head\nfiles { "a" x  # tail\n}\n', "t.flow")
    assert [(c.text, c.line, c.column) for c in result.file.comments] == [("# head", 1, 1), ("# tail", 2, 16)]


@pytest.mark.parametrize(("literal", "value"), [
    (r'"plain"', "plain"),
    (r'"a\"b"', 'a"b'),
    (r'"back\\slash"', "back\\slash"),
    (r'"tab\tnl\n"', "tab\tnl\n"),
    (r'"lock \u{1F512}"', "lock \U0001F512"),
])
def test_string_escapes(literal, value):
    assert decode_string(literal) == value
    assert decode_string(encode_string(value)) == value


@pytest.mark.parametrize("text", [r'files { "\q" x }', r'files { "\u{}" x }', r'files { "\u{110000}" x }'])
def test_bad_escapes_are_located_errors(text):
    result = parse_text(text, "t.flow")
    assert len(result.diagnostics) == 1
    d = result.diagnostics[0]
    assert d.code == "syntax" and d.span.line == 1 and d.span.column > 9
    assert "escape" in d.message


SYNTAX_CASES = [
    ('files { "a" }', "needs a label", None),
    ("deny secret external", "needs `->`", None),
    ('agent a { readd "x" }', "agent block", "did you mean `read`?"),
    ("lables { }", "top-level statement", "did you mean `labels`?"),
    ('secret X from vault "y"', "a secret needs a source", None),
    ('files { "a" x', "unclosed block", "add the missing `}`"),
    ('files { "a', "unterminated string", None),
]


@pytest.mark.parametrize(("text", "fragment", "help"), SYNTAX_CASES)
def test_friendly_syntax_errors(text, fragment, help):
    result = parse_text(text, "t.flow")
    assert result.diagnostics, text
    d = result.diagnostics[0]
    assert fragment in d.message
    assert d.span.file == "t.flow" and d.span.line >= 1 and d.span.column >= 1
    if help:
        assert d.help == help


def test_all_syntax_errors_reported_in_one_pass_and_good_statements_kept():
    text = 'labels { secrecy a < b }\nfiles { "x" }\ndeny b external\nagent q { readd "y" }\ndeny b -> "h.com" "ok"\n'
    result = parse_text(text, "t.flow")
    assert [d.span.line for d in result.diagnostics] == [2, 3, 4]
    assert [type(i) for i in result.file.items] == [ast.LabelsBlock, ast.FlowRule]


def test_huge_input_is_refused_not_parsed():
    result = parse_text("#" * (5 * 1024 * 1024), "big.flow")
    assert result.diagnostics[0].code == "policy-too-large"
