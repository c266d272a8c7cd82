"""An agent cut off from its own model by what it read gets an answer it can act on: real clients (curl,
urllib) through the real hook against local servers standing in for the model provider.

- A model call inside a tunnel the hook terminates gets an in-band 403 whose body says what was read, the path
  from that read to the model, that the model is gone for the rest of the run, and what a reviewer can do.
- A CONNECT the monitor refuses for a host the hook terminates is served as a tunnel whose requests get that
  403 (curl would only print `CONNECT tunnel failed, response 403`); a blind CONNECT refusal says the same in
  `X-Ifc-Denied` / `X-Ifc-Detail` headers (`curl -v`).
- The `ifc labels ... --lower` command a 403 offers for a label a write floated up works: run it, and the next
  run reaches its model after reading that file.
- The event log holds one `cutoff` event dated at the read; `ifc report` shows it."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shlex
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tls_support import make_upstream_ca, server_context, start_server

from ifc.enforce.egress import BackgroundLoop, Egress, static_resolver
from ifc.enforce.http_proxy import HttpProxy, Limits
from ifc.enforce.runfiles import write_sandbox_files
from ifc.enforce.secrets import Vault
from ifc.enforce.tls import Termination
from ifc.monitor import EventLog, Monitor
from ifc.monitor.monitor import Request
from ifc.monitor.workspace_store import STATE_ENV, open_store
from ifc.policy import compile_text

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
REAL = "sk-model-real-0123456789"

POLICY = """
labels {
  secrecy public < internal < secret
}
files {
  "**"    internal
  ".env"  secret
}
endpoints {
  "https://model.test:{T}"  clearance internal returns trusted as model, external
  "https://blind.test:{T}"  clearance internal as web, external
  "https://127.0.0.1:{T}"   clearance internal
}
deny secret -> external "secrets never leave the sandbox"
secret MODEL_KEY from env "IFC_TEST_MODEL_KEY" to "https://model.test:{T}"
"""
HOSTS = {h: ["127.0.0.1"] for h in ("model.test", "blind.test")}


class Model(http.server.BaseHTTPRequestHandler):
    """The provider's stand-in: answers every request with a small JSON message and counts them."""

    protocol_version = "HTTP/1.1"
    calls: list[str] = []

    def log_message(self, *args):
        pass

    def _reply(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        Model.calls.append(self.path)
        body = b'{"content": "ok"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reply


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    ca, cert, key = make_upstream_ca(root, ["model.test", "blind.test"])
    server = start_server(Model, server_context(cert, key))
    yield {"ca": ca, "t": server.server_address[1]}
    server.shutdown()


@contextlib.contextmanager
def hook(upstream, tmp_path: Path, workspace: Path | None = None, run: str = "run"):
    """One run's hook: a monitor (with the workspace's label store when given), its event log, the proxy."""
    policy = compile_text(POLICY.replace("{T}", str(upstream["t"]))).policy
    run_dir = tmp_path / run
    run_dir.mkdir()
    log = EventLog(run_dir / "events.db")
    labels = open_store(workspace, run=run) if workspace is not None else None
    monitor = Monitor(policy, log=log, labels=labels)
    vault = Vault.from_policy(policy, values={"MODEL_KEY": REAL})
    tls = Termination.for_policy(policy, str(upstream["ca"]))
    bg = BackgroundLoop()
    proxy = HttpProxy(Egress(monitor, resolver=static_resolver(HOSTS), vault=vault), Limits(head_timeout=2.0),
                      tls=tls)
    _, port = bg.run(proxy.start())
    write_sandbox_files(run_dir, vault, tls.ca, f"http://127.0.0.1:{port}")
    try:
        yield {"monitor": monitor, "log": log, "proxy": f"http://127.0.0.1:{port}", "ca": run_dir / "ca.pem",
               "t": upstream["t"], "run": run_dir}
    finally:
        bg.run(proxy.close())
        bg.stop()
        monitor.flush()
        log.close()
        if labels is not None:
            labels.close()


def curl(h, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", "-x", h["proxy"], "--cacert", str(h["ca"]), *args],
                          capture_output=True, text=True, timeout=20, env={"PATH": os.environ["PATH"]})


def model_call(h) -> subprocess.CompletedProcess:
    return curl(h, "-i", "-d", '{"messages": []}', f"https://model.test:{h['t']}/v1/messages")


def last_status(out: subprocess.CompletedProcess) -> int:
    return int([line for line in out.stdout.splitlines() if line.startswith("HTTP/")][-1].split()[1])


def body_of(out: subprocess.CompletedProcess) -> list[str]:
    return out.stdout.split("\n\n")[-1].splitlines()  # (text mode: curl's CRLFs read as LFs)


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(STATE_ENV, str(tmp_path / "state"))
    return tmp_path / "state"


def test_a_model_call_after_reading_a_secret_gets_a_403_that_says_what_was_read_and_what_to_do(upstream, tmp_path):
    with hook(upstream, tmp_path) as h:
        assert last_status(model_call(h)) == 200  # the model works while the run is clean
        calls = len(Model.calls)
        h["monitor"].decide(Request("read", ".env"))  # what the FUSE mount asks when the agent reads .env
        out = model_call(h)
        assert out.returncode == 0, out.stderr
        assert "200 Connection established" in out.stdout, "the refused CONNECT is served, and refused inside"
        assert last_status(out) == 403
        lines = body_of(out)
        t = h["t"]
        assert lines[0] == f"ifc: `secret` data may not go to POST https://model.test:{t}/v1/messages [external, model]"
        assert "policy says: secrets never leave the sandbox" in lines
        assert "the run read: `.env` (`secret`)" in lines
        assert f"path: .env --read--> session --connect--> POST https://model.test:{t}/v1/messages" in lines
        model = next(line for line in lines if line.startswith("this is the agent's model"))
        assert "for the rest of this run" in model and "a reviewer can allow it for a later run" in model
        deny, files = POLICY.index("deny secret"), POLICY.index('".env"  secret')
        deny_at = f"<policy>:{POLICY[:deny].count(chr(10)) + 1}:1"
        files_at = f"<policy>:{POLICY[:files].count(chr(10)) + 1}:3"
        assert f"rule: deny secret -> external \"secrets never leave the sandbox\" at {deny_at}" in lines
        assert f"  policy: the deny rule at {deny_at} forbids this flow on purpose; narrow that rule only if the " \
               "flow is truly intended" in lines
        assert f"  (`.env` is `secret` by the files rule at {files_at}: only a policy change lowers that)" in lines
        assert not any("ifc labels" in line for line in lines), "no floated label here: no lowering to offer"
        # a client that raises HTTP errors as exceptions (as SDKs do) hands the agent the same text
        ctx = ssl.create_default_context(cafile=str(h["ca"]))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": h["proxy"]}),
                                             urllib.request.HTTPSHandler(context=ctx))
        with pytest.raises(urllib.error.HTTPError) as err:
            opener.open(urllib.request.Request(f"https://model.test:{t}/v1/messages", data=b"{}"), timeout=10)
        assert err.value.code == 403 and "the run read: `.env` (`secret`)" in err.value.read().decode()
        assert len(Model.calls) == calls, "nothing reached the model after the read"
        read_ts = next(e.ts for e in h["log"].events("deny"))  # the first denial came after the read
        cutoffs = list(h["log"].events("cutoff"))
    assert len(cutoffs) == 1, "one cutoff event per model and run, however many calls were refused"
    [c] = cutoffs
    assert c.target == f"https://model.test:{t}" and c.ts < read_ts
    assert c.reason.startswith("it read `.env` (`secret`): `secret` data may not go to")


def test_a_refused_blind_connect_says_why_in_its_headers(upstream, tmp_path):
    """What curl shows for a CONNECT the hook refuses and does not terminate: exit 56 and the status only;
    `-v` shows the headers, which carry the body's lines."""
    with hook(upstream, tmp_path) as h:
        h["monitor"].decide(Request("read", ".env"))
        out = curl(h, "-v", f"https://blind.test:{h['t']}/")
    assert out.returncode == 56 and "CONNECT tunnel failed, response 403" in out.stderr
    assert f"X-Ifc-Denied: `secret` data may not go to https://blind.test:{h['t']} [external, web]" in out.stderr
    assert "X-Ifc-Detail: the run read: `.env` (`secret`)" in out.stderr
    assert "this is the agent's model" not in out.stderr, "blind.test is not the model"


def test_the_lowering_a_403_offers_for_a_floated_label_works_for_the_next_run(upstream, tmp_path, state_dir):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".env").write_text("K=v\n")
    (ws / "notes.txt").write_text("copied\n")
    with hook(upstream, tmp_path, ws, "run1") as h:  # run 1: reads .env, writes notes.txt (its label floats up)
        h["monitor"].decide(Request("read", ".env"))
        assert h["monitor"].decide(Request("write", "notes.txt")).allowed
    with hook(upstream, tmp_path, ws, "run2") as h:  # run 2: reads only notes.txt, and loses its model
        h["monitor"].decide(Request("read", "notes.txt"))
        lines = body_of(model_call(h))
    assert "the run read: `notes.txt` (`secret`)" in lines
    (tmp_path / "p.flow").write_text(POLICY.replace("{T}", str(upstream["t"])))  # names the labels `--to` takes
    [command] = [line.strip() for line in lines if "ifc labels" in line]
    assert command == f"ifc labels {shlex.quote(str(ws))} --lower notes.txt --from 'secret, trusted' " \
                      "--to internal --reason 'WHY THIS DATA MAY GO THERE'"
    argv = shlex.split(command)
    argv[argv.index("--reason") + 1] = "checked: notes.txt holds no secret"
    lowered = subprocess.run([sys.executable, "-m", "ifc", *argv[1:], "--policy", str(tmp_path / "p.flow")],
                             cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert lowered.returncode == 0, lowered.stderr
    with hook(upstream, tmp_path, ws, "run3") as h:  # run 3: the same read, and the model answers
        h["monitor"].decide(Request("read", "notes.txt"))
        assert last_status(model_call(h)) == 200


def test_the_report_says_when_the_agent_lost_its_model_and_why(upstream, tmp_path):
    with hook(upstream, tmp_path) as h:
        h["monitor"].decide(Request("read", ".env"))
        model_call(h)
        model_call(h)
        run_dir = h["run"]
    report = subprocess.run([sys.executable, "-m", "ifc", "report", str(run_dir)], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert report.returncode == 0, report.stderr
    md = report.stdout
    assert "## The agent lost its model" in md
    section = md.split("## The agent lost its model", 1)[1].split("## Summary", 1)[0]
    assert f"`https://model.test:{h['t']}` out of reach for the rest of the run" in section
    assert "because it read `.env` (`secret`)" in section and ".env --read--> session --connect-->" in section
    html = subprocess.run([sys.executable, "-m", "ifc", "report", "--format", "html", str(run_dir)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert "The agent lost its model</h2>" in html and "out of reach for the rest of the run" in html
    doc = json.loads(subprocess.run([sys.executable, "-m", "ifc", "report", "--format", "json", str(run_dir)],
                                    cwd=ROOT, capture_output=True, text=True,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout)
    [cut] = doc["model_cutoffs"]
    assert cut["endpoint"] == f"https://model.test:{h['t']}" and cut["explanation"].startswith(".env --read-->")


# ------------------------------------------------------------------------------------------ the fixes offered work

FIXABLE = """
labels { secrecy public < internal < secret  integrity untrusted < trusted }
files { "**" internal  "notes/**" secret  "inbox/**" internal + untrusted }
endpoints { "https://model.test" clearance internal requires trusted returns trusted as model }
"""


def test_the_policy_line_offered_for_a_model_request_compiles_and_allows_that_request():
    """A request (method and path) is refused by clearance: the offered `allow` names the connection, not the
    request, so it is a valid sink; added to the policy, the same request is allowed."""
    policy = compile_text(FIXABLE).policy
    monitor = Monitor(policy)
    monitor.decide(Request("read", "notes/a.txt"))
    denied = monitor.decide(Request("connect", "POST https://model.test:443/v1/messages"))
    assert not denied.allowed and denied.cutoff is not None
    assert denied.fix["policy"] == 'allow secret -> "https://model.test:443" "why this data may go there"'
    fixed = Monitor(compile_text(FIXABLE + denied.fix["policy"] + "\n").policy)
    fixed.decide(Request("read", "notes/a.txt"))
    assert fixed.decide(Request("connect", "POST https://model.test:443/v1/messages")).allowed


def test_the_endorsement_offered_for_an_untrusted_read_compiles_and_allows_it_once_held():
    policy = compile_text(FIXABLE).policy
    monitor = Monitor(policy)
    monitor.decide(Request("read", "inbox/issue.md"))
    denied = monitor.decide(Request("connect", "POST https://model.test:443/v1/messages"))
    assert not denied.allowed and "requires `trusted` data" in denied.reason
    line = denied.fix["policy"].split("   #")[0].replace("NAME", "approved")
    assert line == 'endorse approved: untrusted -> "https://model.test:443" "who approved this"'
    fixed = Monitor(compile_text(FIXABLE + line + "\n").policy, held=frozenset({"approved"}))
    fixed.decide(Request("read", "inbox/issue.md"))
    assert fixed.decide(Request("connect", "POST https://model.test:443/v1/messages")).allowed


def test_an_open_model_tunnel_cut_by_the_read_is_where_the_agent_lost_its_model(upstream, tmp_path):
    """A kept-alive tunnel to the model is cut inside the read that raised the taint; that cut is the loss."""
    import http.client

    with hook(upstream, tmp_path) as h:
        conn = http.client.HTTPSConnection("127.0.0.1", int(h["proxy"].rsplit(":", 1)[1]), timeout=10,
                                           context=ssl.create_default_context(cafile=str(h["ca"])))
        conn.set_tunnel("model.test", h["t"])
        conn.request("POST", "/v1/messages", body=b"{}")
        assert conn.getresponse().read() == b'{"content": "ok"}'
        h["monitor"].decide(Request("read", ".env"))
        with pytest.raises((OSError, http.client.HTTPException)):
            conn.request("POST", "/v1/messages", body=b"{}")
            conn.getresponse().read()
        conn.close()
        [cut] = list(h["log"].events("cutoff"))
        [deny] = list(h["log"].events("deny"))
    assert cut.target == deny.target == f"https://model.test:{h['t']}"
    assert deny.reason.startswith("open stream cut (tunnel to model.test:") and "the run's taint rose (read .env)" \
        in deny.reason
    assert cut.reason.startswith("it read `.env` (`secret`)") and cut.ts <= deny.ts
