"""The agents `ifc agent install` knows: where each comes from, how it starts, which preset policy and provider
key go with it, and the settings it needs to run unattended in a sandbox.

Data, not code paths: adding an agent is one entry. Why each setting:

* `key` is the provider key the preset's policy binds to the provider with `secret ... from env ... to ...`:
  the egress hook holds the real value and the agent only ever sees a sentinel.
* `env` turns off what would either hang (auto-updaters writing into a read-only layer) or send data nowhere
  the user asked (telemetry, error reporting); the preset's policy refuses those hosts anyway, this just spares
  the agent the retries.
* `state` names what the agent keeps in its home directory, kept per workspace with `--keep-state`.
* `settings` are keys set in JSON files of its home before it starts (merged into a kept home's, written into a
  fresh one): what its first interactive start would ask for and cannot finish in a sandbox. Claude Code's
  onboarding checks that it can reach `platform.claude.com` (its OAuth host, which the preset refuses: the key
  is an API key the hook holds) and exits when it cannot; with onboarding done it starts at its prompt.
* `key_settings` are settings that name the run's key, made from its sentinel once the hook has made it (a new
  one each run). Claude Code asks "Do you want to use this API key?" for a key it has not approved, so it would
  ask every run; the policy's `secret` line already is the user's choice to give it that key, so the run approves
  its own sentinel (only a sentinel: `ifc.agents.preset.Preset.settings_for`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

GUEST_LAYER = "/opt/ifc-agent"  # where the sandbox sees the agent's layer, read-only


@dataclass(frozen=True)
class AgentKind:
    name: str
    manager: str  # npm | pypi
    package: str
    command: tuple[str, ...]  # argv prefix, relative to the layer (run from GUEST_LAYER in the sandbox)
    key: str  # the provider key's environment variable (the preset's secret)
    state: tuple[str, ...]  # what it keeps under $HOME
    env: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # other names the agent reads its key from: the sentinel
    settings: dict[str, dict] = field(default_factory=dict)  # home file: keys set in it (JSON) before each run
    key_settings: Callable[[str], dict[str, dict]] | None = None  # the key's sentinel -> more such settings

    @property
    def preset(self) -> str:
        """The preset policy's file name under policies/."""
        return f"{self.name}.flow"

    def argv(self, root: str = GUEST_LAYER) -> list[str]:
        return [f"{root}/{part}" if i == 0 else part for i, part in enumerate(self.command)]


def claude_code_approves(sentinel: str) -> dict[str, dict]:
    """Claude Code's record of the keys its user approved: `customApiKeyResponses.approved` in `~/.claude.json`,
    each key as its last 20 characters (its `mU(key) = key.slice(-20)`, 2.1.197). Only this run's sentinel is
    listed (earlier runs' are dead) and none rejected: a sentinel is the only key it ever sees."""
    return {".claude.json": {"customApiKeyResponses": {"approved": [sentinel[-20:]], "rejected": []}}}


AGENTS: dict[str, AgentKind] = {a.name: a for a in (
    AgentKind("claude-code", "npm", "@anthropic-ai/claude-code", ("node_modules/.bin/claude",), "ANTHROPIC_API_KEY",
              (".claude", ".claude.json"),
              {"DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"},
              settings={".claude.json": {"hasCompletedOnboarding": True}}, key_settings=claude_code_approves),
    AgentKind("codex", "npm", "@openai/codex", ("node_modules/.bin/codex",), "OPENAI_API_KEY", (".codex",),
              {"CODEX_DISABLE_UPDATE_CHECK": "1"}, {"CODEX_API_KEY": "OPENAI_API_KEY"}),
    AgentKind("gemini", "npm", "@google/gemini-cli", ("node_modules/.bin/gemini",), "GEMINI_API_KEY", (".gemini",),
              {"GEMINI_CLI_NO_UPDATE_CHECK": "1"}),
    # aider keeps its histories and caches beside the code unless told otherwise: in its home here, so it needs no
    # write grant at the workspace's root; litellm would load `.env` at import (LITELLM_MODE) and fetch its model
    # price list from GitHub. aider itself still reads the repository's `.env` at start (no switch turns that off)
    AgentKind("aider", "pypi", "aider-chat", ("venv/bin/python", "-m", "aider"), "OPENAI_API_KEY",
              (".aider.chat.history.md", ".aider.input.history"),
              {"AIDER_CHECK_UPDATE": "false", "AIDER_SHOW_RELEASE_NOTES": "false", "AIDER_ANALYTICS": "false",
               "AIDER_GITIGNORE": "false",
               "AIDER_CHAT_HISTORY_FILE": "/home/agent/.aider.chat.history.md",
               "AIDER_INPUT_HISTORY_FILE": "/home/agent/.aider.input.history", "AIDER_MAP_TOKENS": "0",
               "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION"}),
)}

# what every agent gets: no pager that waits for a key, an editor that exists in the sandbox, git that works in
# a workspace owned by someone else (the workspace's owner on the host, seen through the mount)
SANE_ENV = {"PAGER": "cat", "GIT_PAGER": "cat", "EDITOR": "vi", "VISUAL": "vi",
            "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}


def lookup(name: str) -> AgentKind | None:
    return AGENTS.get(name)
