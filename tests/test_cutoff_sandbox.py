"""A real `ifc run --isolation namespace --egress`: the agent calls its model, reads a private key (a secret
file the mount cannot serve with sentinels), calls again. Its
curl prints the hook's 403 (what was read, the path, that the model is gone for the run), and `ifc run`'s own
summary says when the agent lost its model and why."""

from __future__ import annotations

import http.server
import re

import pytest
import sandbox_cases
from test_namespace import ifc_run

pytestmark = pytest.mark.integration


class _Model(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"content": "ok"}\n'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


POLICY = """labels { secrecy public < internal < secret }
files { "**" internal  "*.pem" secret }
endpoints { "http://127.0.0.1:{P}" clearance internal returns trusted as model, external }
deny secret -> external "secrets never leave the sandbox"
agent coder { read "**"  write "/src/"  create "/src/"  connect "http://127.0.0.1:{P}" }
"""


def test_ifc_run_says_when_the_agent_lost_its_model_and_the_agent_reads_why(tmp_path):
    ws = sandbox_cases.agent_workspace(tmp_path, {"deploy.pem": "-----BEGIN PRIVATE KEY-----\n", "README.md": "# x\n"})
    call = "curl -s --noproxy '' -x $HTTP_PROXY -d '{}' http://127.0.0.1:{P}/v1/messages"
    with sandbox_cases.serving(_Model) as port:
        policy = tmp_path / "policy.flow"
        policy.write_text(POLICY.replace("{P}", str(port)))
        script = f"{call}; cat deploy.pem >/dev/null; {call}".replace("{P}", str(port))
        proc = ifc_run(ws, policy, tmp_path / "run", "sh", "-c", script, extra=("--egress",))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == '{"content": "ok"}', proc.stdout
    assert out[1] == f"ifc: `secret` data may not go to POST http://127.0.0.1:{port}/v1/messages [external, model]"
    assert "the run read: `deploy.pem` (`secret`)" in out
    assert f"path: deploy.pem --read--> session --connect--> POST http://127.0.0.1:{port}/v1/messages" in out
    assert any(line.startswith("this is the agent's model (`as model`): out of reach since ") for line in out)
    lost = [line for line in proc.stderr.splitlines() if "lost its model" in line]
    assert len(lost) == 1, proc.stderr
    assert re.fullmatch(rf"ifc run: the agent lost its model http://127\.0\.0\.1:{port} at \S+Z because it read "
                        r"`deploy\.pem` \(`secret`\): `secret` data may not go to .*", lost[0]), lost[0]
    assert proc.stderr.index("lost its model") < proc.stderr.index("denial(s):"), "said first"
