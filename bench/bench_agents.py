"""Real agents (Claude Code, Codex CLI, Gemini CLI, aider) from start to their first model request, and a whole
scripted session, outside any sandbox, in the namespaces and in the microVM, side by side.

    sudo .venv/bin/python bench/bench_agents.py [--runs 3] [--agents claude-code codex gemini aider]
                                                [--isolation outside namespace microvm]

Each agent is the layer `ifc agent install NAME` made (IFC_AGENT_CACHE as for `ifc run`); its model is the tests'
scripted server for its provider's API (tests/model_*.py), on a loopback address at port 443 behind a test CA,
served under the provider's real host name. In `ifc run` the egress hook routes that name there (`--hosts`,
`--upstream-ca`) and holds the key; outside, the agent runs as uid 1000 in a private mount namespace whose
/etc/hosts names that address, trusting the test CA besides the host's roots, with the preset's own settings
(`ifc.agents.catalog`): the same agent, same settings, same server, only the sandbox differs. The session: fix a
one-line bug and run the tests (read + edit + shell for the agents with tools; one SEARCH/REPLACE reply and
`--auto-test` for aider); a fresh copy of a small repository each run.

start → first request   from spawning the command (`ifc run ...`, or the agent itself outside) to the first
                        request reaching the model server (for some agents a small bookkeeping one)
session                 the whole command's wall time (for `ifc run`: policy load, FUSE daemon, boot, the
                        agent's model round trips and tool calls, shutdown, summary)
Needs root. The microVM's accelerator is whatever `ifc run` chooses (printed; TCG on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from model_anthropic import ModelScript, Say, ToolCall, serve_model  # noqa: E402
from model_chat import serve_chat  # noqa: E402
from model_gemini import serve_gemini  # noqa: E402
from model_openai import serve_responses  # noqa: E402
from tls_support import make_upstream_ca, server_context  # noqa: E402

KEY = "sk-bench-key-0123456789abcdef"
TESTS = "PYTHONPATH=src python3 -m unittest discover -s tests 2>&1 | tail -1"
FIXED = "def add(a, b):\n    return a + b\n"
AIDER_EDIT = ("src/calc.py\n```python\n<<<<<<< SEARCH\n    return a - b\n=======\n    return a + b\n"
              ">>>>>>> REPLACE\n```\n")


def _codex(cmd: str) -> ToolCall:
    return ToolCall("exec", {"js": f"const r = await tools.exec_command({{cmd: {json.dumps(cmd)}}});\ntext(r.output);"})


@dataclass(frozen=True)
class Bench:
    """One agent's session: its provider's host and scripted server, its turns, its arguments, how it ended well."""

    host: str
    serve: Callable
    turns: list  # `{ws}` in a tool's input: the workspace as the agent sees it
    args: list[str]
    requests: int  # model requests a completed session makes at least (one per turn)


BENCHES = {
    "claude-code": Bench("api.anthropic.com", serve_model,
                         [ToolCall("Read", {"file_path": "{ws}/src/calc.py"}),
                          ToolCall("Edit", {"file_path": "{ws}/src/calc.py", "old_string": "a - b",
                                            "new_string": "a + b"}),
                          ToolCall("Bash", {"command": TESTS}), Say("fixed")],
                         ["-p", "fix the failing test", "--dangerously-skip-permissions"], 4),
    "codex": Bench("api.openai.com", serve_responses,
                   [_codex("sed -i 's/a - b/a + b/' src/calc.py"), _codex(TESTS), Say("fixed")],
                   ["exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
                    "fix the failing test"], 3),
    "gemini": Bench("generativelanguage.googleapis.com", serve_gemini,
                    [ToolCall("read_file", {"file_path": "src/calc.py"}),
                     ToolCall("replace", {"file_path": "{ws}/src/calc.py", "old_string": "a - b",
                                          "new_string": "a + b", "instruction": "add adds"}),
                     ToolCall("run_shell_command", {"command": TESTS, "description": "tests"}), Say("fixed")],
                    ["-p", "fix the failing test", "--yolo", "--skip-trust"], 4),
    "aider": Bench("api.openai.com", serve_chat, [Say(AIDER_EDIT)],
                   ["--model", "gpt-4o", "--yes-always", "--no-git", "--test-cmd",
                    "PYTHONPATH=src python3 -m unittest discover -s tests", "--auto-test",
                    "--message", "fix the failing test", "src/calc.py"], 1),
}


def repo(where: Path) -> Path:
    shutil.rmtree(where, ignore_errors=True)
    (where / "src").mkdir(parents=True)
    (where / "tests").mkdir()
    (where / "src" / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (where / "tests" / "test_calc.py").write_text(
        "import unittest\n\nfrom calc import add\n\n\nclass AddTest(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n")
    subprocess.run(["chown", "-R", "1000:1000", str(where)], check=True)
    return where


def turns(bench: Bench, ws: str) -> list:
    return [ToolCall(t.name, {k: v.replace("{ws}", ws) for k, v in t.input.items()}) if isinstance(t, ToolCall)
            else t for t in bench.turns]


def outside(name: str, tmp: Path, ws: Path, layer_argv: list[str], hosts: Path, trust: Path) -> tuple[list, dict]:
    """The agent as its user would run it without a sandbox: uid 1000, a fresh home, the preset's settings, the
    provider's name resolved to the scripted server (a private mount namespace's /etc/hosts), the test CA
    trusted besides the host's roots."""
    from ifc.agents.catalog import SANE_ENV, lookup
    from vmm.sandbox import TRUST_VARIABLES

    kind = lookup(name)
    home = tmp / "home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    os.chown(home, 1000, 1000)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "TERM": "dumb", "HOME": str(home),
           kind.key: KEY, **{alias: KEY for alias in kind.aliases}, **{v: str(trust) for v in TRUST_VARIABLES},
           **SANE_ENV, **{k: v.replace("/home/agent", str(home)) for k, v in kind.env.items()}}
    inner = f"mount --bind {shlex.quote(str(hosts))} /etc/hosts && cd {shlex.quote(str(ws))} && exec \"$@\""
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", inner, "sh",
            "setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", *layer_argv]
    return argv, env


def one(name: str, kind: str, tmp: Path, script: ModelScript, files: dict[str, Path], layer_argv: list[str],
        cache: str) -> tuple[float, float]:
    bench = BENCHES[name]
    ws = repo(tmp / "ws")
    script.seen.clear()
    script.turns[:] = turns(bench, "/workspace" if kind != "outside" else str(ws))
    if kind == "outside":
        argv, env = outside(name, tmp, ws, layer_argv, files["etc-hosts"], files["trust"])
        argv += bench.args
    else:
        from ifc.agents.catalog import lookup

        argv = [sys.executable, "-m", "ifc", "run", "--isolation", kind, "--preset", name, "--policy",
                str(files["policy"]), "--workspace", str(ws), "--run-dir", str(tmp / f"run-{time.monotonic_ns()}"),
                "--hosts", str(files["hosts"]), "--upstream-ca", str(files["ca"]), "--", *bench.args]
        env = {**os.environ, "IFC_AGENT_CACHE": cache, lookup(name).key: KEY}
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=900)
    total = time.monotonic() - start
    fixed = (ws / "src" / "calc.py").read_text() == FIXED
    answered = len(script.seen)
    if proc.returncode != 0 or not fixed or answered < bench.requests:
        sys.exit(f"bench_agents: {name} {kind}: the session did not complete ({proc.returncode}, fixed: {fixed}, "
                 f"{answered} model requests): {(proc.stdout + proc.stderr).strip()[-800:]}")
    return script.seen[0].at - start, total


def policy_for(name: str, tmp: Path, ip: str) -> Path:
    """The preset, plus the scripted server's address (the hook refuses loopback addresses no rule names); the
    Codex preset's ChatGPT sign-in secrets left out (they come from `~/.codex/auth.json`; this is an API key)."""
    preset = (ROOT / "policies" / f"{name}.flow").read_text()
    if name == "codex":
        preset = "".join(line for line in preset.splitlines(True) if not line.startswith("secret CHATGPT_"))
    policy = tmp / f"{name}-bench.flow"
    policy.write_text(preset + f'endpoints {{ "https://{ip}" clearance public as scripted }}\n')
    return policy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--agents", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    parser.add_argument("--isolation", nargs="+", default=["outside", "namespace", "microvm"])
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_agents: needs root")
    from ifc.agents import layer
    from ifc.agents.catalog import lookup
    from vmm import image, launch
    from vmm.packagecfg import host_roots

    accel = launch.choose_accel(image.current())[0] if "microvm" in args.isolation else "-"
    print(f"microVM accelerator: {accel}; load {os.getloadavg()[0]:.1f}")
    print("| agent | where | start → first model request, median (min-max) | scripted session, median (min-max) |")
    print("|---|---|---|---|")
    for name in args.agents:
        installed = layer.current(lookup(name))
        bench = BENCHES[name]
        with tempfile.TemporaryDirectory(prefix="ifc-bench-agents-") as tmpname:
            tmp = Path(tmpname)
            os.chmod(tmp, 0o755)
            ip = f"127.{random.randint(64, 127)}.{random.randint(0, 255)}.10"
            ca, cert, key = make_upstream_ca(tmp, [bench.host, ip])
            script = ModelScript([])
            server = bench.serve(script, server_context(cert, key), (ip, 443))
            files = {"ca": ca, "hosts": tmp / "hosts", "etc-hosts": tmp / "etc-hosts", "trust": tmp / "trust.pem",
                     "policy": policy_for(name, tmp, ip)}
            files["hosts"].write_text(f"{bench.host} {ip}\n")
            files["etc-hosts"].write_text(f"127.0.0.1 localhost\n{ip} {bench.host}\n")
            files["trust"].write_bytes(host_roots() + b"\n" + ca.read_bytes())
            try:
                for kind in args.isolation:
                    got = [one(name, kind, tmp, script, files, installed.argv(), str(layer.root()))
                           for _ in range(args.runs)]
                    first, total = [g[0] for g in got], [g[1] for g in got]
                    print(f"| {name} {installed.version} | {kind} | {statistics.median(first):.2f} s "
                          f"({min(first):.2f}-{max(first):.2f}) | {statistics.median(total):.2f} s "
                          f"({min(total):.2f}-{max(total):.2f}) |", flush=True)
            finally:
                server.shutdown()
                server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
