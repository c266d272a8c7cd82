"""Agents' terminal UIs through `ifc run`, driven the way a person drives them: a tmux session whose pane runs
`ifc run --preset NAME` (no print mode), so the pane's terminal is the run's terminal; keys typed with
`tmux send-keys`, the screen read with `tmux capture-pane`, the window resized with `tmux resize-window`.

Claude Code in the microVM (TCG here; one boot): its first-start question answered (trust the workspace; the key,
the run's sentinel, is approved by the run: tests/test_agent_key_approval.py), a prompt typed and the scripted
model's answer rendered, a resize redrawn at the new width (the guest's terminal got the size and the agent its
SIGWINCH), a tool call approved, Ctrl-C twice ending the agent, and `ifc run` exiting with its status and nothing of
the run left (mount, helpers, the hook's port). The home is kept (`--keep-state`): what the session wrote in the VM
is on the host for the next run, and so is the taint of what it read — the VM session stashed a key file in its
home, and the next run, resuming that session with the key in its home, is refused the model from its first request:
nothing of it can leave."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from model_anthropic import Say, ToolCall, serve_model
from test_agents import REAL_KEY, SECRET, install, provider, sample_repo

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (scripts/sysdeps.sh)")]


class Pane:
    """One tmux window on a private server (its own socket), whose pane runs a command; the pane stays after the
    command exits, so its exit status can be read. The pane's shell writes that status to a file: tmux (3.3a
    here) marks a pane dead when its terminal closes and at times never fills in the status of a command that
    exited 0 (seen with `strace`: `ifc run` exited 0, tmux showed neither a status nor a signal)."""

    def __init__(self, where: Path):
        self.socket = f"ifc-tui-{uuid.uuid4().hex[:8]}"
        self.conf = where / "tmux.conf"
        self.status = where / "pane.status"
        self.conf.write_text("set -g remain-on-exit on\nset -g history-limit 5000\n")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, "-f", str(self.conf), *args], check=True,
                              capture_output=True, text=True).stdout

    def start(self, argv: list[str], env: dict[str, str], cols: int, rows: int, script: Path) -> None:
        # the shell outlives a Ctrl-C meant for the command (a trap, not an ignore: the command gets the default)
        script.write_text(f"cd {shlex.quote(str(ROOT))}\ntrap true INT\n"
                          f"env -i {shlex.join(f'{k}={v}' for k, v in env.items())} {shlex.join(argv)}\n"
                          f"echo $? > {shlex.quote(str(self.status))}.tmp && mv {shlex.quote(str(self.status))}.tmp "
                          f"{shlex.quote(str(self.status))}\n")
        self.tmux("new-session", "-d", "-s", "run", "-x", str(cols), "-y", str(rows), "sh", str(script))

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "run")

    def wait(self, seen: str | Callable[[str], bool], timeout: float = 120) -> str:
        """The screen once `seen` is on it (a text, or a test of the whole screen); fails showing the screen."""
        test = seen if callable(seen) else (lambda screen: seen in screen)
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if test(screen):
                return screen
            if time.monotonic() > deadline or self.exit_status() is not None:
                pytest.fail(f"not on the screen after {timeout:.0f} s: {seen!r}\n{screen}\n{self.processes()}")
            time.sleep(0.5)

    def processes(self) -> str:
        """What still runs in the pane's session (where a command that will not end is waiting), and which
        processes hold the pane's terminal open: tmux marks a pane dead only once nobody does, so a helper that
        kept it would leave a finished run looking unfinished."""
        leader, tty, dead = self.tmux("display-message", "-p", "-t", "run",
                                      "#{pane_pid} #{pane_tty} #{pane_dead}").split()
        holders = set()
        for fd in Path("/proc").glob("[0-9]*/fd/*"):
            with contextlib.suppress(OSError):
                if os.readlink(fd) == tty:
                    holders.add(fd.parts[2])
        session = subprocess.run(["ps", "-o", "pid,stat,wchan:20,args", "-s", leader], capture_output=True,
                                 text=True).stdout
        held = subprocess.run(["ps", "-o", "pid,sid,stat,args", "-p", ",".join(sorted(holders)) or "0"],
                              capture_output=True, text=True).stdout
        return f"{session}pane {tty} (dead: {dead}) held open by:\n{held}"

    def keys(self, *keys: str) -> None:
        for key in keys:
            self.tmux("send-keys", "-t", "run", key)
            time.sleep(0.3)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "run", "-l", text)
        time.sleep(0.3)
        self.keys("Enter")

    def choose(self, menu: str, number: str, again: float = 5, timeout: float = 60) -> None:
        """Answer the menu whose question is `menu` with its option `number` (a digit picks and confirms; arrow
        keys are escape sequences, and an ESC read apart from the rest of its sequence cancels the menu). Sent
        again while the menu stays `again` seconds: a key that arrives before the menu listens, which under TCG
        takes a while after it is drawn, is lost. A menu the agent restarts itself after needs longer: a key sent
        again while it restarts answers the next menu (Gemini CLI's folder trust, then its sign-in choice, whose
        first option is Google's). A menu gone for a moment may be drawn again (Gemini CLI's sign-in choice,
        redrawn once it finds the API key): it counts as answered only if still gone a second later."""
        deadline = time.monotonic() + timeout
        while menu in self.screen():
            if time.monotonic() > deadline:
                pytest.fail(f"could not answer {menu!r}:\n{self.screen()}")
            self.keys(number)
            with contextlib.suppress(pytest.fail.Exception):
                self.wait(lambda screen: menu not in screen, again)
            time.sleep(1)

    def resize(self, cols: int, rows: int) -> None:
        self.tmux("resize-window", "-t", "run", "-x", str(cols), "-y", str(rows))

    def exit_status(self) -> int | None:
        """None while the command runs; its exit status (128+N: ended by signal N), or minus the signal that ended
        the pane's shell (-1 when tmux does not say which)."""
        if self.status.exists():
            return int(self.status.read_text())
        shown = self.tmux("display-message", "-p", "-t", "run",
                          "#{pane_dead}:#{pane_dead_status}:#{pane_dead_signal}").strip()
        dead, _, signal = shown.split(":")
        if dead != "1":
            return None
        if self.status.exists():  # written just before the shell ended
            return int(self.status.read_text())
        return -int(signal or 1)  # tmux before 3.4 has no pane_dead_signal

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.tmux("kill-server")


@pytest.fixture
def pane(tmp_path) -> Iterator[Pane]:
    opened = Pane(tmp_path)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="module")
def claude_code(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("agents")
    install(cache, "claude-code")
    return cache


def rule(width: int) -> Callable[[str], bool]:
    """Claude Code draws its prompt box between two rules as wide as its terminal."""
    return lambda screen: "─" * width in screen.splitlines()


def left_behind(run_dir: Path) -> list[str]:
    """Mounts and processes that name the run directory (the FUSE mount, the mount daemon, virtiofsd, QEMU)."""
    mounts = [line for line in Path("/proc/self/mounts").read_text().splitlines() if str(run_dir) in line]
    procs = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if entry.name.isdigit() and str(run_dir) in cmdline:
                procs.append(f"{entry.name}: {cmdline}")
    return mounts + procs


def denied_for_secret(events: Path, host: str) -> bool:
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(f"file:{events}?mode=ro",
                                                                                uri=True)) as db:
        return db.execute("SELECT 1 FROM events WHERE kind = 'deny' AND target LIKE ? AND reason LIKE '`secret`%'",
                          (f"https://{host}%",)).fetchone() is not None
    return False


ANSWER = "Scripted answer: add() subtracts; 3 tests to fix"
TUI_TURNS = [Say(ANSWER),
             ToolCall("Bash", {"command": "mkdir -p ~/.claude && cat deploy.key >> ~/.claude/memo",
                               "description": "keep the deploy key"}),
             Say("kept")]


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
def test_claude_code_tui_in_microvm_and_its_kept_home(tmp_path, pane, claude_code, image_env):
    repo = sample_repo(tmp_path, "deploy.key")  # a secret the mount serves as it is: reading it taints the run
    with provider(tmp_path, "api.anthropic.com", serve_model, TUI_TURNS,
                  f'include "{ROOT / "policies" / "claude-code.flow"}"\n') as served:
        run_dir = tmp_path / "run1"
        ifc = [sys.executable, "-m", "ifc", "run", "--preset", "claude-code", "--keep-state", "--policy",
               str(served.policy), "--workspace", str(repo), "--hosts", str(served.hosts), "--upstream-ca",
               str(served.ca)]
        env = {**image_env, "IFC_AGENT_CACHE": str(claude_code), "ANTHROPIC_API_KEY": REAL_KEY}
        pane.start([*ifc, "--run-dir", str(run_dir)], env, 100, 30, tmp_path / "pane.sh")

        # its first start in a fresh home: onboarding is done and the run's sentinel approved (the preset's
        # settings, merged into the kept home); which folder it may work in is the user's
        pane.wait("Yes, I trust this folder", 180)
        pane.choose("Yes, I trust this folder", "1")
        screen = pane.wait(lambda s: "for shortcuts" in s or "Do you want to use this API key?" in s)
        assert "Do you want to use this API key?" not in screen, screen
        assert rule(100)(pane.screen())

        pane.type("what is wrong with calc?")
        pane.wait(ANSWER)
        asked = served.model.main_requests()[0]
        assert "what is wrong with calc?" in str(asked.body["messages"])
        assert asked.headers.get("x-api-key") == REAL_KEY

        pane.resize(120, 40)  # the guest's terminal takes the size, the agent gets SIGWINCH and redraws
        pane.wait(rule(120), 60)

        pane.type("keep the deploy key for later")
        pane.wait("Do you want to proceed?")
        pane.choose("Do you want to proceed?", "1")
        from ifc.agents.preset import kept_home

        memo = kept_home(repo, "claude-code") / ".claude" / "memo"
        deadline = time.monotonic() + 120
        while not (memo.exists() and SECRET in memo.read_text()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert SECRET in memo.read_text()  # written in the VM, on the host
        while not denied_for_secret(run_dir / "events.db", "api.anthropic.com") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert denied_for_secret(run_dir / "events.db", "api.anthropic.com")  # the tool's output stays in
        assert all(SECRET.split("=")[1] not in str(seen.body) for seen in served.model.seen)

        def ended(screen: str) -> bool:  # Claude Code's last words, then `ifc run`'s
            return "Resume this session with" in screen or pane.exit_status() is not None

        for _ in range(6):  # the first Ctrl-C may only interrupt what it is doing; two in a row end it
            pane.keys("C-c", "C-c")
            with contextlib.suppress(pytest.fail.Exception):
                pane.wait(ended, 8)
            if ended(pane.screen()):
                break
        pane.wait(lambda screen: pane.exit_status() is not None, 60)  # no more keys: the run shuts down
        screen = pane.screen()
        assert pane.exit_status() == 0, screen
        assert f"ifc run: report: ifc report {run_dir}" in screen.replace("\n", "")
        assert left_behind(run_dir) == []
        hook = re.search(r"nc 127\.0\.0\.1 (\d+)", (run_dir / "qemu.argv").read_text())
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", int(hook[1])), 2):
            pass

        # the next run gets that home: the session is there, and so is what it read
        sessions = list((kept_home(repo, "claude-code") / ".claude" / "projects").glob("*/*.jsonl"))
        assert any(ANSWER in s.read_text() for s in sessions), sessions
        served.model.seen.clear()
        again = subprocess.run([*ifc, "--isolation", "namespace", "--run-dir", str(tmp_path / "run2"), "--",
                                "--continue", "-p", "send what you kept", "--dangerously-skip-permissions"],
                               cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
                               env={**os.environ, **env})
        assert served.model.seen == [], again.stderr  # refused from its first request: nothing of the home left
        assert served.attacker.seen == []
        assert denied_for_secret(tmp_path / "run2" / "events.db", "api.anthropic.com"), again.stderr
        with sqlite3.connect(tmp_path / "run2" / "events.db") as db:
            started = db.execute("SELECT reason FROM events WHERE op = 'inherit'").fetchone()[0]
        assert started.startswith("the run's taint starts at `secret"), started


# ------------------------------------------------------------------------------------------ the others, in namespaces

def wider_than(width: int, marker: str) -> Callable[[str], bool]:
    """A status line longer than `width` (Codex right-aligns its warnings in its status line: at the old width it
    could not be this long)."""
    return lambda screen: any(marker in line and len(line) > width for line in screen.splitlines())


# per agent: its provider's host and scripted server, its arguments, and what a person does at its first start
# (("choose", menu text, key) answers a menu; ("wait", text) waits for the prompt), and its redraw at 120 columns
OTHERS = {
    "gemini": ("generativelanguage.googleapis.com", "model_gemini:serve_gemini", "GEMINI_API_KEY", [],
               [("choose", "Do you trust the files in this folder?", "1", 30),  # it restarts itself to apply it
                ("choose", "Use Gemini API Key", "Enter"), ("choose", "Press Enter to submit", "Enter"),
                ("wait", "Type your message")], rule(120)),
    "codex": ("api.openai.com", "model_openai:serve_responses", "OPENAI_API_KEY", [],
              [("choose", "Choose how you want to use Codex", "3"), ("choose", "Use Amazon Bedrock", "Enter"),
               ("choose", "Press enter to save", "Enter"), ("choose", "Trust this folder?", "Enter"),
               ("wait", "Ask Codex to do anything")], wider_than(100, "for shortcuts")),
    "aider": ("api.openai.com", "model_chat:serve_chat", "OPENAI_API_KEY", ["--model", "gpt-4o"],
              [("wait", "Repo-map:")], rule(120)),
}


@pytest.mark.parametrize("name", list(OTHERS))
def test_terminal_ui_in_namespaces(tmp_path, pane, name, tmp_path_factory):
    """Codex, Gemini CLI and aider at their prompts: first-start questions answered (the key offered is the
    sentinel), a typed prompt answered on the screen, a resize redrawn, Ctrl-C twice ending the agent and the run."""
    import importlib

    host, server, key, args, first_start, redrawn = OTHERS[name]
    module, function = server.split(":")
    cache = tmp_path_factory.mktemp(f"agents-{name}")
    install(cache, name)
    preset = "".join(line for line in (ROOT / "policies" / f"{name}.flow").read_text().splitlines(True)
                     if not line.startswith("secret CHATGPT_"))  # Codex's sign-in secrets: this is an API key
    answers = [Say(f"Scripted answer {n} from the {name} model") for n in (1, 2)]
    with provider(tmp_path, host, getattr(importlib.import_module(module), function), answers, preset) as served:
        repo = sample_repo(tmp_path)
        run_dir = tmp_path / "run"
        pane.start([sys.executable, "-m", "ifc", "run", "--isolation", "namespace", "--preset", name, "--policy",
                    str(served.policy), "--workspace", str(repo), "--run-dir", str(run_dir), "--hosts",
                    str(served.hosts), "--upstream-ca", str(served.ca), "--", *args],
                   {**os.environ, "IFC_AGENT_CACHE": str(cache), key: REAL_KEY}, 100, 30, tmp_path / "pane.sh")
        for step, text, *press in first_start:
            pane.wait(text, 120)
            if step == "choose":
                pane.choose(text, *press)
        pane.type("what is the answer?")
        pane.wait(answers[0].text, 120)
        assert served.model.seen and all(REAL_KEY in str(seen.headers) for seen in served.model.seen)
        pane.resize(120, 40)
        if name == "aider":  # it draws its rule when it reads the next line, at the width it has then
            pane.type("and again?")
            pane.wait(answers[1].text, 120)
        pane.wait(redrawn, 60)
        pane.keys("C-c")  # Codex ends at the first; the others ask for a second within a second or two
        if "ifc run:" not in pane.screen().split("what is")[-1]:  # a second one after `ifc run` took the terminal
            pane.keys("C-c")                                       # back would interrupt its own shutdown
        pane.wait(lambda screen: pane.exit_status() is not None, 180)  # Codex's last requests may take a while
        assert pane.exit_status() == 0, pane.screen()
        assert left_behind(run_dir) == []
