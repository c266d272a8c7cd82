"""An agent's settings (`AgentKind.settings`) set in its kept home on the host before a run
(`ifc.agents.preset.merge_settings`). The home was the sandbox's, so what it left there is hostile input: the
merge keeps the agent's own keys, and never writes through, or parses, anything but a regular JSON file. Settings
made from the run's key (`AgentKind.key_settings`: Claude Code's approval of the key it is given) name only the
run's sentinel, never a value that is not one."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ifc.agents.catalog import AGENTS
from ifc.agents.preset import Preset, merge_settings
from ifc.enforce.secrets import SENTINEL_PREFIX

ONBOARDED = {".claude.json": {"hasCompletedOnboarding": True}}
UID, GID = 1000, 1000


def test_a_new_home_gets_the_settings_as_the_agents_own(tmp_path):
    merge_settings(tmp_path, ONBOARDED, UID, GID)
    made = tmp_path / ".claude.json"
    assert json.loads(made.read_text()) == {"hasCompletedOnboarding": True}
    info = made.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (UID, GID, 0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".claude.json"]  # no temporary file left


def test_the_agents_keys_stay_and_its_own_value_is_overridden(tmp_path):
    (tmp_path / ".claude.json").write_text(json.dumps({"userID": "abc", "hasCompletedOnboarding": False,
                                                       "projects": {"/workspace": {"x": 1}}}))
    merge_settings(tmp_path, ONBOARDED, UID, GID)
    assert json.loads((tmp_path / ".claude.json").read_text()) == {
        "userID": "abc", "hasCompletedOnboarding": True, "projects": {"/workspace": {"x": 1}}}


def test_a_symlink_left_in_the_home_redirects_nothing(tmp_path):
    victim = tmp_path / "outside.json"
    victim.write_text('{"host": "file"}')
    home = tmp_path / "home"
    home.mkdir()
    (home / ".claude.json").symlink_to(victim)
    (home / ".dangling.json").symlink_to(tmp_path / "created-through-it.json")
    merge_settings(home, {**ONBOARDED, ".dangling.json": {"a": 1}}, UID, GID)
    assert victim.read_text() == '{"host": "file"}'
    assert (home / ".claude.json").is_symlink()
    assert not (tmp_path / "created-through-it.json").exists()
    assert (home / ".dangling.json").is_symlink()


def test_what_is_not_a_json_object_is_left_as_it_is(tmp_path):
    for name, content in ((".a.json", "not json"), (".b.json", "[1, 2]")):
        (tmp_path / name).write_text(content)
    os.mkfifo(tmp_path / ".c.json")  # opened without blocking, and not read: not a regular file
    merge_settings(tmp_path, {".a.json": {"k": 1}, ".b.json": {"k": 1}, ".c.json": {"k": 1}}, UID, GID)
    assert (tmp_path / ".a.json").read_text() == "not json"
    assert (tmp_path / ".b.json").read_text() == "[1, 2]"
    assert Path(tmp_path / ".c.json").is_fifo()


def test_a_planted_temporary_name_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "outside.json"
    victim.write_text("{}")
    home = tmp_path / "home"
    home.mkdir()
    (home / "..claude.json.ifc-tmp").symlink_to(victim)
    merge_settings(home, ONBOARDED, UID, GID)
    assert victim.read_text() == "{}"
    assert json.loads((home / ".claude.json").read_text()) == {"hasCompletedOnboarding": True}



SENTINEL = SENTINEL_PREFIX + "0123456789abcdef0123456789abcdef"


def claude_code(home: Path | None) -> Preset:
    kind = AGENTS["claude-code"]
    return Preset(argv=kind.argv(), policy=Path("policies/claude-code.flow"), layers=(), env={}, aliases={},
                  home=home, kind=kind)


def test_claude_code_approves_the_runs_sentinel_in_a_fresh_home():
    files = claude_code(None).home_files({"ANTHROPIC_API_KEY": SENTINEL}, UID, GID)
    assert json.loads(files[".claude.json"]) == {
        "hasCompletedOnboarding": True,
        "customApiKeyResponses": {"approved": ["cdef0123456789abcdef"], "rejected": []}}  # its last 20 characters


def test_a_value_that_is_not_a_sentinel_is_never_written():
    real = "sk-ant-api03-real-key-only-the-host-holds-0123456789"
    for env in ({"ANTHROPIC_API_KEY": real}, {}):
        files = claude_code(None).home_files(env, UID, GID)
        assert json.loads(files[".claude.json"]) == {"hasCompletedOnboarding": True}
        assert real[-20:].encode() not in files[".claude.json"]


def test_a_kept_home_has_only_this_runs_sentinel_approved_and_keeps_the_agents_keys(tmp_path):
    (tmp_path / ".claude.json").write_text(json.dumps({"userID": "abc", "customApiKeyResponses": {
        "approved": ["an-earlier-runs-sentinel"], "rejected": [SENTINEL[-20:]]}}))
    assert claude_code(tmp_path).home_files({"ANTHROPIC_API_KEY": SENTINEL}, UID, GID) == {}
    assert json.loads((tmp_path / ".claude.json").read_text()) == {
        "userID": "abc", "hasCompletedOnboarding": True,
        "customApiKeyResponses": {"approved": [SENTINEL[-20:]], "rejected": []}}
