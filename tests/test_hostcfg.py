"""Host-executed configuration (`ifc.policy.hostcfg`): the one list, every shipped policy guarding it, the monitor
logging every change to it, the report and `ifc check` showing it; and the default policy's coder free to do
normal work. End to end through `ifc run`: tests/test_hostcfg_sandbox.py."""

from __future__ import annotations

import json
import sqlite3

import pytest

from ifc.check import check
from ifc.monitor import EventLog, Monitor, Request
from ifc.policy import compile_file, compile_text, load_policy, shipped_policy
from ifc.policy.flows import check_write
from ifc.policy.hostcfg import HOST_CONFIG, kind_of, touched
from ifc.policy.labels import Label
from ifc.report.html import render_html
from ifc.report.jsonout import report_dict
from ifc.report.load import load_run
from ifc.report.markdown import render_markdown

SHIPPED = ("default", "claude-code", "codex", "gemini", "aider", "nanoclaw")
HOST_PATHS = (".git", "sub/.git", ".git/config", "sub/.git/config", ".git/hooks", ".git/hooks/pre-commit",
              ".git/info/attributes", ".git/modules/lib/config", ".git/worktrees/w/config.worktree",
              ".git/commondir", ".gitattributes", "src/.gitattributes", ".gitmodules", ".husky/pre-commit",
              ".pre-commit-config.yaml", "lefthook.yml", ".envrc", "src/.envrc", ".vscode", ".vscode/tasks.json",
              "proj.code-workspace", ".idea/workspace.xml", ".devcontainer/devcontainer.json", ".devcontainer.json",
              ".claude/settings.json", ".mcp.json", ".env", ".env.local", "web/.env.production", ".npmrc",
              "sub/.pypirc", ".netrc", ".lfsconfig", ".gemini/settings.json", ".cursor/mcp.json", ".aider.conf.yml")
# what a coding agent writes while it works: none of it is host-executed configuration
WORK_PATHS = ("pyproject.toml", "setup.py", "Makefile", "package.json", "src/app.py", "build/lib/a.py",
              "dist/pkg-1.0.tar.gz", ".pytest_cache/v/cache/lastfailed", "node_modules/x/index.js",
              ".git/index.lock", ".git/index", ".git/objects/ab/cdef", ".git/refs/heads/main", ".git/HEAD",
              ".git/COMMIT_EDITMSG", ".git/logs/HEAD", ".git/config.lock", ".mypy_cache/3.11/x.json",
              ".ruff_cache/a", "src/__pycache__/app.cpython-311.pyc", ".venv/bin/python", ".gitignore",
              "pytest-cache-files-a1b2/v/cache/nodeids", ".env.example")


@pytest.mark.parametrize("path", HOST_PATHS)
def test_host_executed_configuration_is_in_the_list(path):
    assert kind_of(path) is not None


@pytest.mark.parametrize("path", WORK_PATHS)
def test_normal_project_files_are_not(path):
    assert kind_of(path) is None


def test_a_rename_changes_both_names_and_a_link_its_new_one():
    assert [t.path for t in touched("rename", ".git/config", ".git/config.bak")] == [".git/config"]
    assert [t.path for t in touched("rename", "x", ".git")] == [".git"]
    assert [t.path for t in touched("link", "x", ".git/hooks/pre-push")] == [".git/hooks/pre-push"]
    assert touched("read", ".git/config") == [] and touched("write", "../x") == []


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("path", HOST_PATHS)
def test_every_shipped_policy_refuses_untrusted_writes_with_a_message(name, path):
    policy = load_policy(shipped_policy(name))
    lattice = policy.lattice
    untrusted = Label(frozenset(), 0)
    trusted = Label(frozenset(), lattice.top_integrity)
    refused = check_write(policy, untrusted, path)
    assert not refused.allowed and refused.integrity_short
    assert refused.message == kind_of(path).message
    assert check_write(policy, trusted, path).allowed


@pytest.mark.parametrize("name", SHIPPED)
def test_every_glob_in_the_list_is_guarded_by_every_shipped_policy(name):
    """The list and the policies cannot drift: each glob of the list is a `writes require` glob of the policy."""
    policy = load_policy(shipped_policy(name))
    guarded = {(g.text, tuple(e.text for e in r.excepts))
               for r in policy.file_rules if r.writes_require for g in r.globs}
    for kind in HOST_CONFIG:
        for glob in kind.globs:
            assert (glob, kind.excepts) in guarded, (name, glob)


@pytest.mark.parametrize("path", WORK_PATHS)
def test_the_default_coder_may_do_normal_work_after_reading_untrusted_input(path):
    policy = load_policy(shipped_policy("default"))
    m = Monitor(policy, agent=policy.agents["coder"])
    assert m.decide(Request("read", "inbox/issue-7.md")).allowed  # internal + untrusted
    for op in ("create", "write", "delete"):
        d = m.decide(Request(op, path))
        assert d.allowed, (op, d.reason)


def test_the_default_coder_may_change_host_config_only_while_trusted():
    policy = load_policy(shipped_policy("default"))
    m = Monitor(policy, agent=policy.agents["coder"])
    assert m.decide(Request("write", ".git/config")).allowed
    m.decide(Request("read", "inbox/issue-7.md"))
    d = m.decide(Request("write", ".git/config"))
    assert not d.allowed and "core.fsmonitor" in d.message and [o for _, o in d.tainted_by] == ["inbox/issue-7.md"]


# ------------------------------------------------------------------------------------------- the event log
def _events(path, kind="hostcfg"):
    db = sqlite3.connect(path)
    return db.execute("SELECT op, target, allowed, reason, message FROM events WHERE kind = ? ORDER BY id",
                      (kind,)).fetchall()


def test_every_change_is_an_event_allowed_or_not_repeats_and_renames_too(tmp_path):
    policy = load_policy(shipped_policy("default"))
    log = EventLog(tmp_path / "events.db")
    m = Monitor(policy, agent=policy.agents["coder"], log=log)
    for _ in range(2):  # the repeat is answered by the fast path: still an event
        assert m.decide(Request("write", ".vscode/tasks.json")).allowed
    assert m.decide(Request("create", ".git/config.lock")).allowed  # not host config: only counted
    assert m.decide(Request("rename", ".git/config.lock", dest=".git/config")).allowed
    m.decide(Request("read", "inbox/issue-7.md"))
    assert not m.decide(Request("create", ".envrc")).allowed
    assert not m.decide(Request("rename", "build/repo", dest=".git")).allowed
    assert not m.decide(Request("write", "LICENSE")).allowed  # authority: not host config, no hostcfg event
    log.close()
    rows = _events(tmp_path / "events.db")
    assert [(op, target, allowed) for op, target, allowed, _, _ in rows] == [
        ("write", ".vscode/tasks.json", 1), ("write", ".vscode/tasks.json", 1), ("rename", ".git/config", 1),
        ("create", ".envrc", 0), ("rename", ".git", 0)]
    assert rows[0][3].startswith("editor and IDE settings: ")
    assert "direnv" in rows[3][4] and "brings its own config" in rows[4][4]
    assert len(_events(tmp_path / "events.db", "deny")) == 3


def test_a_hard_link_changes_host_executed_configuration_only_as_its_own_name_may(tmp_path):
    """`.git/config` linked into `src/` (a link changes no content: allowed) is one content under two names: a
    write or chmod through `src/cfg` is judged, and logged, as a change of `.git/config` too — refused after
    untrusted input, where `src/cfg` alone would have let the host's git run `core.fsmonitor`."""
    policy = load_policy(shipped_policy("default"))
    log = EventLog(tmp_path / "events.db")
    m = Monitor(policy, agent=policy.agents["coder"], log=log)
    assert m.decide(Request("link", ".git/config", dest="src/cfg")).allowed
    assert m.decide(Request("write", "src/cfg")).allowed  # clean: an event, as a write to .git/config is
    assert m.decide(Request("write", "src/app.py")).allowed
    m.decide(Request("read", "inbox/issue-7.md"))
    for op in ("write", "chmod"):
        d = m.decide(Request(op, "src/cfg"))
        assert not d.allowed and ".git/config requires `trusted`" in d.reason and "core.fsmonitor" in d.message
        assert [o for _, o in d.tainted_by] == ["inbox/issue-7.md"]
    assert m.decide(Request("write", "src/app.py")).allowed and m.decide(Request("write", "src/cfg2")).allowed
    log.close()
    assert [(op, target, allowed) for op, target, allowed, _, _ in _events(tmp_path / "events.db")] == [
        ("write", ".git/config", 1), ("write", ".git/config", 0), ("chmod", ".git/config", 0)]


def test_the_report_lists_every_change_in_every_format(tmp_path):
    policy = load_policy(shipped_policy("default"))
    log = EventLog(tmp_path / "events.db")
    m = Monitor(policy, agent=policy.agents["coder"], log=log)
    m.decide(Request("write", ".git/hooks/pre-commit"))
    m.decide(Request("read", "inbox/issue-7.md"))
    m.decide(Request("write", ".git/config"))
    log.close()
    run = load_run(tmp_path)
    assert [(c.target, c.allowed) for c in run.hostcfg] == [(".git/hooks/pre-commit", True), (".git/config", False)]
    md = render_markdown(run)
    assert "## Changes to host-executed configuration (2)" in md
    assert "`.git/hooks/pre-commit`" in md and "**denied**" in md and "core.fsmonitor" in md
    html = render_html(run)
    assert "Changes to host-executed configuration (2)" in html and "<code>.git/config</code>" in html
    doc = json.loads(json.dumps(report_dict(run)))
    assert [c["target"] for c in doc["host_config_changes"]] == [".git/hooks/pre-commit", ".git/config"]
    assert doc["summary"]["counts"]["hostcfg"] == 2


# ------------------------------------------------------------------------------------------- ifc check
LINT = """
labels {{ secrecy public < internal
  integrity untrusted < trusted }}
files {{
  "**" internal
{guards}}}
endpoints {{ "https://docs.example" clearance internal returns untrusted }}
agent helper {{
  read "**"
  write "/src/", "/.git/"
  connect "https://docs.example"
}}
"""


def _codes(text: str) -> list[str]:
    return [d.message for d in check(compile_text(text)).warnings if d.code == "host-config-write"]


def test_the_lint_warns_when_untrusted_data_may_reach_host_config():
    found = _codes(LINT.format(guards=""))
    assert len(found) == 2  # one per grant: /src/ (a nested repository, .envrc...) and /.git/
    assert "`.git` (git repository)" in found[1] and "replies from `https://docs.example:443`" in found[1]


def test_the_lint_is_silent_when_the_policy_guards_the_list():
    text = shipped_policy("default").read_text()
    guards = "".join(line + "\n" for line in text.splitlines()
                     if "writes require trusted" in line and ".github" not in line)
    assert _codes(LINT.format(guards=guards)) == []


def test_the_lint_names_what_a_partial_guard_leaves():
    found = _codes(LINT.format(guards='  "/.git/config" internal writes require trusted\n'))
    assert found and "`.git/config`" not in found[-1] and "(git hooks)" in found[-1]


def test_an_agent_that_reads_nothing_untrusted_gets_no_warning():
    assert _codes(LINT.format(guards="").replace('  connect "https://docs.example"\n', "")) == []


def test_shipped_policies_have_no_host_config_findings():
    for name in SHIPPED:
        assert not [d for d in check(compile_file(shipped_policy(name))).diagnostics if d.code == "host-config-write"]


def test_a_question_too_large_to_search_is_a_finding_not_a_hang():
    """A mutant of the codex policy (from the property test that found it: its guards no longer spelled as the
    list spells them) made the exact search explore hundreds of thousands of product states, `ifc check` ran for
    minutes. The search has a budget; past it the grant is reported as not proven guarded."""
    from pathlib import Path

    from ifc.glob_sets import SearchTooLarge, witness_avoiding
    from ifc.match import Glob

    text = (Path(__file__).parent / "data" / "host-config-many-guards.flow").read_text()
    found = check(compile_text(text, "mutant.flow")).diagnostics
    assert [d for d in found if d.code == "host-config-write" and "not proven guarded" in d.message]
    many = tuple((Glob.compile(f"**/{a}*{b}*/**").tokens, ()) for a in "abcdefgh" for b in "xyz")
    with pytest.raises(SearchTooLarge):
        witness_avoiding(Glob.compile("**/.git/config").tokens, (Glob.compile("**").tokens,), many, budget=50)
