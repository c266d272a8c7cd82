"""`ifc fmt`: golden layouts, round trips (`parse(fmt(parse(x))) == parse(x)`), comments, the CLI.

Regenerate the golden outputs after an intended layout change with
    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_format.py
and review the diff of `tests/golden/fmt/*.expected`.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import stat
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ifc.cli import ExitCode
from ifc.cli.render import render_text
from ifc.diagnostics import Related, Span, error, warning
from ifc.lang import ast
from ifc.lang.format import ALIGN_CAP, format_policy
from ifc.lang.parse import parse_text

GOLDEN = Path(__file__).resolve().parent / "golden" / "fmt"
GOLDEN_INPUTS = sorted(GOLDEN.glob("*.flow"))


def parse_ok(text: str, name: str = "<test>") -> ast.PolicyFile:
    result = parse_text(text, name)
    assert result.ok, [f"{d.span}: {d.message}" for d in result.diagnostics]
    return result.file


def fmt(text: str) -> str:
    return format_policy(parse_ok(text))


def comment_texts(file: ast.PolicyFile) -> Counter:
    return Counter(c.text.rstrip() for c in file.comments)


def assert_layout_invariants(out: str) -> None:
    assert out == "" or out.endswith("\n")
    assert "\n\n\n" not in out and not out.startswith("\n")
    for line in out.split("\n"):
        assert line == line.rstrip(), f"trailing whitespace in {line!r}"
        assert not line.startswith("\t")


# ---------------------------------------------------------------------------------------- golden files
def test_golden_files_exist():
    assert len(GOLDEN_INPUTS) >= 6
    for path in GOLDEN_INPUTS:
        assert path.with_suffix(".expected").exists(), f"{path.name} has no .expected file"


@pytest.mark.parametrize("path", GOLDEN_INPUTS, ids=lambda p: p.stem)
def test_golden(path: Path):
    source = path.read_text(encoding="utf-8")
    expected_path = path.with_suffix(".expected")
    original = parse_ok(source, path.name)
    out = format_policy(original)
    if os.environ.get("UPDATE_GOLDEN"):
        expected_path.write_text(out, encoding="utf-8")
    assert out == expected_path.read_text(encoding="utf-8")
    again = parse_ok(out, path.name)
    assert again.items == original.items
    assert comment_texts(again) == comment_texts(original)
    assert_layout_invariants(out)


@pytest.mark.parametrize("path", GOLDEN_INPUTS, ids=lambda p: p.stem)
def test_golden_expected_is_a_fixed_point(path: Path):
    expected = path.with_suffix(".expected").read_text(encoding="utf-8")
    assert fmt(expected) == expected


def test_goldens_cover_every_statement_kind():
    kinds = set()
    for path in GOLDEN_INPUTS:
        file = parse_ok(path.read_text(encoding="utf-8"), path.name)
        for item in file.items:
            kinds.add(type(item))
            kinds.update(type(child) for child in getattr(item, "decls", ()) + getattr(item, "items", ()))
            if isinstance(item, ast.FlowRule | ast.CapabilityDecl):
                kinds.add((type(item), item.sink.kind))
    expected = {ast.Include, ast.LabelsBlock, ast.FilesBlock, ast.EndpointsBlock, ast.SecretDecl,
                ast.AgentBlock, ast.FlowRule, ast.CapabilityDecl, ast.SecrecyDecl, ast.IntegrityDecl,
                ast.NamedLabel, ast.Grant, ast.Holds,
                (ast.FlowRule, "endpoint"), (ast.FlowRule, "group"), (ast.FlowRule, "file")}
    assert expected <= kinds


# ---------------------------------------------------------------------------------------- layout rules
def test_empty_and_comment_only_files():
    assert fmt("") == ""
    assert fmt("  \n\n") == ""
    assert fmt("# just a note   \n\n\n# another\n") == "# just a note\n\n# another\n"


def test_blank_lines_between_kinds_but_not_between_flow_rules():
    src = 'include "a.flow" include "b.flow" deny a -> b allow c -> d deny e -> f "m" secret S from env "S"'
    assert fmt(src) == (
        'include "a.flow"\ninclude "b.flow"\n\n'
        'deny a -> b\nallow c -> d\ndeny e -> f "m"\n\n'
        'secret S from env "S"\n'
    )


def test_blank_lines_inside_blocks_are_dropped_unless_next_to_a_comment():
    src = 'files {\n\n  "a" x\n\n\n  "b" y\n\n  # group two\n  "c" z\n\n}\n'
    assert fmt(src) == 'files {\n  "a"  x\n  "b"  y\n\n  # group two\n  "c"  z\n}\n'


def test_alignment_is_capped():
    short, long_ = '"a"', '"' + "d/" * 30 + '"'
    out = fmt(f'files {{ {short} x {long_} y "bb", "cc" z }}')
    lines = out.splitlines()
    assert lines[1] == '  "a"         x'
    assert lines[2] == f"  {long_}  y"  # overhangs, does not move the column
    assert lines[3] == '  "bb", "cc"  z'
    assert len(long_) > ALIGN_CAP


def test_endpoint_without_options_has_no_padding():
    assert fmt('endpoints { "a.example.com:443" clearance public "b:1" }') == (
        'endpoints {\n  "a.example.com:443"  clearance public\n  "b:1"\n}\n')


def test_options_are_printed_in_canonical_order():
    a = fmt('endpoints { "h" except "x" as g returns r requires q clearance c }')
    b = fmt('endpoints { "h" clearance c requires q returns r as g except "x" }')
    assert a == b == 'endpoints {\n  "h"  clearance c requires q returns r as g except "x"\n}\n'


def test_strings_are_printed_with_canonical_escapes():
    assert fmt('include "\\u{66}\\u{006F}o\\t\\"\\\\.flow"') == 'include "foo\\t\\"\\\\.flow"\n'


# ---------------------------------------------------------------------------------------- comments
COMMENTED = """\
# header
labels { # open
  # lead
  secrecy a < b # trail
  # end of block
} # close
files {
  # only comment
}
agent x
{ read "a",  # mid-rule
  "b" }
deny a ->   # in rule
  b "m" # after rule
# eof
"""


def test_every_comment_survives_with_its_text():
    original = parse_ok(COMMENTED)
    out = format_policy(original)
    again = parse_ok(out)
    assert len(again.comments) == len(original.comments) == 11
    assert comment_texts(again) == comment_texts(original)
    assert again.items == original.items


def test_comment_positions():
    assert fmt(COMMENTED) == """\
# header
labels {  # open
  # lead
  secrecy a < b  # trail
  # end of block
}  # close

files {
  # only comment
}

agent x {
  # mid-rule
  read "a", "b"
}

# in rule
deny a -> b "m"  # after rule
# eof
"""


def test_comment_after_a_one_line_block_stays_after_it():
    assert fmt('files { "a" x } # done\n') == 'files {\n  "a"  x\n}  # done\n'
    assert fmt('files { "a" x # on the rule\n}\n') == 'files {\n  "a"  x  # on the rule\n}\n'
    assert fmt("files {} # empty\n") == "files {}  # empty\n"


def test_hash_inside_a_string_is_not_a_comment():
    out = fmt('files { "#a" x }  # real\n')
    assert out == 'files {\n  "#a"  x\n}  # real\n'
    assert len(parse_ok(out).comments) == 1


# ---------------------------------------------------------------------------------------- hypothesis
KEYWORDISH = ("deny", "allow", "files", "secret", "label", "labels", "read", "as", "to", "from", "file",
              "env", "holds", "agent", "include", "clearance", "except")
names = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}(-[A-Za-z0-9_]{1,3})?", fullmatch=True),
    st.sampled_from(KEYWORDISH),
)
pattern_texts = st.one_of(
    st.sampled_from(["**", "src/**", ".env*", "*.github.com:443", "https://**.example.com", "10.0.0.0/8",
                     "~/.ssh/id_*", "[a-z]?.txt", ""]),
    st.text(alphabet=st.one_of(st.sampled_from('"\\\n\t\r#{}*,-> \x00\x7f'),
                               st.characters(exclude_categories=("Cs",))), max_size=12),
)
ESCAPE_FORMS = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t"}


@st.composite
def literals(draw, texts=pattern_texts) -> str:
    """A string literal for a random text, each character written raw or as any escape that means it."""
    rnd = draw(st.randoms(use_true_random=False))  # one draw for all the choices: generation stays fast
    out = ['"']
    for ch in draw(texts):
        forms = [f"\\u{{{ord(ch):x}}}", f"\\u{{{ord(ch):04X}}}"]
        if ch not in '"\\\n':
            forms += [ch] * 4
        if ch in ESCAPE_FORMS:
            forms += [ESCAPE_FORMS[ch]] * 4
        out.append(rnd.choice(forms))
    out.append('"')
    return "".join(out)


def joined(items: list[str], sep: str) -> list[str]:
    out: list[str] = []
    for i, item in enumerate(items):
        if i:
            out.append(sep)
        out.append(item)
    return out


@st.composite
def label_exprs(draw) -> list[str]:
    return joined(draw(st.lists(names, min_size=1, max_size=3)), "+")


@st.composite
def pattern_lists(draw) -> list[str]:
    return joined(draw(st.lists(literals(), min_size=1, max_size=3)), ",")


@st.composite
def options(draw, choices: dict) -> list[str]:
    keys = draw(st.permutations(list(choices)))
    keys = keys[:draw(st.integers(0, len(keys)))]
    return [tok for key in keys for tok in draw(choices[key])]


def _seq(*parts):
    return st.tuples(*parts).map(lambda ps: [tok for p in ps for tok in p])


def _one(tok):
    return st.just([tok])


names_list = st.lists(names, min_size=1, max_size=3).map(lambda ns: [t for i, n in enumerate(ns)
                                                                      for t in ([","] if i else []) + [n]])
label_decl = st.one_of(
    _seq(st.sampled_from([["secrecy"], ["integrity"]]), st.lists(names, min_size=1, max_size=4).map(
        lambda ns: [t for i, n in enumerate(ns) for t in (["<"] if i else []) + [n]])),
    _seq(_one("label"), names.map(lambda n: [n]), _one("="), label_exprs()),
)
file_rule = _seq(pattern_lists(), label_exprs(), options({
    "except": _seq(_one("except"), pattern_lists()),
    "writes": _seq(_one("writes"), _one("require"), names.map(lambda n: [n])),
}))
endpoint_rule = _seq(pattern_lists(), options({
    "clearance": _seq(_one("clearance"), label_exprs()),
    "requires": _seq(_one("requires"), names.map(lambda n: [n])),
    "returns": _seq(_one("returns"), names.map(lambda n: [n])),
    "as": _seq(_one("as"), names_list),
    "except": _seq(_one("except"), pattern_lists()),
}))
ops = st.sampled_from(["read", "write", "create", "delete", "exec", "connect"])
agent_item = st.one_of(
    _seq(ops.map(lambda o: [o]), pattern_lists()),
    _seq(_one("delegate"), ops.map(lambda o: [o]), pattern_lists()),
    _seq(_one("holds"), names_list),
)
# A group named `file` cannot be a sink: `deny x -> file` reads `file` as the keyword of a file sink.
sinks = st.one_of(pattern_lists(), names.filter(lambda n: n != "file").map(lambda n: [n]),
                  _seq(_one("file"), pattern_lists()))
messages = st.one_of(st.just([]), literals().map(lambda s: [s]))


def block(head: list[str], body) -> st.SearchStrategy:
    return st.lists(body, max_size=4).map(lambda rules: [*head, "{", *(t for r in rules for t in r), "}"])


statements = st.one_of(
    _seq(_one("include"), literals().map(lambda s: [s])),
    block(["labels"], label_decl),
    block(["files"], file_rule),
    block(["endpoints"], endpoint_rule),
    _seq(_one("secret"), names.map(lambda n: [n]), _one("from"),
         st.sampled_from(["env", "file", "command"]).map(lambda k: [k]), literals().map(lambda s: [s]),
         st.one_of(st.just([]), _seq(_one("to"), pattern_lists()))),
    names.flatmap(lambda n: block(["agent", n], agent_item)),
    _seq(st.sampled_from(["deny", "allow"]).map(lambda e: [e]), label_exprs(), _one("->"), sinks, messages),
    _seq(st.sampled_from(["declassify", "endorse"]).map(lambda k: [k]), names.map(lambda n: [n]), _one(":"),
         label_exprs(), _one("->"), sinks, messages),
)
comment_texts_st = st.text(alphabet=st.characters(exclude_characters="\n", exclude_categories=("Cs",)),
                           max_size=10).map(lambda t: "#" + t)
separators = st.one_of(
    st.sampled_from([" ", " ", " ", " ", "  ", "\n", "\n  ", "\n\n", "\t"]),
    st.tuples(st.sampled_from(["", " ", "\n", "\n\n  "]), comment_texts_st,
              st.sampled_from(["\n", "\n  ", "\n\n"])).map("".join),
)


@st.composite
def policies(draw) -> str:
    tokens = [tok for stmt in draw(st.lists(statements, max_size=6)) for tok in stmt]
    out = [draw(st.one_of(st.just(""), separators))]
    for tok in tokens:
        out.append(tok)
        out.append(draw(separators))
    return "".join(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies())
def test_fmt_round_trips_and_is_idempotent(text: str):
    result = parse_text(text)
    assert result.ok, [d.message for d in result.diagnostics]  # the generator writes only valid policies
    out = format_policy(result.file)
    again = parse_text(out)
    assert again.ok, (out, [d.message for d in again.diagnostics])
    assert again.file.items == result.file.items
    assert comment_texts(again.file) == comment_texts(result.file)
    assert format_policy(again.file) == out
    assert_layout_invariants(out)


# ---------------------------------------------------------------------------------------- CLI
def run_cli(argv: list[str]) -> int:
    """Through `ifc.cli.main` once every subcommand module exists; until then through `fmt` alone."""
    if all(importlib.util.find_spec(f"ifc.cli.{m}") for m in ("caps", "check", "decide", "fmt")):
        from ifc.cli import main

        return main(argv)
    from ifc.cli import fmt as fmt_cli

    parser = argparse.ArgumentParser(prog="ifc")
    fmt_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


UGLY = 'files{"a" x  "bb" y}\ndeny x->external "no"\n'
PRETTY = fmt(UGLY)


def test_cli_check(tmp_path, capsys):
    ugly, pretty = tmp_path / "ugly.flow", tmp_path / "pretty.flow"
    ugly.write_text(UGLY)
    pretty.write_text(PRETTY)
    assert run_cli(["fmt", "--check", str(pretty)]) == ExitCode.OK
    assert capsys.readouterr().out == ""
    assert run_cli(["fmt", "--check", str(pretty), str(ugly)]) == ExitCode.FINDINGS
    assert capsys.readouterr().out == f"would reformat {ugly}\n"
    assert ugly.read_text() == UGLY  # --check writes nothing


def test_cli_rewrites_in_place_keeping_the_mode(tmp_path, capsys):
    path = tmp_path / "p.flow"
    path.write_text(UGLY)
    path.chmod(0o640)
    assert run_cli(["fmt", str(path)]) == ExitCode.OK
    assert path.read_text() == PRETTY
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["p.flow"]  # no temporary file left behind
    mtime = path.stat().st_mtime_ns
    assert run_cli(["fmt", str(path)]) == ExitCode.OK
    assert path.stat().st_mtime_ns == mtime  # an already canonical file is not rewritten
    assert run_cli(["fmt", "--check", str(path)]) == ExitCode.OK


def test_cli_diff(tmp_path, capsys):
    path = tmp_path / "p.flow"
    path.write_text(UGLY)
    assert run_cli(["fmt", "--diff", str(path)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert out.startswith(f"--- {path} (original)\n+++ {path} (formatted)\n")
    assert '+  "a"   x\n' in out and "-deny x->external \"no\"\n" in out
    assert path.read_text() == UGLY
    assert run_cli(["fmt", "--diff", "--check", str(path)]) == ExitCode.FINDINGS


def test_cli_stdin(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(UGLY))
    assert run_cli(["fmt", "-"]) == ExitCode.OK
    assert capsys.readouterr().out == PRETTY
    monkeypatch.setattr(sys, "stdin", io.StringIO(UGLY))
    assert run_cli(["fmt", "--check", "-"]) == ExitCode.FINDINGS
    assert capsys.readouterr().out == "would reformat <stdin>\n"


def test_cli_parse_error_leaves_file_untouched(tmp_path, capsys):
    bad, good = tmp_path / "bad.flow", tmp_path / "good.flow"
    source = 'files {\n  "a" x\n}\ndeny secret ->\n'
    bad.write_text(source)
    good.write_text(UGLY)
    before = bad.stat().st_mtime_ns
    assert run_cli(["fmt", str(bad), str(good)]) == ExitCode.USAGE
    assert bad.read_text() == source and bad.stat().st_mtime_ns == before
    assert good.read_text() == PRETTY  # the other files are still formatted
    err = capsys.readouterr().err
    assert f"{bad}:4:" in err and ": error: " in err
    assert " 4 | deny secret ->\n" in err and "^" in err


def test_cli_unreadable_file(tmp_path, capsys):
    assert run_cli(["fmt", str(tmp_path / "missing.flow")]) == ExitCode.USAGE
    assert "cannot read" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- render
def test_render_text_with_caret_help_and_notes():
    src = "labels {\n  secrecy public\n}\ndeny secert -> external\n"
    d = error("unknown-label", "unknown label `secert`", Span("a.flow", 4, 6, 4, 12),
              help="did you mean `secret`?",
              related=[Related(Span("a.flow", 2, 11, 2, 17), "labels are declared here")])
    assert render_text([d], {"a.flow": src}) == (
        "a.flow:4:6: error: unknown label `secert`\n"
        " 4 | deny secert -> external\n"
        "   |      ^^^^^^\n"
        "  help: did you mean `secret`?\n"
        "  note: a.flow:2:11: labels are declared here\n"
    )


def test_render_text_without_source_and_out_of_range():
    d = warning("w", "something", Span("other.flow", 3, 2))
    assert render_text([d], {}) == "other.flow:3:2: warning: something\n"
    e = error("e", "past the end", Span("a.flow", 9, 1))
    assert render_text([e], {"a.flow": "x\n"}) == "a.flow:9:1: error: past the end\n"
    assert render_text([], {}) == ""


def test_render_text_tabs_and_end_of_line():
    d = error("e", "bad", Span("t.flow", 1, 2, 1, 5))
    assert render_text([d], {"t.flow": "\tabc def"}).splitlines()[1:] == [" 1 |     abc def", "   |     ^^^"]
    eol = error("e", "expected more", Span("t.flow", 1, 4))
    assert render_text([eol], {"t.flow": "abc"}).splitlines()[1:] == [" 1 | abc", "   |    ^"]



def test_cli_refuses_to_write_output_that_loses_anything(tmp_path, monkeypatch, capsys):
    import ifc.cli.fmt as fmt_cli

    path = tmp_path / "p.flow"
    path.write_text("# keep me\n" + UGLY)
    monkeypatch.setattr(fmt_cli, "format_policy", lambda file: PRETTY)  # a formatter bug: drops the comment
    assert run_cli(["fmt", str(path)]) == ExitCode.USAGE
    assert path.read_text() == "# keep me\n" + UGLY
    assert "internal error" in capsys.readouterr().err
