"""Claude Code's "Do you want to use this API key?" question, answered by the run itself: the key Claude Code sees is
the run's sentinel (new each run), so it would ask every run; the policy's `secret` line already is the user's
choice to give it that key, so the run approves its own sentinel in `~/.claude.json` (`AgentKind.key_settings`).

Driven as a person does (tmux, tests/test_agent_tui.py's Pane) in the namespaces with a fresh home: the workspace
trust question is still the user's, the key question never appears, a typed prompt is answered by the scripted
model, which received the real key; a command shows what the home's file holds: this run's sentinel's last 20
characters approved, nothing of the real key."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
from agent_support import REAL_KEY, ROOT, provider, sample_repo
from model_anthropic import Say, ToolCall, serve_model
from test_agent_tui import Pane, left_behind, pane, rule  # noqa: F401 (pane: its fixture)

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (scripts/sysdeps.sh)")]

QUESTION = "Do you want to use this API key?"
ANSWER = "Scripted answer: add() subtracts"
SHOW = ("python3 -c \"import json, os; print(json.dumps(json.load(open(os.path.expanduser('~/.claude.json')))"
        "['customApiKeyResponses']))\"")
TURNS = [Say(ANSWER), ToolCall("Bash", {"command": SHOW, "description": "show the key approvals"}), Say("shown")]


def test_claude_code_is_not_asked_about_its_key(tmp_path, pane: Pane, claude_code):  # noqa: F811 (the fixture)
    repo = sample_repo(tmp_path)
    with provider(tmp_path, "api.anthropic.com", serve_model, TURNS,
                  f'include "{ROOT / "policies" / "claude-code.flow"}"\n') as served:
        run_dir = tmp_path / "run"
        pane.start([sys.executable, "-m", "ifc", "run", "--isolation", "namespace", "--preset", "claude-code",
                    "--policy", str(served.policy), "--workspace", str(repo), "--run-dir", str(run_dir),
                    "--hosts", str(served.hosts), "--upstream-ca", str(served.ca)],
                   {**os.environ, "IFC_AGENT_CACHE": str(claude_code), "ANTHROPIC_API_KEY": REAL_KEY}, 100, 30,
                   tmp_path / "pane.sh")
        pane.wait("Yes, I trust this folder", 120)  # the user's: which folder an agent may work in
        pane.choose("Yes, I trust this folder", "1")
        screen = pane.wait(lambda s: "for shortcuts" in s or QUESTION in s, 120)
        assert QUESTION not in screen, screen
        assert rule(100)(screen)

        pane.type("what is wrong with calc?")
        pane.wait(ANSWER)
        assert QUESTION not in pane.screen()
        asked = served.model.main_requests()[0]
        assert "what is wrong with calc?" in str(asked.body["messages"])
        assert asked.headers.get("x-api-key") == REAL_KEY  # the sentinel it used, swapped by the hook

        pane.type("which keys did I approve?")
        pane.wait("Do you want to proceed?")
        pane.choose("Do you want to proceed?", "1")
        pane.wait("shown")
        shown = served.model.main_requests()[-1].tool_results()[-1]
        sentinel = dict(line.split("=", 1) for line in (run_dir / "sandbox.env").read_text().splitlines())[
            "ANTHROPIC_API_KEY"]
        assert json.loads(shown) == {"approved": [sentinel[-20:]], "rejected": []}, shown
        assert REAL_KEY[-20:] not in shown

        pane.keys("C-c", "C-c")
        pane.wait(lambda screen: pane.exit_status() is not None, 120)
        assert pane.exit_status() == 0, pane.screen()
        assert left_behind(run_dir) == []
