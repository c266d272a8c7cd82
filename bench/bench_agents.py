"""A real agent (Claude Code) from start to its first model request, and a whole scripted session, outside any
sandbox, in the namespaces and in the microVM, side by side.

    sudo .venv/bin/python bench/bench_agents.py [--runs 3] [--isolation outside namespace microvm]

The agent is the layer `ifc agent install claude-code` made (IFC_AGENT_CACHE as for `ifc run`); the model is the
tests' scripted Anthropic Messages server (tests/model_anthropic.py), on a loopback address at port 443 behind a
test CA, served as api.anthropic.com through the egress hook (`--hosts`, `--upstream-ca`); outside the sandbox
the agent reaches it directly (ANTHROPIC_BASE_URL, NODE_EXTRA_CA_CERTS). The session: Read a file, Edit it, run
the tests with Bash, answer; a fresh copy of a small repository each run.

start → first request   from spawning the command (`ifc run ...`, or the agent itself outside) to the first
                        `POST /v1/messages` reaching the model server
session                 the whole command's wall time (for `ifc run`: policy load, FUSE daemon, boot, the
                        agent's four model round trips and tool calls, shutdown, summary)
Needs root. The microVM's accelerator is whatever `ifc run` chooses (printed; TCG on this machine).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from model_anthropic import ModelScript, Say, ToolCall, serve_model  # noqa: E402
from tls_support import make_upstream_ca, server_context  # noqa: E402

KEY = "sk-ant-bench-key-0123456789"
TASK = [ToolCall("Read", {"file_path": "{ws}/src/calc.py"}),
        ToolCall("Edit", {"file_path": "{ws}/src/calc.py", "old_string": "a - b", "new_string": "a + b"}),
        ToolCall("Bash", {"command": "PYTHONPATH=src python3 -m unittest discover -s tests 2>&1 | tail -1"}),
        Say("fixed")]


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


def turns(ws: str) -> list:
    return [ToolCall(t.name, {k: v.replace("{ws}", ws) for k, v in t.input.items()}) if isinstance(t, ToolCall)
            else t for t in TASK]


def one(kind: str, tmp: Path, script: ModelScript, port_url: str, ca: Path, hosts: Path, policy: Path,
        layer_bin: str) -> tuple[float, float]:
    ws = repo(tmp / "ws")
    script.seen.clear()
    script.turns[:] = turns("/workspace" if kind != "outside" else str(ws))
    prompt = ["-p", "fix the failing test", "--dangerously-skip-permissions"]
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY}
    if kind == "outside":
        home = tmp / "home"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir()
        os.chown(home, 1000, 1000)
        argv = ["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", layer_bin, *prompt]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": port_url,
               "NODE_EXTRA_CA_CERTS": str(ca), "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
        cwd = ws
    else:
        argv = [sys.executable, "-m", "ifc", "run", "--isolation", kind, "--preset", "claude-code", "--policy",
                str(policy), "--workspace", str(ws), "--run-dir", str(tmp / f"run-{time.monotonic_ns()}"),
                "--hosts", str(hosts), "--upstream-ca", str(ca), "--", *prompt]
        cwd = ROOT
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=900)
    total = time.monotonic() - start
    main = script.main_requests()
    if proc.returncode != 0 or len(main) != len(TASK) or "OK" not in main[-1].tool_results()[-1]:
        sys.exit(f"bench_agents: {kind}: the session did not complete ({proc.returncode}): "
                 f"{(proc.stdout + proc.stderr).strip()[-600:]}")
    return script.seen[0].at - start, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--isolation", nargs="+", default=["outside", "namespace", "microvm"])
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_agents: needs root")
    from ifc.agents import layer
    from ifc.agents.catalog import lookup
    from vmm import image, launch

    installed = layer.current(lookup("claude-code"))
    with tempfile.TemporaryDirectory(prefix="ifc-bench-agents-") as tmpname:
        tmp = Path(tmpname)
        os.chmod(tmp, 0o755)
        ip = f"127.{random.randint(64, 127)}.{random.randint(0, 255)}.10"
        ca, cert, key = make_upstream_ca(tmp, ["api.anthropic.com", ip])
        script = ModelScript([])
        server = serve_model(script, server_context(cert, key), (ip, 443))
        (tmp / "hosts").write_text(f"api.anthropic.com {ip}\n")
        policy = tmp / "claude-code-bench.flow"
        policy.write_text(f'include "{ROOT / "policies" / "claude-code.flow"}"\n'
                          f'endpoints {{ "https://{ip}" clearance public as scripted }}\n')
        accel = launch.choose_accel(image.current())[0] if "microvm" in args.isolation else "-"
        print(f"claude-code {installed.version}; microVM accelerator: {accel}; load {os.getloadavg()[0]:.1f}")
        print("| where | start → first model request, median (min-max) | scripted session, median (min-max) |")
        print("|---|---|---|")
        try:
            for kind in args.isolation:
                got = [one(kind, tmp, script, f"https://{ip}", ca, tmp / "hosts", policy, str(installed.argv()[0]))
                       for _ in range(args.runs)]
                first, total = [g[0] for g in got], [g[1] for g in got]
                print(f"| {kind} | {statistics.median(first):.2f} s ({min(first):.2f}-{max(first):.2f}) "
                      f"| {statistics.median(total):.2f} s ({min(total):.2f}-{max(total):.2f}) |", flush=True)
        finally:
            server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
