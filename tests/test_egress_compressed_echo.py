"""End to end through the real proxy: a bound HTTPS API that echoes the credential it received, compressed or
encoded, must never hand the sandbox the real value; a request carrying a credential of its own to a bound
host is refused.

The proxy terminates the tunnel to the bound host with the run's CA (`Termination.for_policy`), swaps the
sentinel for the real value, and the echo server answers with what it got — gzip-compressed whatever the
request asked for (a server that ignores `Accept-Encoding: identity`), or base64-encoded. The client decodes
what it received and searches it. (Before the hook called `ifc.enforce.encodings` and
`ifc.enforce.credentials`, each of these failed: it scrubbed literal bytes only and forwarded every credential.)
"""

from __future__ import annotations

import base64
import gzip
import http.client
import http.server
import json
import ssl

import pytest
from tls_support import make_upstream_ca, server_context, start_server

from ifc.enforce.egress import BackgroundLoop, Egress, static_resolver
from ifc.enforce.http_proxy import HttpProxy, Limits
from ifc.enforce.runfiles import write_sandbox_files
from ifc.enforce.secrets import Vault
from ifc.enforce.tls import Termination
from ifc.monitor import EventLog, Monitor
from ifc.policy import compile_text

pytestmark = pytest.mark.integration

REAL = "sk-real-0123456789abcdef-echo"
FOREIGN = "sk-attacker-4f9a8b7c6d5e4f3a2b1c"
POLICY = """
labels {
  secrecy public < internal < secret
}
files {
  "**"  internal
}
endpoints {
  "https://api.test:{T}"   clearance internal
  "https://127.0.0.1:{T}"  clearance internal   # the address api.test resolves to here
}
secret API_KEY from env "IFC_TEST_API_KEY" to "https://api.test:{T}"
"""


class Echo(http.server.BaseHTTPRequestHandler):
    """Echoes the request's headers: `/gzip` gzip-compressed whatever was asked for, `/base64` in base64."""

    protocol_version = "HTTP/1.1"
    seen: list[dict] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        headers = dict(self.headers.items())
        Echo.seen.append(headers)
        body = json.dumps(headers).encode()
        self.send_response(200)
        if self.path == "/gzip":
            body = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
        elif self.path == "/base64":
            body = base64.b64encode(body)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def world(tmp_path):
    upstream_ca, cert, key = make_upstream_ca(tmp_path, ["api.test"])
    server = start_server(Echo, server_context(cert, key))
    t = server.server_address[1]
    policy = compile_text(POLICY.replace("{T}", str(t))).policy
    log = EventLog(tmp_path / "events.db")
    monitor = Monitor(policy, log=log)
    vault = Vault.from_policy(policy, values={"API_KEY": REAL})
    egress = Egress(monitor, resolver=static_resolver({"api.test": ["127.0.0.1"]}), vault=vault)
    tls = Termination.for_policy(policy, str(upstream_ca))
    bg = BackgroundLoop()
    proxy = HttpProxy(egress, Limits(head_timeout=2.0), tls=tls)
    _, port = bg.run(proxy.start())
    write_sandbox_files(tmp_path / "run", vault, tls.ca, f"http://127.0.0.1:{port}")
    Echo.seen.clear()
    yield dict(t=t, port=port, ca=tmp_path / "run" / "ca.pem", sentinel=vault.sandbox_env()["API_KEY"], log=log,
               monitor=monitor)
    bg.run(proxy.close())
    bg.stop()
    server.shutdown()
    monitor.close()


def get(world, path: str, headers: dict) -> tuple[int, dict, bytes]:
    """(status, headers, body) as far as the client got them: a tunnel the monitor cuts mid-response leaves
    the body it had received (`IncompleteRead.partial`), one cut before the head leaves nothing (status 0)."""
    conn = http.client.HTTPSConnection("127.0.0.1", world["port"], timeout=10,
                                       context=ssl.create_default_context(cafile=str(world["ca"])))
    conn.set_tunnel("api.test", world["t"])
    try:
        conn.request("GET", path, headers=headers)
        try:
            response = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError, ssl.SSLError):
            return 0, {}, b""
        try:
            body = response.read()
        except http.client.IncompleteRead as exc:
            body = exc.partial
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def decoded(headers: dict, body: bytes) -> bytes:
    """What the client can read out of what it got, whatever the encoding claimed."""
    if headers.get("content-encoding") == "gzip" or body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    return body


def test_a_gzip_echo_of_the_swapped_key_never_reaches_the_client(world):
    status, headers, body = get(world, "/gzip", {"Authorization": f"Bearer {world['sentinel']}",
                                                 "Accept-Encoding": "gzip"})
    assert status == 200
    assert Echo.seen and Echo.seen[-1]["Authorization"] == f"Bearer {REAL}"  # the swap happened upstream
    text = decoded(headers, body)
    assert REAL.encode() not in text and b"Bearer " in text  # the echo arrived, masked


def test_the_bound_host_is_asked_for_an_unencoded_response(world):
    get(world, "/plain", {"Authorization": f"Bearer {world['sentinel']}", "Accept-Encoding": "gzip, br",
                          "TE": "gzip"})
    assert Echo.seen[-1].get("Accept-Encoding") == "identity"
    assert "TE" not in Echo.seen[-1] and "Te" not in Echo.seen[-1]


def test_a_base64_echo_is_masked_raises_the_run_taint_and_cuts_the_tunnel(world):
    _, _, body = get(world, "/base64", {"Authorization": f"Bearer {world['sentinel']}"})
    assert base64.b64encode(f"Bearer {REAL}".encode())[8:40] not in body
    assert "secret" in world["monitor"].run.taint.secrecy  # the run may hold it now: it is `secret`
    world["log"].flush()
    # the tunnel to api.test (cleared `internal`) is no longer cleared: cut, naming the reveal
    assert [e for e in world["log"].events("deny")
            if "open stream cut" in e.reason and "secret API_KEY via response from" in e.reason]


def test_a_foreign_credential_to_the_bound_host_is_refused_and_never_sent(world):
    status, _, _ = get(world, "/plain", {"X-Api-Key": FOREIGN})
    assert status == 403
    assert not any(FOREIGN in json.dumps(seen) for seen in Echo.seen)
    world["log"].flush()
    assert [e for e in world["log"].events("deny") if e.rule == "egress: foreign credential"]
