"""HTTPS sentinel swap: tunnels to endpoints a secret is bound to are terminated with the run's CA; real clients
(curl, urllib, http.client) trust RUN/ca.pem, the upstream is a local HTTPS server with a CA made here."""

from __future__ import annotations

import base64
import datetime
import http.client
import http.server
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from hypothesis import given, settings
from hypothesis import strategies as st
from tls_support import make_upstream_ca, server_context, start_server

from ifc.enforce.egress import BackgroundLoop, Egress, static_resolver
from ifc.enforce.http_proxy import HttpProxy, Limits
from ifc.enforce.mount import check_fuse_available
from ifc.enforce.runfiles import write_sandbox_files
from ifc.enforce.secrets import Vault
from ifc.enforce.tls import NOTHING, RunCA, Termination
from ifc.match import EndpointPattern
from ifc.monitor import EventLog, Monitor
from ifc.monitor.monitor import Request
from ifc.policy import compile_text

pytestmark = pytest.mark.integration

REAL, OTHER = "sk-real-0123456789abcdef", "other-real-value-42"

POLICY = """
labels {
  secrecy public < internal < secret
}
files {
  "**"    internal
  ".env"  secret
}
endpoints {
  "https://api.test:{T}", "https://blind.test:{T}", "https://other.test:{T}", "https://bad.test:{T}"
      clearance internal as web, external
  "https://127.0.0.1:{T}"  clearance internal
}
deny secret -> external "secrets never leave the sandbox"
secret API_KEY from env "IFC_TEST_API_KEY" to "https://api.test:{T}"
secret OTHER_KEY from env "IFC_TEST_OTHER_KEY" to "https://other.test:{T}", "https://bad.test:{T}"
"""
HOSTS = {h: ["127.0.0.1"] for h in ("api.test", "blind.test", "other.test", "bad.test")}


class Echo(http.server.BaseHTTPRequestHandler):
    """Answers with what it got (JSON), and the Authorization header echoed in `X-Echo`."""

    protocol_version = "HTTP/1.1"
    seen: list = []

    def log_message(self, *args):
        pass

    def _reply(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        Echo.seen.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
        quiet = self.path.startswith("/quiet")  # echoes nothing (an echo of an encoded key would taint the run)
        out = b"{}" if quiet else json.dumps(Echo.seen[-1]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Echo", "" if quiet else self.headers.get("Authorization", ""))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _reply


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    upstream_ca, cert, key = make_upstream_ca(root, ["api.test", "blind.test", "other.test"])  # not bad.test
    server = start_server(Echo, server_context(cert, key))
    t = server.server_address[1]
    policy = compile_text(POLICY.replace("{T}", str(t))).policy
    log = EventLog(root / "events.db")
    monitor = Monitor(policy, log=log)
    vault = Vault.from_policy(policy, values={"API_KEY": REAL, "OTHER_KEY": OTHER})
    egress = Egress(monitor, resolver=static_resolver(HOSTS), vault=vault)
    tls = Termination.for_policy(policy, str(upstream_ca))
    bg = BackgroundLoop()
    proxy = HttpProxy(egress, Limits(head_timeout=2.0), tls=tls)
    _, port = bg.run(proxy.start())
    run = root / "run"
    write_sandbox_files(run, vault, tls.ca, f"http://127.0.0.1:{port}")
    yield dict(t=t, port=port, proxy=f"http://127.0.0.1:{port}", run=run, ca=run / "ca.pem", upstream_ca=upstream_ca,
               sentinel=vault.sandbox_env()["API_KEY"], other=vault.sandbox_env()["OTHER_KEY"], log=log,
               monitor=monitor)
    bg.run(proxy.close())
    bg.stop()
    server.shutdown()


def curl(world, *args: str, cacert: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "-i", "--max-time", "10", "-x", world["proxy"],
                           "--cacert", str(cacert or world["ca"]), *args],
                          capture_output=True, text=True, timeout=20, env={"PATH": os.environ["PATH"]})


def status(out: subprocess.CompletedProcess) -> int:
    """The status of the last response curl printed (after the proxy's `200 Connection established`)."""
    return int([line for line in out.stdout.splitlines() if line.startswith("HTTP/")][-1].split()[1])


def denials(world, rule: str) -> list:
    world["log"].flush()
    return [e for e in world["log"].events("deny") if e.rule == rule]


def tunnel(world, host: str, context: ssl.SSLContext | None = None) -> http.client.HTTPSConnection:
    conn = http.client.HTTPSConnection("127.0.0.1", world["port"], timeout=10,
                                       context=context or ssl.create_default_context(cafile=str(world["ca"])))
    conn.set_tunnel(host, world["t"])
    return conn


# ------------------------------------------------------------------------------------------ the run files

def test_the_run_dir_holds_the_ca_certificate_and_the_sentinels(world):
    pem = world["ca"].read_bytes()
    assert pem.startswith(b"-----BEGIN CERTIFICATE-----") and b"PRIVATE" not in pem
    env = dict(line.split("=", 1) for line in (world["run"] / "sandbox.env").read_text().splitlines())
    assert env["API_KEY"] == world["sentinel"] and env["HTTPS_PROXY"] == world["proxy"]
    assert REAL not in (world["run"] / "sandbox.env").read_text()


# ------------------------------------------------------------------------------------------ swap and scrub

def test_curl_header_sentinel_is_swapped_and_the_echo_scrubbed(world):
    Echo.seen.clear()
    out = curl(world, "-H", f"Authorization: Bearer {world['sentinel']}", f"https://api.test:{world['t']}/v1")
    assert out.returncode == 0, out.stderr
    assert status(out) == 200
    assert Echo.seen[-1]["headers"]["Authorization"] == f"Bearer {REAL}", "the real server got the real value"
    assert Echo.seen[-1]["headers"]["Host"] == f"api.test:{world['t']}"
    assert REAL not in out.stdout and f"X-Echo: Bearer {'*' * len(REAL)}" in out.stdout


def test_a_sentinel_inside_basic_credentials_is_swapped(world):
    """git over HTTPS sends `Authorization: Basic base64(user:TOKEN)`: the sentinel is swapped inside it."""
    Echo.seen.clear()
    out = curl(world, "-u", f"x-access-token:{world['sentinel']}", f"https://api.test:{world['t']}/quiet")
    assert out.returncode == 0 and status(out) == 200, out.stdout + out.stderr
    expected = "Basic " + base64.b64encode(f"x-access-token:{REAL}".encode()).decode()
    assert Echo.seen[-1]["headers"]["Authorization"] == expected, "the real server got the real value"


def test_curl_body_sentinel_is_swapped(world):
    Echo.seen.clear()
    body = json.dumps({"key": world["sentinel"], "q": "x"})
    out = curl(world, "-H", "Content-Type: application/json", "-d", body, f"https://api.test:{world['t']}/v1")
    assert out.returncode == 0, out.stderr
    assert json.loads(Echo.seen[-1]["body"]) == {"key": REAL, "q": "x"}
    assert REAL not in out.stdout


def test_urllib_trusting_ca_pem(world):
    Echo.seen.clear()
    ctx = ssl.create_default_context(cafile=str(world["ca"]))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": world["proxy"]}),
                                         urllib.request.HTTPSHandler(context=ctx))
    req = urllib.request.Request(f"https://api.test:{world['t']}/u", data=f"k={world['sentinel']}".encode(),
                                 headers={"X-Key": world["sentinel"]})
    with opener.open(req, timeout=10) as resp:
        text = resp.read().decode()
    assert Echo.seen[-1]["body"] == f"k={REAL}" and Echo.seen[-1]["headers"]["X-Key"] == REAL
    assert REAL not in text and "*" * len(REAL) in text


def test_http_client_keeps_the_tunnel_alive(world):
    Echo.seen.clear()
    conn = tunnel(world, "api.test")
    for i in range(3):
        conn.request("POST", f"/k{i}", body=world["sentinel"].encode())
        resp = conn.getresponse()
        assert resp.status == 200 and REAL.encode() not in resp.read()
    conn.close()
    assert [s["body"] for s in Echo.seen] == [REAL] * 3


def test_another_secrets_sentinel_in_a_terminated_tunnel_is_blocked_and_reported(world):
    Echo.seen.clear()
    out = curl(world, "-H", f"X-Key: {world['sentinel']}", f"https://other.test:{world['t']}/collect")
    assert status(out) == 403
    assert f"secret `API_KEY` is headed for https://other.test:{world['t']}" in out.stdout
    assert Echo.seen == []
    world["log"].flush()
    assert any(e.op == "send" and e.target.startswith("API_KEY@https://other.test")
               for e in world["log"].events("deny"))
    ok = curl(world, "-H", f"X-Key: {world['other']}", f"https://other.test:{world['t']}/collect")
    assert status(ok) == 200 and Echo.seen[-1]["headers"]["X-Key"] == OTHER


def test_host_inside_the_tunnel_must_be_the_connect_host(world):
    conn = tunnel(world, "api.test")
    conn.putrequest("GET", "/x", skip_host=True)
    conn.putheader("Host", "other.test")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 400 and "is not the tunnel's" in resp.read().decode()
    conn.close()


# ------------------------------------------------------------------------------------------ failures

def test_a_client_that_does_not_trust_the_ca_fails_and_the_log_says_why(world):
    before = len(denials(world, "egress: tls"))
    out = curl(world, f"https://api.test:{world['t']}/v1", cacert=world["upstream_ca"])
    assert out.returncode != 0 and "certificate" in out.stderr.lower()
    time.sleep(0.2)
    new = denials(world, "egress: tls")[before:]
    assert new and "does not trust the run's CA" in new[-1].reason and "ca.pem" in new[-1].reason
    assert "\n" not in new[-1].reason


def test_an_upstream_whose_certificate_does_not_verify_is_refused(world):
    Echo.seen.clear()
    out = curl(world, f"https://bad.test:{world['t']}/v1")
    assert status(out) == 502 and "did not verify" in out.stdout
    assert Echo.seen == []
    assert any("did not verify" in e.reason and "bad.test" in e.target for e in denials(world, "egress: tls"))


def test_handshake_garbage_after_the_client_hello_is_refused(world):
    before = len(denials(world, "egress: tls"))
    hello = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(*hello, server_hostname="api.test")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    with socket.create_connection(("127.0.0.1", world["port"]), timeout=5) as s:
        s.sendall(f"CONNECT api.test:{world['t']} HTTP/1.1\r\nHost: api.test:{world['t']}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.sendall(hello[1].read() + b"\x16\x03\x03\x00\x05garbage")
        while s.recv(4096):
            pass
    time.sleep(0.2)
    assert "TLS handshake with the client failed" in denials(world, "egress: tls")[before:][-1].reason


def test_sni_must_still_match_the_connect_host(world):
    with socket.create_connection(("127.0.0.1", world["port"]), timeout=5) as s:
        s.sendall(f"CONNECT api.test:{world['t']} HTTP/1.1\r\nHost: api.test:{world['t']}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context(cafile=str(world["ca"]))
        ctx.check_hostname = False
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            ctx.wrap_socket(s, server_hostname="other.test").do_handshake()
    assert any("names `other.test`, not the CONNECT host `api.test`" in e.reason
               for e in denials(world, "egress: sni"))


# ------------------------------------------------------------------------------------------ blind tunnels

def test_an_unbound_host_gets_a_blind_tunnel(world):
    Echo.seen.clear()
    conn = tunnel(world, "blind.test", ssl.create_default_context(cafile=str(world["upstream_ca"])))
    conn.request("GET", "/blind", headers={"X-Key": world["sentinel"]})
    resp = conn.getresponse()
    assert resp.status == 200
    issuer = dict(x[0] for x in conn.sock.getpeercert()["issuer"])
    assert issuer["commonName"] == "upstream test CA", "the client sees the server's own certificate"
    resp.read()
    conn.close()
    assert Echo.seen[-1]["headers"]["X-Key"] == world["sentinel"], "not swapped: only the sentinel left"
    out = curl(world, f"https://blind.test:{world['t']}/x")  # trusting only the run CA: refused
    assert out.returncode != 0


# ------------------------------------------------------------------------------------------ taint

def test_a_terminated_tunnel_opened_clean_is_cut_when_the_taint_rises(world):  # last: it taints the session
    conn = tunnel(world, "api.test")
    conn.request("GET", "/before")
    assert conn.getresponse().read() and True
    world["monitor"].decide(Request("read", ".env"))
    # the tunnel was decided while the run was clean: its decision does not outlive the taint
    with pytest.raises((ConnectionError, ssl.SSLError, http.client.HTTPException, OSError)):
        conn.request("POST", "/after", body=b"KEY=...")
        conn.getresponse().read()
    conn.close()
    (cut,) = [e for e in world["log"].events("deny") if "open stream cut" in e.reason]
    assert f"tunnel to api.test:{world['t']}" in cut.reason and "read .env" in cut.reason
    assert cut.path and cut.path[0][0] == "file:.env"
    out = curl(world, "-d", "KEY=...", f"https://api.test:{world['t']}/after")  # a new tunnel: refused
    assert status(out) == 403 and "`secret` data may not go to" in out.stdout


# ------------------------------------------------------------------------------------------ the CA itself

def _verify(ca: RunCA, host: str) -> bool:
    cert, _key = ca.leaf(host)
    try:
        subject: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    verifier = PolicyBuilder().store(Store([ca.cert])).build_server_verifier(subject)
    try:
        verifier.verify(cert, [])
        return True
    except VerificationError:
        return False


BOUND = [EndpointPattern.parse("https://api.test"), EndpointPattern.parse("https://*.x.test")]
CONSTRAINED = RunCA(BOUND)
_label = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)


@settings(max_examples=40, deadline=None)
@given(st.lists(_label, min_size=1, max_size=3), st.sampled_from(["api.test", "x.test", "test", "x.example"]))
def test_leaves_verify_only_inside_the_name_constraints(labels, suffix):
    host = ".".join([*labels, suffix])
    # a DNS name constraint covers the name and its subdomains (RFC 5280), so `api.test` admits `a.api.test`
    inside = any(host == zone or host.endswith("." + zone) for zone in ("api.test", "x.test"))
    assert _verify(CONSTRAINED, host) == inside  # labels `x` + suffix `test` make `x.test` itself: inside
    assert _verify(CONSTRAINED, "api.test") and _verify(CONSTRAINED, "x.test")


def test_ca_shape_and_openssl_agrees(tmp_path):
    ca = RunCA(BOUND)
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc <= datetime.timedelta(days=8)
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    for host, ok in (("api.test", True), ("a.x.test", True), ("evil.test", False)):
        (tmp_path / "leaf.pem").write_bytes(ca.leaf(host)[0].public_bytes(serialization.Encoding.PEM))
        out = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
                             capture_output=True, text=True)
        assert (out.returncode == 0) == ok, out.stdout + out.stderr
    assert not _verify(RunCA([]), "api.test"), f"a CA bound to nothing permits only `{NOTHING}`"
    assert not _verify(ca, "10.0.0.5"), "no IP address unless one is bound"
    by_ip = RunCA([EndpointPattern.parse("https://10.0.0.5")])
    assert _verify(by_ip, "10.0.0.5") and not _verify(by_ip, "10.0.0.6") and not _verify(by_ip, "api.test")
    assert _verify(RunCA([EndpointPattern.parse("*")]), "anything.example"), "`*` cannot be constrained"


def test_ifc_proxy_writes_ca_pem_and_refuses_a_bad_upstream_ca(tmp_path):
    policy = tmp_path / "p.flow"
    policy.write_text(POLICY.replace("{T}", "4443"))
    env = {**os.environ, "IFC_TEST_API_KEY": REAL, "IFC_TEST_OTHER_KEY": OTHER}
    base = [sys.executable, "-m", "ifc", "proxy", "--policy", str(policy), "--listen", "127.0.0.1:0", "--agent", "none"]
    bad = subprocess.run([*base, "--upstream-ca", str(policy), "--run-dir", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=30, env=env)
    assert bad.returncode == 2 and "--upstream-ca" in bad.stderr and "Traceback" not in bad.stderr
    run = tmp_path / "run"
    proc = subprocess.Popen([*base, "--run-dir", str(run)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr.readline().startswith("ifc proxy: http on ")
        assert (run / "ca.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        lines = (run / "sandbox.env").read_text().splitlines()
        assert lines[0].startswith("API_KEY=ifc-sentinel-") and lines[1].startswith("OTHER_KEY=ifc-sentinel-")
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


@pytest.mark.skipif(os.geteuid() != 0 or check_fuse_available() is not None, reason="needs root and FUSE")
def test_ifc_mount_egress_writes_the_same_files(tmp_path):
    policy = tmp_path / "p.flow"
    policy.write_text(POLICY.replace("{T}", "4443"))
    (tmp_path / "src").mkdir()
    (tmp_path / "mnt").mkdir()
    run = tmp_path / "run"
    env = {**os.environ, "IFC_TEST_API_KEY": REAL, "IFC_TEST_OTHER_KEY": OTHER}
    proc = subprocess.Popen([sys.executable, "-m", "ifc", "mount", "--policy", str(policy), "--agent", "none",
                             "--run-dir", str(run), "--egress", "127.0.0.1:0", str(tmp_path / "src"),
                             str(tmp_path / "mnt")], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr.readline().startswith("ifc mount: egress http on ")
        assert (run / "ca.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        lines = (run / "sandbox.env").read_text().splitlines()
        assert [line.split("=")[0] for line in lines] == ["API_KEY", "OTHER_KEY"], "the sentinels only"
        assert all(line.split("=")[1].startswith("ifc-sentinel-") for line in lines)
        deadline = time.monotonic() + 20
        while not os.path.ismount(tmp_path / "mnt") and time.monotonic() < deadline:  # then SIGTERM unmounts
            time.sleep(0.05)
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
