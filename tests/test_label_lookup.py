"""The memoised label lookup (one combined regex finds the last rule whose globs match, `except` globs are
checked after it) answers exactly as the plain last-match-wins scan over the file rules (hypothesis)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ifc.policy import Policy, compile_text, load_policy

POLICIES = sorted(Path(__file__).resolve().parent.parent.joinpath("policies").glob("*.flow"))

# paths built from the pieces the shipped rules talk about, so rules, their excepts and the fall-through meet
_part = st.sampled_from(["src", "docs", ".env", ".env.example", "id_rsa", "id_rsa.pub", "secrets", "inbox",
                         ".git", "hooks", ".github", "workflows", "data", "customers", "README.md", "LICENSE",
                         "key.pem", "a.key", "credentials.json", ".netrc", "x", "cache0", "a.b"])
_path = st.lists(_part, min_size=1, max_size=5).map("/".join)

OVERLAPPING = """
labels { secrecy public < internal < secret  integrity untrusted < trusted }
files {
  "**" internal
  "src/**", "docs/**" public
  "src/**" secret except "src/*.py", "src/x/**"
  "**/x" internal + untrusted except "docs/**"
  "*.key" secret
}
"""


@cache
def policies() -> tuple[Policy, ...]:
    loaded = [load_policy(p) for p in POLICIES]
    compiled = compile_text(OVERLAPPING, "overlapping.flow")
    return (*loaded, compiled.policy)


def scan(policy: Policy, path: str):
    for rule in reversed(policy.file_rules):
        if rule.matches(path):
            return rule.label, rule
    return policy.lattice.bottom, None


@settings(max_examples=400, deadline=None)
@given(path=_path)
def test_the_label_lookup_is_the_last_matching_rule(path):
    for policy in policies():
        match = policy.file_label(path)
        assert (match.label, match.rule) == scan(policy, path), (policy.sources, path)
