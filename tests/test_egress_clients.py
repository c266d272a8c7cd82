"""Real clients through the egress hook, against origins on 127.0.0.1 (tests/upstreams.py): curl, pip, git smart
HTTP, urllib, http.client, requests, httpx and node, over plain HTTP and HTTPS (blind and terminated tunnels).

Each test says what a correct proxy hands the client: the exact status, the headers that matter (Location,
Content-Type, the framing), the exact body bytes, and that the client finished well within its own timeout. The
last is a correctness check, not a speed threshold: a response whose framing the hook lost never ends, and the
client only stops when its timeout fires. Only the hook's public construction is used, so the same tests judge
any implementation of it."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tls_support import make_upstream_ca
from upstreams import CANNED, CHUNKS, ETAG, LEGACY_BODY, make_wheel, serve_origin

from ifc.enforce.egress import BackgroundLoop, Egress, static_resolver
from ifc.enforce.http_proxy import HttpProxy, Limits
from ifc.enforce.secrets import Vault
from ifc.enforce.tls import Termination
from ifc.monitor import EventLog, Monitor
from ifc.policy import compile_text

pytestmark = pytest.mark.integration

TIMEOUT = 5.0  # one HTTP exchange with a local origin; a client still waiting after this has hung
TOOL_TIMEOUT = 15.0  # pip and git: an interpreter or several processes to start, then a few exchanges

POLICY = """
labels {
  secrecy public < internal < secret
}
files {
  "**"    internal
  ".env"  secret
}
endpoints {
  "http://127.0.0.1:{A}", "http://web.test:{A}", "http://pypi.test:{A}", "http://git.test:{A}"
      clearance internal as web, external
  "https://127.0.0.1:{T}", "https://blind.test:{T}", "https://bound.test:{T}"  clearance internal as web, external
  # a forge the project may reach only at its own repository, and there only by git's smart protocol
  "http://forge.test:{A}/git/push.git/**" methods GET, POST  clearance internal as web, external
}
deny secret -> external "secrets never leave the sandbox"
secret API_KEY from env "IFC_TEST_API_KEY" to "https://bound.test:{T}"
"""
HOSTS = {h: ["127.0.0.1"] for h in ("web.test", "pypi.test", "git.test", "blind.test", "bound.test", "forge.test")}
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}


def _bare_repo(root: Path, name: str) -> None:
    work = root / f"{name}-work"
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True, env=env)
    (work / "hello.txt").write_text("hello from git\n")
    subprocess.run(["git", "-C", str(work), "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", str(work), "commit", "-qm", "one"], check=True, env=env)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / "git" / f"{name}.git")], check=True, env=env)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("clients")
    files = root / "www"
    (files / "git").mkdir(parents=True)
    make_wheel(files)
    for name in ("repo", "push"):
        _bare_repo(files, name)
    upstream_ca, cert, key = make_upstream_ca(root, ["blind.test", "bound.test"])
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    plain, tls_origin = serve_origin(files), serve_origin(files, server_tls)
    a, t = plain.server_address[1], tls_origin.server_address[1]
    policy = compile_text(POLICY.replace("{A}", str(a)).replace("{T}", str(t))).policy
    log = EventLog(root / "events.db")
    monitor = Monitor(policy, log=log)
    vault = Vault.from_policy(policy, values={"API_KEY": "sk-real-0123456789abcdef"})
    egress = Egress(monitor, resolver=static_resolver(HOSTS), vault=vault)
    tls = Termination.for_policy(policy, str(upstream_ca))
    run_ca = root / "run-ca.pem"
    run_ca.write_bytes(tls.ca.pem)
    bg = BackgroundLoop()
    proxy = HttpProxy(egress, Limits(head_timeout=2.0), tls=tls)
    _, port = bg.run(proxy.start())
    yield dict(root=root, files=files, a=a, t=t, web=f"http://web.test:{a}", port=port,
               proxy=f"http://127.0.0.1:{port}", upstream_ca=upstream_ca, run_ca=run_ca,
               seen=plain.RequestHandlerClass.seen)
    bg.run(proxy.close())
    bg.stop()
    log.close()
    for server in (plain, tls_origin):
        server.shutdown()


@dataclass
class Got:
    """What a client got: the final response's status, headers (lower-case names) and body, and how long it took;
    `statuses` lists every status line the client saw (interim 1xx, redirects, the tunnel's 200)."""

    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float
    statuses: list[int] = field(default_factory=list)


def check(got: Got, path: str, timeout: float = TIMEOUT, framing: bool = True) -> None:
    """`got` is exactly the canned response at `path`, in time; `framing`: with the origin's Content-Length."""
    want = CANNED[path]
    assert got.seconds < timeout, f"the client waited {got.seconds:.1f}s of its {timeout}s: the response never ended"
    assert (got.status, got.body) == (want.status, want.body)
    for name, value in want.headers:
        assert got.headers.get(name.lower()) == value, (name, got.headers)
    if framing and want.status != 204:
        assert got.headers.get("content-length") == str(len(want.body)), got.headers
    if want.status == 204:
        assert "content-length" not in got.headers and "transfer-encoding" not in got.headers, got.headers


def _curl_headers(dump: str) -> tuple[list[int], dict[str, str]]:
    statuses, headers = [], {}
    for line in dump.splitlines():
        if line.startswith("HTTP/"):
            statuses.append(int(line.split()[1]))
            headers = {}
        elif ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return statuses, headers


def curl(world, *args: str, cacert: Path | None = None, timeout: float = TIMEOUT) -> Got:
    """Run curl through the hook with --max-time `timeout`; the last argument is the URL."""
    out, dump = world["root"] / "curl.body", world["root"] / "curl.head"
    extra = ["--cacert", str(cacert)] if cacert else []
    start = time.monotonic()
    done = subprocess.run(["curl", "-sS", "--max-time", str(timeout), "-x", world["proxy"], *extra,
                           "-D", str(dump), "-o", str(out), *args],
                          capture_output=True, text=True, timeout=timeout + 10, env={"PATH": os.environ["PATH"]})
    seconds = time.monotonic() - start
    assert done.returncode == 0 or seconds >= timeout, done.stderr  # a refusal is a failure; a hang is timed below
    statuses, headers = _curl_headers(dump.read_text("latin-1") if dump.exists() else "")
    got = Got(statuses[-1] if statuses else 0, headers, out.read_bytes() if out.exists() else b"", seconds, statuses)
    for path in (out, dump):
        path.unlink(missing_ok=True)
    return got


# ------------------------------------------------------------------------------------------ curl, plain HTTP

@pytest.mark.parametrize("path", ["/ok", "/missing", "/boom", "/json", "/moved"])
def test_curl_gets_every_status_exactly(world, path):
    check(curl(world, world["web"] + path), path)


def test_curl_follows_a_redirect(world):
    got = curl(world, "-L", world["web"] + "/moved")
    assert got.statuses == [301, 200]
    check(got, "/ok")


def test_curl_no_content(world):
    check(curl(world, world["web"] + "/empty"), "/empty")


def test_curl_head_gets_the_length_and_no_body(world):
    got = curl(world, "-I", world["web"] + "/ok")
    assert got.seconds < TIMEOUT and got.status == 200
    assert got.headers["content-length"] == str(len(CANNED["/ok"].body))
    assert got.body.startswith(b"HTTP/1.1 200") and got.body.endswith(b"\r\n\r\n")  # -I writes the head only


def test_curl_gets_an_interim_103_then_the_response(world):
    got = curl(world, world["web"] + "/early")
    assert got.statuses == [103, 200]  # a proxy forwards 1xx it did not ask for (RFC 9110 15.2)
    check(got, "/early")


def test_repeated_response_fields_all_arrive(world):
    want = [v for k, v in CANNED["/cookies"].headers if k == "Set-Cookie"]
    conn = http.client.HTTPConnection("127.0.0.1", world["port"], timeout=TIMEOUT)
    start = time.monotonic()
    conn.request("GET", world["web"] + "/cookies")
    resp = conn.getresponse()
    assert [v for k, v in resp.getheaders() if k.lower() == "set-cookie"] == want
    assert resp.read() == CANNED["/cookies"].body and time.monotonic() - start < TIMEOUT
    conn.close()


def test_curl_conditional_get_is_answered_304(world):
    got = curl(world, world["web"] + "/etag")
    assert got.seconds < TIMEOUT and (got.status, got.body, got.headers["etag"]) == (200, b"version one\n", ETAG)
    got = curl(world, "-H", f"If-None-Match: {ETAG}", world["web"] + "/etag")
    assert got.seconds < TIMEOUT and (got.status, got.body, got.headers["etag"]) == (304, b"", ETAG)


def test_curl_chunked_response(world):
    got = curl(world, world["web"] + "/chunked")
    assert got.seconds < TIMEOUT and (got.status, got.body) == (200, b"".join(CHUNKS))
    assert got.headers["transfer-encoding"] == "chunked" and "content-length" not in got.headers


def test_curl_close_delimited_response(world):
    got = curl(world, world["web"] + "/legacy")
    assert got.seconds < TIMEOUT and (got.status, got.body) == (200, LEGACY_BODY)
    assert got.headers["content-type"] == "text/plain"


def test_curl_keeps_one_connection_for_several_urls(world, tmp_path):
    paths = ["/ok", "/missing", "/chunked", "/boom", "/ok"]
    args = [x for i, p in enumerate(paths) for x in ("-o", str(tmp_path / str(i)), world["web"] + p)]
    start = time.monotonic()
    done = subprocess.run(["curl", "-sS", "--max-time", str(TIMEOUT), "-x", world["proxy"],
                           "-w", "%{http_code} %{num_connects}\n", *args],
                          capture_output=True, text=True, timeout=TIMEOUT + 10, env={"PATH": os.environ["PATH"]})
    assert time.monotonic() - start < TIMEOUT and done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["200 1", "404 0", "200 0", "500 0", "200 0"]  # one connection for all
    bodies = [(tmp_path / str(i)).read_bytes() for i in range(len(paths))]
    assert bodies == [CANNED["/ok"].body, CANNED["/missing"].body, b"".join(CHUNKS), CANNED["/boom"].body,
                      CANNED["/ok"].body]


def test_curl_post_with_expect_100_continue(world, tmp_path):
    body = os.urandom(4096)
    (tmp_path / "body").write_bytes(body)
    # curl waits for the 100 as long as --expect100-timeout says: a hook that neither forwards Expect nor
    # answers 100 itself leaves curl waiting past its --max-time
    got = curl(world, "-H", "Expect: 100-continue", "--expect100-timeout", "60", "--data-binary",
               f"@{tmp_path / 'body'}", world["web"] + "/upload")
    assert got.seconds < TIMEOUT and got.statuses == [100, 200]
    assert got.body == f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode()


# ------------------------------------------------------------------------------------------ one connection, raw

class _Kept(io.BufferedReader):
    """One buffered reader shared by every response on a connection: http.client reads each response through
    its own file by default, and pipelined responses would be lost in the first one's buffer."""

    def close(self) -> None:  # http.client closes a response's file when its body ends
        pass


class _Responses:
    def __init__(self, sock: socket.socket):
        self.file = _Kept(socket.SocketIO(sock, "rb"))

    def makefile(self, mode: str) -> io.BufferedReader:
        return self.file


def read_response(conn: _Responses, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    resp = http.client.HTTPResponse(conn, method=method)  # type: ignore[arg-type]
    resp.begin()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def test_pipelined_requests_are_answered_in_order(world):
    web = world["web"]
    host = f"Host: web.test:{world['a']}\r\n"
    requests = [("GET", "/ok"), ("GET", "/missing"), ("HEAD", "/ok"), ("HEAD", "/missing"), ("GET", "/empty"),
                ("GET", "/json")]
    wire = "".join(f"{m} {web}{p} HTTP/1.1\r\n{host}\r\n" for m, p in requests[:-1])
    wire += f"GET {web}/json HTTP/1.1\r\n{host}Connection: close\r\n\r\n"
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", world["port"]), timeout=TIMEOUT) as s:
        s.sendall(wire.encode())  # every request in one write
        conn = _Responses(s)
        got = [read_response(conn, method) for method, _ in requests]
        assert conn.file.read() == b"", "nothing after the last response, then the close"
    assert time.monotonic() - start < TIMEOUT
    assert [(status, body) for status, _, body in got] == [
        (200, CANNED["/ok"].body), (404, CANNED["/missing"].body), (200, b""), (404, b""), (204, b""),
        (200, CANNED["/json"].body)]
    assert got[2][1]["content-length"] == str(len(CANNED["/ok"].body))  # HEAD: the length a GET would get


# ------------------------------------------------------------------------------------------ Python clients

def via_urllib(world, url: str) -> Got:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": world["proxy"]}))
    start = time.monotonic()
    try:
        with opener.open(url, timeout=TIMEOUT) as resp:
            status, headers, body = resp.status, resp.headers.items(), resp.read()
    except urllib.error.HTTPError as err:
        status, headers, body = err.code, err.headers.items(), err.read()
    return Got(status, {k.lower(): v for k, v in headers}, body, time.monotonic() - start)


def via_http_client(world, url: str) -> Got:
    conn = http.client.HTTPConnection("127.0.0.1", world["port"], timeout=TIMEOUT)
    start = time.monotonic()
    conn.request("GET", url)  # the absolute-URI form: http.client's proxy use
    resp = conn.getresponse()
    got = Got(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read(), time.monotonic() - start)
    conn.close()
    return got


def via_requests(world, url: str) -> Got:
    requests = pytest.importorskip("requests", reason="requests is not installed (pip install -e .[dev])")
    with requests.Session() as session:
        session.trust_env = False
        start = time.monotonic()
        resp = session.get(url, proxies={"http": world["proxy"]}, timeout=TIMEOUT)
        return Got(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content,
                   time.monotonic() - start)


def via_httpx(world, url: str) -> Got:
    httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install -e .[dev])")
    with httpx.Client(proxy=world["proxy"], trust_env=False, timeout=TIMEOUT, follow_redirects=True) as client:
        start = time.monotonic()
        resp = client.get(url)
        return Got(resp.status_code, dict(resp.headers.items()), resp.content, time.monotonic() - start)


CLIENTS: dict[str, tuple[Callable[..., Got], bool]] = {  # name: (fetch, follows redirects)
    "urllib": (via_urllib, True), "http.client": (via_http_client, False), "requests": (via_requests, True),
    "httpx": (via_httpx, True)}


@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("path", ["/ok", "/missing", "/boom", "/moved"])
def test_python_clients(world, client, path):
    fetch, follows = CLIENTS[client]
    got = fetch(world, world["web"] + path)
    check(got, "/ok" if path == "/moved" and follows else path)


@pytest.mark.parametrize("client", list(CLIENTS))
def test_python_clients_chunked(world, client):
    got = CLIENTS[client][0](world, world["web"] + "/chunked")
    assert got.seconds < TIMEOUT and (got.status, got.body) == (200, b"".join(CHUNKS))
    assert got.headers["transfer-encoding"] == "chunked"


def test_urllib_takes_the_proxy_from_the_environment(world, monkeypatch):
    monkeypatch.setenv("http_proxy", world["proxy"])
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    start = time.monotonic()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.build_opener().open(world["web"] + "/missing", timeout=TIMEOUT)
    got = Got(info.value.code, {k.lower(): v for k, v in info.value.headers.items()}, info.value.read(),
              time.monotonic() - start)
    check(got, "/missing")


def test_http_client_head_then_get_on_one_connection(world):
    conn = http.client.HTTPConnection("127.0.0.1", world["port"], timeout=TIMEOUT)
    start = time.monotonic()
    conn.request("HEAD", world["web"] + "/ok")
    head = conn.getresponse()
    assert (head.status, head.getheader("Content-Length"), head.read()) == (200, str(len(CANNED["/ok"].body)), b"")
    sock = conn.sock
    conn.request("GET", world["web"] + "/missing")
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (404, CANNED["/missing"].body)
    assert conn.sock is sock, "the same connection served both"
    conn.close()
    assert time.monotonic() - start < TIMEOUT


# ------------------------------------------------------------------------------------------ node

NODE_GET = """
const http = require('http');
const [port, url] = process.argv.slice(1);
const agent = new http.Agent({keepAlive: true});
const req = http.get({host: '127.0.0.1', port: Number(port), path: url, agent, timeout: Number(process.argv[3]),
                      headers: {Host: new URL(url).host}}, (res) => {
  const parts = [];
  res.on('data', (d) => parts.push(d));
  res.on('end', () => {
    console.log(JSON.stringify({status: res.statusCode, headers: res.headers,
                                body: Buffer.concat(parts).toString('base64')}));
    agent.destroy();
  });
});
req.on('timeout', () => { req.destroy(new Error('timed out')); });
req.on('error', (e) => { console.error(e.message); process.exit(2); });
"""


@pytest.mark.parametrize("path", ["/ok", "/missing"])
def test_node_http_get_through_the_proxy(world, path):
    """node 20's global fetch ignores HTTP_PROXY and its ProxyAgent (undici) is not importable here, so node
    speaks to the proxy as http.get with the absolute-URI request form, which is what a proxy agent sends."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    start = time.monotonic()
    done = subprocess.run(["node", "-e", NODE_GET, str(world["port"]), world["web"] + path,
                           str(int(TIMEOUT * 1000))], capture_output=True, text=True, timeout=TIMEOUT + 10)
    seconds = time.monotonic() - start
    assert done.returncode == 0 or seconds >= TIMEOUT, done.stderr
    out = json.loads(done.stdout or '{"status": 0, "headers": {}, "body": ""}')
    check(Got(out["status"], out["headers"], base64.b64decode(out["body"]), seconds), path)


# ------------------------------------------------------------------------------------------ pip

def pip(world, tmp_path: Path, index: str, project: str) -> tuple[subprocess.CompletedProcess, float]:
    """pip with no retries and a read timeout of TOOL_TIMEOUT: a response that never ends costs it that long."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--no-cache-dir", "--no-deps",
                           "--disable-pip-version-check", "--retries", "0", "--timeout", str(TOOL_TIMEOUT),
                           "--index-url", f"http://pypi.test:{world['a']}{index}", "--trusted-host", "pypi.test",
                           "--proxy", world["proxy"], "--target", str(tmp_path / "t"), project],
                          capture_output=True, text=True, timeout=TOOL_TIMEOUT * 3, env=env)
    return done, time.monotonic() - start


def test_pip_installs_through_an_index_that_redirects(world, tmp_path):
    done, seconds = pip(world, tmp_path, "/old-simple/", "tinypkg")
    assert seconds < TOOL_TIMEOUT and done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "t" / "tinypkg" / "__init__.py").read_text() == "VALUE = 42\n"
    assert {("GET", "/old-simple/tinypkg/"), ("GET", "/simple/tinypkg/"),
            ("GET", "/tinypkg-0.1-py3-none-any.whl")} <= set(world["seen"])


def test_pip_fails_fast_on_a_project_the_index_lacks(world, tmp_path):
    done, seconds = pip(world, tmp_path, "/simple/", "nosuchproject")
    assert seconds < TOOL_TIMEOUT, f"pip waited {seconds:.1f}s: {done.stderr}"
    assert done.returncode == 1 and "No matching distribution found for nosuchproject" in done.stderr, done.stderr
    assert "timed out" not in done.stdout + done.stderr and ("GET", "/simple/nosuchproject/") in world["seen"]


# ------------------------------------------------------------------------------------------ git smart HTTP

def git(world, tmp_path: Path, *args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """git through the proxy; an exchange slower than 1 byte/s for TOOL_TIMEOUT seconds aborts it."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **GIT_ENV}
    start = time.monotonic()
    done = subprocess.run(["git", "-c", f"http.proxy={world['proxy']}", "-c", "http.lowSpeedLimit=1",
                           "-c", f"http.lowSpeedTime={int(TOOL_TIMEOUT)}", *args],
                          capture_output=True, text=True, timeout=TOOL_TIMEOUT * 3, env=env, cwd=cwd)
    return done, time.monotonic() - start


def test_git_clone_over_smart_http(world, tmp_path):
    url = f"http://git.test:{world['a']}/git/repo.git"
    done, seconds = git(world, tmp_path, "clone", "-q", url, str(tmp_path / "clone"))
    assert seconds < TOOL_TIMEOUT and done.returncode == 0, done.stderr
    assert (tmp_path / "clone" / "hello.txt").read_text() == "hello from git\n"
    assert ("GET", "/git/repo.git/info/refs?service=git-upload-pack") in world["seen"]
    assert ("POST", "/git/repo.git/git-upload-pack") in world["seen"]  # the smart protocol, not dumb files


def test_git_push_over_smart_http(world, tmp_path):
    url = f"http://git.test:{world['a']}/git/push.git"
    clone = tmp_path / "clone"
    done, _ = git(world, tmp_path, "clone", "-q", url, str(clone))
    assert done.returncode == 0, done.stderr
    (clone / "new.txt").write_text("pushed through the hook\n")
    subprocess.run(["git", "add", "new.txt"], cwd=clone, check=True)
    subprocess.run(["git", "commit", "-qm", "two"], cwd=clone, check=True, env={**os.environ, **GIT_ENV})
    done, seconds = git(world, tmp_path, "push", "-q", "origin", "main", cwd=clone)
    assert seconds < TOOL_TIMEOUT and done.returncode == 0, done.stderr
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout
    remote = subprocess.run(["git", "--git-dir", str(world["files"] / "git" / "push.git"), "rev-parse", "main"],
                            capture_output=True, text=True).stdout
    assert remote == head and ("POST", "/git/push.git/git-receive-pack") in world["seen"]


def test_git_reaches_only_the_repository_its_route_names(world, tmp_path):
    """Issue 12's `git push` to another account on an allowed forge: the forge's rule names the project's own
    repository path, so a clone and push there work through the hook, and the same forge's other repository
    is refused at its first request (403, logged) — decided by method and path, not by host."""
    own = f"http://forge.test:{world['a']}/git/push.git"
    clone = tmp_path / "own"
    done, _ = git(world, tmp_path, "clone", "-q", own, str(clone))
    assert done.returncode == 0, done.stderr
    (clone / "routed.txt").write_text("pushed to the project's own repository\n")
    subprocess.run(["git", "add", "routed.txt"], cwd=clone, check=True)
    subprocess.run(["git", "commit", "-qm", "routed"], cwd=clone, check=True, env={**os.environ, **GIT_ENV})
    done, _ = git(world, tmp_path, "push", "-q", "origin", "main", cwd=clone)
    assert done.returncode == 0, done.stderr
    other = f"http://forge.test:{world['a']}/git/repo.git"
    done, seconds = git(world, tmp_path, "clone", "-q", other, str(tmp_path / "other"))
    assert done.returncode == 128 and "403" in done.stderr and seconds < TOOL_TIMEOUT, done.stderr
    done, _ = git(world, tmp_path, "push", "-q", other, "main", cwd=clone)
    assert done.returncode != 0 and "403" in done.stderr, done.stderr
    remote = subprocess.run(["git", "--git-dir", str(world["files"] / "git" / "repo.git"), "log", "--oneline"],
                            capture_output=True, text=True).stdout
    assert "routed" not in remote


def test_git_clone_of_a_missing_repository_fails_fast(world, tmp_path):
    url = f"http://git.test:{world['a']}/git/nope.git"
    done, seconds = git(world, tmp_path, "clone", "-q", url, str(tmp_path / "clone"))
    assert seconds < TOOL_TIMEOUT, f"git waited {seconds:.1f}s: {done.stderr}"
    assert done.returncode == 128 and f"repository '{url}/' not found" in done.stderr, done.stderr


# ------------------------------------------------------------------------------------------ HTTPS tunnels

TUNNELS = {"blind": ("blind.test", "upstream_ca"), "terminated": ("bound.test", "run_ca")}


@pytest.mark.parametrize("tunnel", list(TUNNELS))
@pytest.mark.parametrize("path", ["/ok", "/missing"])
def test_curl_https(world, tunnel, path):
    """Each tunnel is told apart by the CA curl trusts: only the origin's for the blind one, only the run's for
    the terminated one. A terminated tunnel may re-frame a body it scrubs, so only there the length may go."""
    host, ca = TUNNELS[tunnel]
    got = curl(world, f"https://{host}:{world['t']}{path}", cacert=world[ca])
    assert got.statuses[0] == 200  # the tunnel
    check(got, path, framing=tunnel == "blind")


@pytest.mark.parametrize("tunnel", list(TUNNELS))
def test_curl_https_keeps_the_tunnel_for_several_urls(world, tunnel, tmp_path):
    host, ca = TUNNELS[tunnel]
    paths = ["/ok", "/missing", "/ok"]
    args = [x for i, p in enumerate(paths) for x in ("-o", str(tmp_path / str(i)), f"https://{host}:{world['t']}{p}")]
    start = time.monotonic()
    done = subprocess.run(["curl", "-sS", "--max-time", str(TIMEOUT), "-x", world["proxy"], "--cacert",
                           str(world[ca]), "-w", "%{http_code} %{num_connects}\n", *args],
                          capture_output=True, text=True, timeout=TIMEOUT + 10, env={"PATH": os.environ["PATH"]})
    assert time.monotonic() - start < TIMEOUT and done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["200 1", "404 0", "200 0"]
    assert [(tmp_path / str(i)).read_bytes() for i in range(3)] == [CANNED[p].body for p in paths]
