"""The HTTP proxy with real clients (curl, urllib, http.client, pip, git) against servers on 127.0.0.1 that the
test policy makes "external"; names are resolved by the proxy from a static table."""

from __future__ import annotations

import base64
import http.client
import http.server
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
from tls_support import start_server
from upstreams import make_wheel

import caps
from ifc.enforce.egress import BackgroundLoop, Egress, static_resolver
from ifc.enforce.http_proxy import HttpProxy, Limits, ProxyError, parse_request, sni_from_client_hello
from ifc.monitor import EventLog, Monitor
from ifc.monitor.monitor import Request
from ifc.policy import compile_text

pytestmark = pytest.mark.integration

POLICY = """
labels {
  secrecy public < internal < secret
  integrity untrusted < trusted
}
files {
  "**"    internal
  ".env"  secret
}
endpoints {
  "http://127.0.0.1:{A}"          clearance internal returns untrusted as web, external
  "http://pypi.test:{A}", "http://git.test:{A}", "http://flip.test:{A}"  clearance internal as packages, external
  "http://sneaky.test:{B}", "http://meta.test:80"  clearance internal as web, external
  "https://tls.test:{T}"          clearance internal as web, external
  "tcp://127.0.0.1:{T}"
}
deny secret -> external "secrets never leave the sandbox"
"""

HOSTS = {"pypi.test": ["127.0.0.1"], "git.test": ["127.0.0.1"], "sneaky.test": ["127.0.0.1"],
         "meta.test": ["169.254.169.254"], "tls.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}


class Echo(http.server.SimpleHTTPRequestHandler):
    """/echo answers with what it got (JSON); other paths are files under the server's directory."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _echo(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        out = json.dumps({"method": self.command, "path": self.path, "headers": dict(self.headers.items()),
                          "body": body.decode("latin-1")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        if self.path.startswith("/echo"):
            return self._echo()
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return None
        return super().do_GET()

    def do_POST(self):
        return self._echo()


def serve(directory: Path, tls: ssl.SSLContext | None = None):
    return start_server(lambda *a, **k: Echo(*a, directory=str(directory), **k), tls)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("egress")
    files = root / "www"
    (files / "simple" / "tinypkg").mkdir(parents=True)
    wheel = make_wheel(files)
    (files / "simple" / "tinypkg" / "index.html").write_text(f'<a href="/{wheel.name}">{wheel.name}</a>\n')
    (files / "big.bin").write_bytes(os.urandom(3 << 20))
    # a bare repository served over git's "dumb" http protocol
    work = root / "work"
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    (work / "hello.txt").write_text("hello from git\n")
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(work), "add", "."], check=True, env=git_env)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "one"], check=True, env=git_env)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(files / "repo.git")], check=True)
    subprocess.run(["git", "-C", str(files / "repo.git"), "update-server-info"], check=True)
    # a TLS server for tls.test with a self-signed certificate
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=tls.test",
                    "-addext", "subjectAltName=DNS:tls.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    a, b, t = serve(files), serve(files), serve(files, tls)
    ports = {"A": a.server_address[1], "B": b.server_address[1], "T": t.server_address[1]}
    text = POLICY
    for k, v in ports.items():
        text = text.replace("{" + k + "}", str(v))
    policy = compile_text(text).policy
    host = caps.HostKey.generate()
    log = EventLog(root / "events.db")
    monitor = Monitor(policy, verifier=caps.Verifier([host.public], audience="run"), log=log)
    calls: list[str] = []
    flips = iter([["127.0.0.1"], ["169.254.169.254"]])

    async def resolver(name: str) -> list[str]:
        calls.append(name)
        if name == "flip.test":
            return next(flips)
        return await static_resolver(HOSTS)(name)

    egress = Egress(monitor, resolver=resolver)
    bg = BackgroundLoop()
    proxy = HttpProxy(egress, Limits(head_timeout=1.0, idle_timeout=5.0))
    _, port = bg.run(proxy.start())
    yield dict(root=root, ports=ports, monitor=monitor, log=log, host=host, proxy=f"127.0.0.1:{port}",
               pport=port, cert=cert, calls=calls)
    bg.run(proxy.close())
    bg.stop()
    for s in (a, b, t):
        s.shutdown()


def events(world, rule_prefix: str) -> list:
    world["log"].flush()
    return [e for e in world["log"].events("deny") if (e.rule or "").startswith(rule_prefix)]


def raw(world, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", world["pport"]), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                more = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not more:
                break
            out += more
        return out


def token(world, rights: list[str]) -> str:
    return caps.mint(world["host"], rights=rights, audience="run", ttl=600)


def curl(world, *args: str, tok: str | None = None) -> subprocess.CompletedProcess:
    proxy = f"http://ifc:{tok}@{world['proxy']}" if tok else f"http://{world['proxy']}"
    return subprocess.run(["curl", "-sS", "--max-time", "20", "-x", proxy, *args],
                          capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]})


# ------------------------------------------------------------------------------------------ parsing

def test_parse_absolute_uri_and_token():
    auth = base64.b64encode(b"ifc:abc.def").decode()
    req = parse_request(f"GET http://Pypi.Test:8080/simple/?q=1 HTTP/1.1\r\nHost: x\r\n"
                        f"Proxy-Authorization: Basic {auth}".encode())
    assert (req.method, req.scheme, req.host, req.port, req.path, req.token) == \
        ("GET", "http", "pypi.test", 8080, "/simple/?q=1", "abc.def")
    req = parse_request(b"CONNECT [::1]:443 HTTP/1.1\r\nHost: x")
    assert (req.host, req.port, req.token) == ("::1", 443, None)


@pytest.mark.parametrize("head, status", [
    (b"GET /relative HTTP/1.1", 400),
    (b"GET https://x.test/ HTTP/1.1", 400),
    (b"CONNECT x.test HTTP/1.1", 400),
    (b"GET http://x.test/ HTTP/2", 400),
    (b"GET http://x.test/ HTTP/1.1\r\n folded", 400),
    (b"GET http://x.test/ HTTP/1.1\r\nno colon", 400),
    (b"GET http://us@x.test/ HTTP/1.1", 400),
    (b"GET http://x.test:99999/ HTTP/1.1", 400),
    (b"\x16\x03\x01 garbage", 400),
    (b"GET http://x.test/ HTTP/1.1" + b"\r\nA: b" * 101, 431),
    (b"GET http://x.test/ HTTP/1.1\r\nA: " + b"b" * 9000, 431),
])
def test_parse_refuses_garbage(head, status):
    with pytest.raises(ProxyError) as info:
        parse_request(head)
    assert info.value.status == status and "\n" not in info.value.reason


def test_sni_from_a_real_client_hello():
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="Tls.Test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert sni_from_client_hello(hello) == ("tls.test", 0)
    assert sni_from_client_hello(hello[:20])[1] > 0
    with pytest.raises(ValueError):
        sni_from_client_hello(b"GET / HTTP/1.1\r\n")


# ------------------------------------------------------------------------------------------ real clients

def test_curl_through_the_proxy(world):
    a = world["ports"]["A"]
    out = curl(world, f"http://pypi.test:{a}/echo?x=1", "-H", "X-Test: yes")
    assert out.returncode == 0, out.stderr
    echoed = json.loads(out.stdout)
    assert echoed["path"] == "/echo?x=1" and echoed["headers"]["X-Test"] == "yes"
    assert "Proxy-Authorization" not in echoed["headers"] and echoed["headers"]["Host"] == f"pypi.test:{a}"
    out = curl(world, "-d", "payload=1", f"http://127.0.0.1:{a}/echo")
    assert json.loads(out.stdout)["body"] == "payload=1"
    out = curl(world, f"http://pypi.test:{a}/chunked")
    assert out.stdout == "hello chunked world"


def test_curl_keeps_the_connection_alive(world):
    a = world["ports"]["A"]
    out = curl(world, "-v", f"http://pypi.test:{a}/echo", f"http://pypi.test:{a}/chunked", f"http://pypi.test:{a}/echo")
    assert out.returncode == 0, out.stderr
    assert "Re-using existing connection" in out.stderr or "Reusing existing connection" in out.stderr


def test_curl_https_through_connect(world):
    t = world["ports"]["T"]
    out = curl(world, "--cacert", str(world["cert"]), f"https://tls.test:{t}/echo")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["path"] == "/echo"


def test_curl_denied_endpoint_gets_403_with_reason(world):
    out = curl(world, "-i", "http://evil.example/steal")
    assert " 403 " in out.stdout.splitlines()[0]
    assert "no endpoint rule names GET http://evil.example:80/steal" in out.stdout  # decided as a request
    assert "X-Ifc-Denied:" in out.stdout and "X-Ifc-Event:" in out.stdout


def test_urllib_with_http_proxy_env_and_a_token(world):
    a = world["ports"]["A"]
    tok = token(world, [f"connect http://127.0.0.1:{a}"])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://ifc:{tok}@{world['proxy']}"}))
    with opener.open(f"http://127.0.0.1:{a}/echo", timeout=10) as resp:
        assert json.loads(resp.read())["method"] == "GET"
    with pytest.raises(urllib.error.HTTPError) as info:
        opener.open(f"http://pypi.test:{a}/echo", timeout=10)
    assert info.value.code == 403 and "token" in info.value.read().decode()


def test_urllib_https_tunnel(world):
    t = world["ports"]["T"]
    ctx = ssl.create_default_context(cafile=str(world["cert"]))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": f"http://{world['proxy']}"}),
                                         urllib.request.HTTPSHandler(context=ctx))
    with opener.open(f"https://tls.test:{t}/echo", timeout=10) as resp:
        assert json.loads(resp.read())["path"] == "/echo"


def test_http_client_absolute_uri_and_tunnel(world):
    a, t = world["ports"]["A"], world["ports"]["T"]
    conn = http.client.HTTPConnection("127.0.0.1", world["pport"], timeout=10)
    for _ in range(3):  # one connection, several requests
        conn.request("POST", f"http://pypi.test:{a}/echo", body=b"x" * 1000)
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["body"] == "x" * 1000
    conn.close()
    ctx = ssl.create_default_context(cafile=str(world["cert"]))
    conn = http.client.HTTPSConnection("127.0.0.1", world["pport"], timeout=10, context=ctx)
    conn.set_tunnel("tls.test", t)
    conn.request("GET", "/echo")
    assert conn.getresponse().status == 200
    conn.close()


def test_big_download_is_intact(world):
    a = world["ports"]["A"]
    out = subprocess.run(["curl", "-sS", "-x", f"http://{world['proxy']}", f"http://pypi.test:{a}/big.bin"],
                         capture_output=True, timeout=30)
    assert out.stdout == (world["root"] / "www" / "big.bin").read_bytes()


def test_pip_installs_from_a_local_index(world, tmp_path):
    a = world["ports"]["A"]
    tok = token(world, [f"connect http://pypi.test:{a}"])
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull}
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--no-deps",
                          "--disable-pip-version-check", "--index-url", f"http://pypi.test:{a}/simple/",
                          "--trusted-host", "pypi.test", "--proxy", f"http://ifc:{tok}@{world['proxy']}",
                          "--target", str(tmp_path / "t"), "tinypkg"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "t" / "tinypkg" / "__init__.py").read_text() == "VALUE = 42\n"


def test_git_clone_over_http(world, tmp_path):
    a = world["ports"]["A"]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"}
    out = subprocess.run(["git", "-c", f"http.proxy=http://{world['proxy']}", "clone", "-q",
                          f"http://git.test:{a}/repo.git", str(tmp_path / "clone")],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "clone" / "hello.txt").read_text() == "hello from git\n"


# ------------------------------------------------------------------------------------------ hardening

def test_a_name_resolving_to_loopback_is_refused(world):
    out = curl(world, "-i", f"http://sneaky.test:{world['ports']['B']}/echo")
    assert " 403 " in out.stdout and "resolves to loopback address 127.0.0.1" in out.stdout
    out = curl(world, "-i", "http://meta.test/latest/meta-data/")
    assert " 403 " in out.stdout and "cloud-metadata address 169.254.169.254" in out.stdout
    assert len(events(world, "containment: address")) >= 2


def test_ip_literals_only_by_explicit_rule(world):
    out = curl(world, "-i", f"http://127.0.0.2:{world['ports']['A']}/echo")
    assert " 403 " in out.stdout and "IP literal" in out.stdout
    out = curl(world, "-i", "http://10.0.0.1/")
    assert " 403 " in out.stdout and "IP literal" in out.stdout
    assert events(world, "containment: ip literal")


def test_no_rebinding_between_check_and_connect(world):
    a = world["ports"]["A"]
    world["calls"].clear()
    out = curl(world, f"http://flip.test:{a}/echo")
    assert json.loads(out.stdout)["path"] == "/echo"
    assert world["calls"] == ["flip.test"], "resolved once; the connection used the checked address"
    out = curl(world, "-i", f"http://flip.test:{a}/echo")  # the name now points at the metadata service
    assert " 403 " in out.stdout and "cloud-metadata" in out.stdout


def test_sni_must_match_the_connect_host(world):
    t = world["ports"]["T"]
    with socket.create_connection(("127.0.0.1", world["pport"]), timeout=5) as s:
        s.sendall(f"CONNECT tls.test:{t} HTTP/1.1\r\nHost: tls.test:{t}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        ctx = ssl.create_default_context(cafile=str(world["cert"]))
        ctx.check_hostname = False
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            ctx.wrap_socket(s, server_hostname="other.test").do_handshake()
    [event] = [e for e in events(world, "egress: sni") if "other.test" in e.reason]
    assert "names `other.test`, not the CONNECT host `tls.test`" in event.reason
    # CONNECT to the wrong name is refused before any tunnel
    assert b" 403 " in raw(world, f"CONNECT other.test:{t} HTTP/1.1\r\nHost: other.test:{t}\r\n\r\n".encode())


def test_a_tunnel_without_tls_is_refused(world):
    t = world["ports"]["T"]
    out = raw(world, f"CONNECT tls.test:{t} HTTP/1.1\r\nHost: tls.test:{t}\r\n\r\nGET / HTTP/1.1\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 200") and b"HTTP/1.0" not in out.split(b"\r\n\r\n", 1)[1]
    assert any("not a TLS ClientHello" in e.reason for e in events(world, "egress: tls"))


@pytest.mark.parametrize("head, status", [
    (b"GET http://pypi.test/ HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET http://pypi.test/ HTTP/1.1\r\n" + b"A: b\r\n" * 200 + b"\r\n", 431),
    (b"GET http://pypi.test/ HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"BREW coffee\r\n\r\n", 400),
    (b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n", 400),
])
def test_oversized_and_garbage_heads(world, head, status):
    out = raw(world, head)
    first = out.partition(b"\r\n")[0]
    assert first.startswith(f"HTTP/1.1 {status}".encode()), out[:200]
    assert out.split(b"\r\n\r\n", 1)[1].count(b"\n") == 1  # a one-line reason


def test_slow_clients_are_cut_off(world):
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", world["pport"]), timeout=10) as s:
        s.sendall(b"GET http://pypi.test/ HTTP/1.1\r\n")
        for _ in range(20):  # one header byte at a time, slower than the head timeout allows
            try:
                s.sendall(b"X")
            except OSError:
                break
            time.sleep(0.1)
        out = s.recv(4096)
    assert out.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 5


def test_taint_from_env_blocks_exfiltration(world):  # last: it taints the module's session
    a = world["ports"]["A"]
    monitor = world["monitor"]
    tok = token(world, [f"connect http://pypi.test:{a}"])
    ok = curl(world, f"http://pypi.test:{a}/echo", tok=tok)
    assert ok.returncode == 0 and json.loads(ok.stdout)["path"] == "/echo"
    monitor.decide(Request("read", ".env", subject="reader"))  # another subject: this one stays clean
    assert curl(world, f"http://pypi.test:{a}/echo", tok=tok).returncode == 0
    monitor.decide(Request("read", ".env"))  # the session reads .env; a new token subject inherits its taint
    fresh = token(world, [f"connect http://pypi.test:{a}"])
    out = curl(world, "-i", "-d", "KEY=...", f"http://pypi.test:{a}/echo", tok=fresh)
    assert " 403 " in out.stdout and "`secret` data may not go to" in out.stdout
    out = curl(world, "-i", f"http://127.0.0.1:{a}/echo")
    assert " 403 " in out.stdout



def test_ifc_proxy_command(world, tmp_path):
    a = world["ports"]["A"]
    policy = tmp_path / "p.flow"
    policy.write_text(POLICY.replace("{A}", str(a)).replace("{B}", "1").replace("{T}", "2"))
    (tmp_path / "hosts").write_text("pypi.test 127.0.0.1\n")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ifc", "proxy", "--policy", str(policy), "--listen", "127.0.0.1:0",
                             "--dns", "127.0.0.1:0", "--agent", "none", "--hosts", str(tmp_path / "hosts"),
                             "--run-dir", str(run_dir)], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert line.startswith("ifc proxy: http on 127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        assert proc.stderr.readline().startswith("ifc proxy: dns on ")
        proxy = f"http://127.0.0.1:{port}"
        assert f"HTTPS_PROXY={proxy}" in (run_dir / "sandbox.env").read_text()
        ok = subprocess.run(["curl", "-sS", "-x", proxy, f"http://pypi.test:{a}/echo"], capture_output=True,
                            text=True, timeout=20)
        assert json.loads(ok.stdout)["path"] == "/echo"
        denied = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x", proxy,
                                 "http://evil.example/"], capture_output=True, text=True, timeout=20)
        assert denied.stdout == "403"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    log = EventLog(run_dir / "events.db")
    assert any(e.target.startswith("GET http://evil.example:80/") for e in log.events("deny"))  # the request
    log.close()


def test_ifc_proxy_follows_the_revocation_list(world, tmp_path):
    """`ifc proxy --revocations`: a token revoked with `ifc caps revoke` on that list is refused at its next
    request (the proxy's monitor answered it from its cache until then)."""
    a = world["ports"]["A"]
    policy = tmp_path / "p.flow"
    policy.write_text(POLICY.replace("{A}", str(a)).replace("{B}", "1").replace("{T}", "2"))
    (tmp_path / "hosts").write_text("pypi.test 127.0.0.1\n")
    host = caps.HostKey.generate()
    caps.write_key(tmp_path / "host.key", host)
    tok = caps.mint(host, rights=[f"connect http://pypi.test:{a}"], audience="run", ttl=600)
    revoked = tmp_path / "revoked.json"
    proc = subprocess.Popen([sys.executable, "-m", "ifc", "proxy", "--policy", str(policy), "--listen", "127.0.0.1:0",
                             "--agent", "none", "--hosts", str(tmp_path / "hosts"), "--key",
                             str(tmp_path / "host.key.pub"), "--revocations", str(revoked), "--run-dir",
                             str(tmp_path / "run")], stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stderr.readline().rsplit(":", 1)[1])

        def status() -> str:
            return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x",
                                   f"http://ifc:{tok}@127.0.0.1:{port}", f"http://pypi.test:{a}/echo"],
                                  capture_output=True, text=True, timeout=30).stdout

        assert status() == "200" and status() == "200"
        caps.revoke_in_file(revoked, [caps.revocation_ids(tok)[-1]])
        deadline = time.monotonic() + 5
        while status() != "403":
            assert time.monotonic() < deadline, "the revoked token still connects"
            time.sleep(0.05)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    log = EventLog(tmp_path / "run" / "events.db")
    assert any("revoked" in e.reason for e in log.events("deny"))
    log.close()
