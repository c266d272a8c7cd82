"""Checker stages: each lint fires on the mistake it names and stays quiet on the shipped default."""

from __future__ import annotations

from ifc.check import check
from ifc.diagnostics import Severity
from ifc.policy import compile_file, compile_text

BASE = """labels { secrecy public < internal < secret  integrity untrusted < trusted }
files { "**" internal  ".env*" secret }
"""


def codes(text: str) -> list[str]:
    return [d.code for d in check(compile_text(BASE + text, "p.flow")).diagnostics]


def findings(text: str, code: str):
    return [d for d in check(compile_text(BASE + text, "p.flow")).diagnostics if d.code == code]


def test_default_policy_is_clean_but_for_the_reads_that_cut_the_coder_off_from_its_model():
    result = check(compile_file("policies/default.flow"))
    assert not result.errors, [(d.span.line, d.message) for d in result.diagnostics]
    cutoffs = [d for d in result.warnings if d.code == "model-cutoff"]
    assert cutoffs == result.warnings, [(d.span.line, d.message) for d in result.diagnostics]
    assert [(d.span.line, d.message.split(";")[0]) for d in cutoffs] == [
        (19, 'agent `coder` can read "data/customers/d" (`pii`)'), (23, 'agent `coder` can read ".envx" (`secret`)'),
        (24, 'agent `coder` can read ".pem" (`secret`)')]


MODEL = """endpoints { "https://api.model.test" clearance internal returns trusted as model, external
            "https://pypi.org" clearance internal as packages, external }
deny secret -> external "secrets never leave"
"""


def cutoffs(text: str, secret_files: str = '".env*", "*.pem"'):
    source = BASE.replace('".env*" secret', f"{secret_files} secret") + text
    return [d for d in check(compile_text(source, "p.flow")).diagnostics if d.code == "model-cutoff"]


def test_model_cutoff_names_the_file_rule_the_model_and_the_rule_that_refuses():
    [d] = cutoffs(MODEL + 'agent a { read "**" connect "https://api.model.test" }')
    assert d.span.line == 2 and d.severity is Severity.WARNING  # the `".env*", "*.pem" secret` files rule
    assert d.message == ('agent `a` can read ".pem" (`secret`); after that read every call to its model '
                         '"https://api.model.test:443" is refused for the rest of the run: `secret` data may not go '
                         'to https://api.model.test:443 [external, model]')
    assert [(r.span.line, r.message) for r in d.related] == [(3, "the agent's model endpoint"),
                                                              (5, "this rule refuses that data there")]


def test_model_cutoff_stays_quiet_when_the_agent_cannot_read_it_or_has_no_model_or_the_model_may_see_it():
    assert not cutoffs(MODEL + 'agent a { write "src/**" connect "https://api.model.test" }')
    assert not cutoffs(MODEL + 'agent a { read "**" connect "https://pypi.org" }')
    # files served with sentinels (`.env`: its read carries `internal`) cut nobody off
    assert not cutoffs(MODEL + 'agent a { read "**" connect "https://api.model.test" }', secret_files='".env"')
    cleared = MODEL.replace("clearance internal returns trusted as model, external",
                            "clearance secret returns trusted as model").replace("deny secret -> external", "deny "
                                                                                 "secret -> packages")
    assert not cutoffs(cleared + 'agent a { read "**" connect "https://api.model.test" }')
    # clearance alone (no deny rule) cuts it off too, and says so
    [d] = cutoffs(MODEL.replace('deny secret -> external "secrets never leave"\n', "")
                  + 'agent a { read "**" connect "https://api.model.test" }')
    assert "`secret` exceeds the clearance of https://api.model.test:443" in d.message


def test_unused_tag_and_label():
    got = findings("labels { secrecy spare  label combo = internal + spare }", "unused-label")
    assert [d.message for d in got] == ["label `combo` is never used"]
    assert findings("labels { secrecy lonely }", "unused-label")[0].message == "secrecy `lonely` is never used"


def test_shadowed_rule_names_the_winner():
    got = findings('files { "**" public }', "shadowed-rule")
    assert len(got) == 2  # both `"**" internal` and `".env*" secret` on line 2 are dead now
    assert all(d.span.line == 2 and d.related[0].span.line == 3 for d in got)


def test_later_rule_lowering_an_earlier_label_is_flagged_with_an_example():
    [d] = findings('files { "*.txt" public }', "overlapping-globs")
    assert "relabels some `secret` files as `public`" in d.message and ".env" in d.message
    assert d.help.startswith("add `except")


def test_write_requirements_add_up_so_a_later_rule_cannot_drop_one():
    from ifc.policy.flows import check_write
    from ifc.policy.labels import Label

    policy = compile_text(BASE + 'files { ".github/**" internal writes require trusted  "**/*.yml" internal }',
                          "p.flow").policy
    verdict = check_write(policy, Label(frozenset({"internal"}), 0), ".github/ci.yml")
    assert not verdict.allowed and "writes require trusted" in verdict.rule


def test_endpoint_matching_everything():
    assert findings('endpoints { "*" clearance public }', "broad-endpoint")
    assert findings('endpoints { "https://*.com" clearance public }', "broad-endpoint")
    assert not findings('endpoints { "https://*.github.com" clearance public }', "broad-endpoint")


def test_grants_broad_and_unusable():
    got = findings('agent a { write "**" connect "https://nowhere.example" }', "broad-grant")
    assert got and "may write every file" in got[0].message
    [u] = findings('agent a { connect "https://nowhere.example" }', "unusable-grant")
    assert u.span.column == 19


def test_secret_problems():
    assert findings('secret K from env "K"', "secret-no-endpoint")
    assert "no endpoint rule" in findings('secret K from env "K" to "https://x.com"', "secret-no-endpoint")[0].message
    text = ('endpoints { "https://x.com" clearance public } secret K from env "K" to "https://x.com"'
            ' agent a { read "a" }')
    assert "no agent may connect" in findings(text, "secret-no-endpoint")[0].message


def test_allow_that_a_deny_kills_is_an_error_pointing_at_both():
    text = 'endpoints { "https://x.com" clearance public as ext } allow secret -> ext "a" deny secret -> ext "b"'
    [d] = findings(text, "allow-denied")
    assert d.severity.name == "ERROR" and d.related[0].message == "denied here"


def test_clearance_contradicting_a_deny_is_an_error():
    text = 'endpoints { "https://x.com" clearance secret as ext } deny secret -> ext "no"'
    assert findings(text, "allow-denied")


def test_capability_that_a_deny_kills_is_an_error():
    text = ('endpoints { "https://x.com" clearance public as ext } deny secret -> ext "no" '
            'declassify leak: secret -> ext')
    assert findings(text, "allow-denied")


def test_deny_without_message():
    assert findings('endpoints { "https://x.com" as ext } deny secret -> ext', "missing-message")


def test_static_flow_path_blocked_only_by_clearance_is_reported_with_the_path():
    text = ('endpoints { "https://web.example" clearance public returns untrusted }'
            ' agent a { read "**" connect "https://web.example" }')
    got = findings(text, "unexplained-flow")
    messages = " | ".join(d.message for d in got)
    assert '".env*" (secret) --read--> agent a --connect--> "https://web.example"' in messages
    assert all(d.help.startswith("say why with `deny") for d in got)


def test_explicit_deny_silences_the_flow_finding():
    text = ('endpoints { "https://web.example" clearance public returns untrusted as ext }'
            ' agent a { read "**" connect "https://web.example" } deny internal -> ext "code stays"')
    assert not findings(text, "unexplained-flow")


def test_multi_hop_flow_through_a_shared_file_to_another_agent():
    text = ('labels { secrecy low < high } files { "**" low  "vault/**" high }'
            ' endpoints { "https://web.example" clearance low }'
            ' agent writer { read "**" write "shared/**" }'
            ' agent sender { read "shared/**" connect "https://web.example" }')
    result = check(compile_text(text, "p.flow"))
    paths = [d.message for d in result.diagnostics if d.code == "unexplained-flow"]
    assert paths == ['`high` data can reach "https://web.example"; only the monitor\'s clearance check stops it, '
                     'with no message for the reviewer: "vault/**" (high) --read--> agent writer --write--> '
                     'files writer writes --read--> agent sender --connect--> "https://web.example"']


def test_untrusted_reply_to_protected_file():
    text = ('files { ".github/workflows/**" internal writes require trusted }'
            ' endpoints { "https://web.example" clearance internal returns untrusted }'
            ' agent a { read "src/**" write ".github/**" connect "https://web.example" }')
    [d] = [d for d in findings(text, "unexplained-flow") if "--reply-->" in d.message]
    assert "--reply--> agent a --write--> \".github/workflows/**\"" in d.message


def test_a_declared_capability_explains_a_flow_it_would_permit():
    text = ('files { "ci/**" internal writes require trusted  "inbox/**" internal + untrusted }'
            ' endpoints { "https://chat.example" clearance internal returns trusted }'
            ' agent a { read "inbox/**" write "ci/**" connect "https://chat.example" }'
            ' endorse ci-edit: untrusted -> file "ci/**" "a maintainer approved this CI change"')
    assert not [d for d in findings(text, "unexplained-flow") if "ci/**" in d.message]


def test_every_code_the_engine_emits_is_documented():
    import re
    from pathlib import Path

    from ifc.check import CODES

    source = "\n".join(p.read_text() for p in Path("ifc").rglob("*.py") if "cli" not in p.parts)
    emitted = set(re.findall(r'(?:error|warning|_err)\(\s*"([a-z-]+)"', source))
    emitted |= set(re.findall(r'Diagnostic\(\s*"([a-z-]+)"', source))
    assert emitted and emitted <= set(CODES), emitted - set(CODES)
