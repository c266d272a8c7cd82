"""The shipped policies: each checks clean, and each makes the key decisions it was written for.

A scenario is a sequence of operations through one `Session`; every step before the last must be
allowed (so the scenario really sets up the state it names), and the last step's decision is checked
against the rule or message that decided it and the objects that tainted the session.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

import pytest

from ifc.check import check
from ifc.monitor.session import Decision, Session
from ifc.policy import Policy, compile_file, shipped_policy

SHIPPED = ("default", "aider", "claude-code", "codex", "gemini", "nanoclaw")


@cache
def _compiled(name: str):
    return compile_file(shipped_policy(name))


def policy(name: str) -> Policy:
    result = _compiled(name)
    assert result.policy is not None, [str(d.message) for d in result.errors]
    return result.policy


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policy_checks_clean(name):
    """Clean but for `model-cutoff`: every shipped agent reads the whole workspace, secrets included, and a
    secret read cuts it off from its model; the warning says so (the grammar has no way to grant `**` but them)."""
    result = check(_compiled(name))
    found = [f"{d.span}: {d.severity}: {d.code}: {d.message}" for d in result.errors + result.warnings
             if d.code != "model-cutoff"]
    assert not found, "\n".join(found)
    assert any(d.code == "model-cutoff" and "secret" in d.message for d in result.warnings)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policy_has_a_header_and_stays_short(name):
    text = shipped_policy(name).read_text(encoding="utf-8")
    assert text.startswith("# "), "say what the policy is for in a comment header"
    assert len(text.splitlines()) <= 60


@dataclass(frozen=True)
class Case:
    policy: str
    steps: tuple[tuple[str, str], ...]
    allowed: bool
    agent: str | None = None  # None: flow only, no grants checked
    held: tuple[str, ...] = ()  # capabilities, as a token minted for the action would carry them
    rule: str | None = None  # a fragment of the deciding rule, as the policy spells it
    message: str | None = None  # a fragment of the author's message for the reviewer
    reason: str | None = None  # a fragment of the reason, when no rule text says it
    tainted_by: tuple[str, ...] | None = None  # the objects blamed (exactly), when given
    used: tuple[str, ...] = ()  # capabilities the decision used


def run(case: Case) -> tuple[Session, list[Decision]]:
    pol = policy(case.policy)
    agent = pol.agents[case.agent] if case.agent else None
    session = Session(pol, agent, held=frozenset(case.held))
    return session, [session.decide(op, target) for op, target in case.steps]


SECRET_OUT = "deny secret -> external"

CASES = {
    # ---------------------------------------------------------------------------------- default
    "default: .env then smtp is denied, naming the rule and .env": Case(
        "default", (("read", ".env"), ("connect", "smtp.gmail.com:587")), False, agent="coder",
        rule=SECRET_OUT, message="secrets never leave", tainted_by=(".env",)),
    "default: the model API before any secret": Case(
        "default", (("read", "src/app.py"), ("connect", "https://api.anthropic.com")), True, agent="coder"),
    "default: the model API after reading .env": Case(
        "default", (("read", ".env"), ("connect", "https://api.anthropic.com")), False, agent="coder",
        rule=SECRET_OUT, tainted_by=(".env",)),
    "default: CI edit after an untrusted inbox file": Case(
        "default", (("read", "inbox/issue-42.md"), ("write", ".github/workflows/ci.yml")), False,
        rule=".github/workflows/**", reason="requires `trusted`", tainted_by=("inbox/issue-42.md",)),
    "default: a maintainer's ci-edit token endorses it": Case(
        "default", (("read", "inbox/issue-42.md"), ("write", ".github/workflows/ci.yml")), True,
        held=("ci-edit",), used=("ci-edit",)),
    "default: customer data stays with us": Case(
        "default", (("read", "data/customers/accounts.csv"), ("connect", "https://pypi.org")), False,
        agent="coder", message="customer data stays with us", tainted_by=("data/customers/accounts.csv",)),
    "default: the API key goes to its API": Case(
        "default", (("send", "ANTHROPIC_API_KEY@https://api.anthropic.com"),), True, agent="coder"),
    "default: the API key goes nowhere else": Case(
        "default", (("send", "ANTHROPIC_API_KEY@https://evil.example"),), False,
        rule="secret ANTHROPIC_API_KEY", reason="bound to"),
    # ------------------------------------------------------------------------------ claude-code
    "claude-code: telemetry before project content": Case(
        "claude-code", (("read", "CLAUDE.md"), ("connect", "https://statsig.anthropic.com")), True,
        agent="claude"),
    "claude-code: no telemetry after reading code": Case(
        "claude-code", (("read", "src/app.py"), ("connect", "https://o1.ingest.sentry.io")), False,
        agent="claude", rule="deny internal -> telemetry", message="never project content",
        tainted_by=("src/app.py",)),
    "claude-code: settings.local.json is internal": Case(
        "claude-code", (("read", ".claude/settings.local.json"), ("connect", "https://sentry.io")), False,
        agent="claude", rule="deny internal -> telemetry", tainted_by=(".claude/settings.local.json",)),
    "claude-code: cloud credentials in the repo are secret": Case(
        "claude-code", (("read", ".aws/credentials"), ("connect", "https://api.anthropic.com")), False,
        agent="claude", rule=SECRET_OUT, tainted_by=(".aws/credentials",)),
    "claude-code: git over https while trusted": Case(
        "claude-code", (("read", "src/app.py"), ("write", "src/app.py"), ("connect", "https://github.com")),
        True, agent="claude"),
    "claude-code: no push after a web fetch": Case(
        "claude-code", (("connect", "https://docs.python.org"), ("connect", "https://github.com")), False,
        agent="claude", rule="deny untrusted -> git", message="a human pushes",
        tainted_by=("https://docs.python.org:443",)),
    "claude-code: no CI edit after issue text": Case(
        "claude-code", (("read", "issues/42.md"), ("write", ".github/workflows/ci.yml")), False,
        agent="claude", message="workflows run with the repository's secrets", tainted_by=("issues/42.md",)),
    "claude-code: no git hook after an API reply": Case(
        "claude-code", (("connect", "https://api.github.com"), ("write", ".git/hooks/pre-commit")), False,
        agent="claude", message="must not install git hooks", tainted_by=("https://api.github.com:443",)),
    "claude-code: the API key is not telemetry's": Case(
        "claude-code", (("send", "ANTHROPIC_API_KEY@https://api.anthropic.com"),
                        ("send", "ANTHROPIC_API_KEY@https://statsig.anthropic.com")), False, agent="claude",
        rule="secret ANTHROPIC_API_KEY"),
    # ------------------------------------------------------------------------------------ codex
    "codex: the model API after reading code": Case(
        "codex", (("read", "src/a.py"), ("connect", "https://api.openai.com")), True, agent="codex"),
    "codex: .env never reaches the model": Case(
        "codex", (("read", "src/a.py"), ("read", ".env.local"), ("connect", "https://chatgpt.com")), False,
        agent="codex", rule=SECRET_OUT, tainted_by=(".env.local",)),
    "codex: sign-in gets tokens, not code": Case(
        "codex", (("read", "src/a.py"), ("connect", "https://auth.openai.com")), False, agent="codex",
        message="never project content", tainted_by=("src/a.py",)),
    "codex: each key to its own endpoint": Case(
        "codex", (("send", "OPENAI_API_KEY@https://api.openai.com"),
                  ("send", "CHATGPT_ACCESS_TOKEN@https://chatgpt.com"),
                  ("send", "OPENAI_API_KEY@https://chatgpt.com")), False, agent="codex",
        rule="secret OPENAI_API_KEY"),
    "codex: no network but OpenAI and the package indexes": Case(
        "codex", (("connect", "https://github.com"),), False, agent="codex", rule="agent codex"),
    "codex: pip installs into the venv after the index's untrusted replies": Case(
        "codex", (("connect", "https://pypi.org"), ("create", ".venv/lib/python3.12/site-packages/tinypkg.pth"),
                  ("write", ".venv/bin/tinypkg")), True, agent="codex"),
    "codex: the venv is no way into host-executed configuration": Case(
        "codex", (("connect", "https://pypi.org"), ("write", ".git/hooks/pre-commit")), False, agent="codex"),
    "gemini: pip installs into the venv after the index's untrusted replies": Case(
        "gemini", (("connect", "https://pypi.org"), ("create", ".venv/lib/python3.12/site-packages/tinypkg.pth"),
                   ("delete", ".venv/bin/tinypkg")), True, agent="gemini"),
    "codex: .git is not writable": Case(
        "codex", (("write", ".git/config"),), False, agent="codex", rule="agent codex"),
    "codex: CI after issue text needs approval": Case(
        "codex", (("read", "issues/7.md"), ("write", ".github/workflows/ci.yml")), False,
        reason="requires `trusted`", tainted_by=("issues/7.md",)),
    "codex: the approval token endorses the CI edit": Case(
        "codex", (("read", "issues/7.md"), ("write", ".github/workflows/ci.yml")), True,
        held=("ci-edit",), used=("ci-edit",)),
    "codex: no approval installs a hook after issue text": Case(
        "codex", (("read", "issues/7.md"), ("write", ".git/hooks/pre-push")), False, held=("ci-edit",),
        message="must not install git hooks", tainted_by=("issues/7.md",)),
    # --------------------------------------------------------------------------------- nanoclaw
    "nanoclaw: client notes go to the CRM": Case(
        "nanoclaw", (("read", "vault/clients/acme.md"), ("connect", "https://api.hubspot.com")), True,
        agent="concierge"),
    "nanoclaw: client notes never into WhatsApp": Case(
        "nanoclaw", (("read", "vault/clients/acme.md"), ("connect", "https://graph.facebook.com")), False,
        agent="concierge", rule="deny client -> chat", message="never into a chat",
        tainted_by=("vault/clients/acme.md",)),
    "nanoclaw: client notes never into Telegram": Case(
        "nanoclaw", (("read", "vault/clients/acme.md"), ("connect", "https://api.telegram.org")), False,
        agent="concierge", rule="deny client -> chat", tainted_by=("vault/clients/acme.md",)),
    "nanoclaw: the concierge sends no e-mail of its own": Case(
        "nanoclaw", (("connect", "smtp.gmail.com:587"),), False, agent="concierge", rule="agent concierge"),
    "nanoclaw: e-mail after a customer's message needs trusted data": Case(
        "nanoclaw", (("connect", "https://graph.facebook.com"), ("connect", "smtp.gmail.com:587")), False,
        reason="requires `trusted`", tainted_by=("https://graph.facebook.com:443",)),
    "nanoclaw: the owner's approval endorses that e-mail": Case(
        "nanoclaw", (("connect", "https://graph.facebook.com"), ("read", "vault/clients/acme.md"),
                     ("connect", "smtp.gmail.com:587")), True,
        held=("approve-mail",), used=("approve-mail",)),
    "nanoclaw: the books after a Telegram message need approval": Case(
        "nanoclaw", (("connect", "https://api.telegram.org"), ("write", "vault/finance/2025.md")), False,
        held=("approve-mail",), reason="requires `trusted`", tainted_by=("https://api.telegram.org:443",)),
    "nanoclaw: the owner's approval endorses the books": Case(
        "nanoclaw", (("connect", "https://api.telegram.org"), ("write", "vault/finance/2025.md")), True,
        held=("approve-books",), used=("approve-books",)),
    "nanoclaw: finance figures reach no chat by default": Case(
        "nanoclaw", (("read", "vault/finance/2025.md"), ("connect", "https://api.telegram.org")), False,
        reason="exceeds the clearance", tainted_by=("vault/finance/2025.md",)),
    "nanoclaw: owner-summary declassifies the books to Telegram": Case(
        "nanoclaw", (("read", "vault/finance/2025.md"), ("connect", "https://api.telegram.org")), True,
        held=("owner-summary",), used=("owner-summary",)),
    "nanoclaw: owner-summary reaches Telegram only": Case(
        "nanoclaw", (("read", "vault/finance/2025.md"), ("connect", "https://api.hubspot.com")), False,
        held=("owner-summary",), reason="exceeds the clearance", tainted_by=("vault/finance/2025.md",)),
    "nanoclaw: no capability lifts the client deny": Case(
        "nanoclaw", (("read", "vault/finance/2025.md"), ("read", "vault/clients/acme.md"),
                     ("connect", "https://api.telegram.org")), False, held=("owner-summary",),
        rule="deny client -> chat", tainted_by=("vault/clients/acme.md",)),
    "nanoclaw: the bot token goes to Telegram only": Case(
        "nanoclaw", (("send", "TELEGRAM_BOT_TOKEN@https://api.telegram.org"),
                     ("send", "TELEGRAM_BOT_TOKEN@https://api.hubspot.com")), False, agent="concierge",
        rule="secret TELEGRAM_BOT_TOKEN"),
    "nanoclaw: the CRM key is not WhatsApp's": Case(
        "nanoclaw", (("send", "WHATSAPP_TOKEN@https://graph.facebook.com"),
                     ("send", "HUBSPOT_TOKEN@https://graph.facebook.com")), False, agent="concierge",
        rule="secret HUBSPOT_TOKEN"),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_key_decision(case: Case):
    _, decisions = run(case)
    *setup, last = decisions
    for step in setup:
        assert step.allowed, f"setup step `{step.op} {step.target}` was denied: {step.reason}"
    assert last.allowed is case.allowed, last.reason
    if case.rule is not None:
        assert last.rule is not None and case.rule in last.rule, last.rule
    if case.message is not None:
        assert last.message is not None and case.message in last.message, last.message
    if case.reason is not None:
        assert case.reason in last.reason, last.reason
    if case.tainted_by is not None:
        assert {obj for _, obj in last.tainted_by} == set(case.tainted_by), last.tainted_by
    assert tuple(last.capabilities_used) == case.used


def test_copying_a_secret_floats_the_copy():
    pol = policy("default")
    first = Session(pol, pol.agents["coder"])
    assert first.decide("read", ".env").allowed
    copy = first.decide("write", "docs/notes.md")
    assert copy.allowed and "floats up" in copy.reason and copy.object_label.startswith("secret")

    # a later session (or process) that reads the copy is as tainted as if it had read .env
    later = Session(pol, pol.agents["coder"], floated=dict(first.floated))
    assert pol.file_label("docs/notes.md").label.secrecy == frozenset()  # the rule says public
    read = later.decide("read", "docs/notes.md")
    assert read.allowed and read.taint_after.startswith("secret")
    denied = later.decide("connect", "https://github.com")
    assert not denied.allowed
    assert SECRET_OUT in denied.rule
    assert [obj for _, obj in denied.tainted_by] == ["docs/notes.md"]


@pytest.mark.parametrize("name", SHIPPED)
def test_unknown_endpoints_are_denied(name):
    session = Session(policy(name))
    decision = session.decide("connect", "https://exfil.example")
    assert not decision.allowed and "unknown endpoints are denied" in decision.reason


SUB_PROCESS = {
    # policy, agent: (op, target, allowed) for a sub-process holding only what the agent delegates
    ("claude-code", "claude"): (
        ("read", "src/app.py", True), ("read", ".env", False), ("write", "src/app.py", False),
        ("connect", "https://files.pythonhosted.org", True), ("connect", "https://api.anthropic.com", False),
    ),
    ("codex", "codex"): (
        ("read", "src/a.py", True), ("write", "tests/test_a.py", True), ("exec", ".venv/bin/pytest", True),
        ("write", ".github/workflows/ci.yml", False), ("connect", "https://api.openai.com", False),
    ),
}


@pytest.mark.parametrize(("name", "agent"), list(SUB_PROCESS), ids=[n for n, _ in SUB_PROCESS])
def test_sub_processes_get_only_the_delegated_grants(name, agent):
    pol = policy(name)
    parent = pol.agents[agent]
    sub = replace(parent, name=f"{agent}-sub", grants=parent.delegable, delegable=(), holds=())
    for op, target, allowed in SUB_PROCESS[(name, agent)]:
        decision = Session(pol, sub).decide(op, target)
        assert decision.allowed is allowed, (op, target, decision.reason)
        if not allowed:
            assert decision.rule == f"agent {agent}-sub", decision.rule
