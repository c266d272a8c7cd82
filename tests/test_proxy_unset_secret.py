"""`ifc proxy` on its own with a secret's variable unset: it starts, as `ifc run` does, with a warning naming the
variable, and refuses only the sends that need that secret (fail closed: no stand-in value is ever swapped in);
a secret that is set is still swapped in on the same proxy. Through the real proxy with curl, against a server on
127.0.0.1 that records what arrives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sandbox_cases import Recorder, serving

from ifc.monitor import EventLog

ROOT = Path(__file__).resolve().parent.parent
REAL = "real-value-of-the-set-key-0123456789"
POLICY = """labels {{ secrecy public < internal < secret }}
files {{ "**" internal }}
endpoints {{ "http://127.0.0.1:{port}" clearance internal returns trusted as api }}
secret SET_KEY from env "IFC_TEST_SET_KEY" to "http://127.0.0.1:{port}"
secret UNSET_KEY from env "IFC_TEST_UNSET_KEY" to "http://127.0.0.1:{port}"
agent coder {{ read "**" connect "http://127.0.0.1:{port}" }}
"""


def test_proxy_starts_without_a_secret_and_refuses_only_its_sends(tmp_path):
    Recorder.seen = []
    env = {k: v for k, v in os.environ.items() if k != "IFC_TEST_UNSET_KEY"}
    env["IFC_TEST_SET_KEY"] = REAL
    run_dir = tmp_path / "run"
    with serving(Recorder) as port:
        policy = tmp_path / "p.flow"
        policy.write_text(POLICY.format(port=port))
        proc = subprocess.Popen([sys.executable, "-m", "ifc", "proxy", "--policy", str(policy), "--listen",
                                 "127.0.0.1:0", "--run-dir", str(run_dir)], cwd=ROOT, env=env,
                                stderr=subprocess.PIPE, text=True)
        try:
            warning = proc.stderr.readline().rstrip("\n")
            assert warning == ("ifc proxy: warning: secret `UNSET_KEY` has no value (environment variable "
                               "`IFC_TEST_UNSET_KEY` is not set): the sandbox gets its sentinel, and every send "
                               "that needs it is refused"), warning
            line = proc.stderr.readline()
            assert line.startswith("ifc proxy: http on 127.0.0.1:"), line
            proxy = f"http://127.0.0.1:{int(line.rsplit(':', 1)[1])}"
            sandbox = dict(ln.split("=", 1) for ln in (run_dir / "sandbox.env").read_text().splitlines())
            assert sandbox["UNSET_KEY"].startswith("ifc-sentinel-") and sandbox["SET_KEY"].startswith("ifc-sentinel-")

            def curl(path: str, key: str | None) -> subprocess.CompletedProcess:
                header = ["-H", f"Authorization: Bearer {key}"] if key else []
                return subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "-x", proxy, *header,
                                       f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=20)

            refused = curl("/unset", sandbox["UNSET_KEY"])
            assert refused.stdout.endswith("\n403"), refused.stdout
            assert ("secret `UNSET_KEY` had no value when the run started (environment variable "
                    "`IFC_TEST_UNSET_KEY` is not set)") in refused.stdout, refused.stdout
            assert curl("/set", sandbox["SET_KEY"]).stdout == "ok\n\n200"
            assert curl("/none", None).stdout == "ok\n\n200"
        finally:
            proc.terminate()
            assert proc.wait(10) == 0
    # the server got the other two, the set key swapped in; nothing of the unset one's send
    assert Recorder.seen == [("/set", f"Bearer {REAL}"), ("/none", None)], Recorder.seen
    log = EventLog(run_dir / "events.db")
    try:
        denials = [e for e in log.events("deny") if e.target.startswith("UNSET_KEY@")]
    finally:
        log.close()
    assert len(denials) == 1 and "had no value" in denials[0].reason, denials
