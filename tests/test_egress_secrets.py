"""Secrets: the sandbox holds a sentinel; the proxy swaps in the real value for bound endpoints only, refuses a
sentinel headed elsewhere, and masks the real value in responses."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ifc.enforce.egress import BackgroundLoop, Egress, static_resolver
from ifc.enforce.http_proxy import HttpProxy
from ifc.enforce.secrets import SENTINEL_PREFIX, SecretError, SentinelWatch, StreamScrubber, Vault, load_value
from ifc.monitor import EventLog, Monitor
from ifc.policy import compile_text

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration

REAL = "sk-real-0123456789abcdef"

POLICY = """
labels {
  secrecy public < internal < secret
}
files { "**" internal }
endpoints {
  "http://api.test:{A}", "http://other.test:{A}"  clearance internal as web, external
  "http://127.0.0.1:{A}"  clearance internal
}
secret API_KEY from env "IFC_TEST_API_KEY" to "http://api.test:{A}"
"""


# the real value at the start, astride 64 KiB and 1 MiB boundaries, and at the end of a 3 MiB body
BIG = bytearray(b"x" * (3 << 20))
for _at in (0, (1 << 16) - 5, (1 << 20) - 7, (2 << 20) + 3, (3 << 20) - len(REAL)):
    BIG[_at:_at + len(REAL)] = REAL.encode()
BIG = bytes(BIG)


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list = []

    def log_message(self, *args):
        pass

    def handle(self):
        with contextlib.suppress(ConnectionError):  # the proxy cut a refused upload short
            super().handle()

    def _reply(self):
        if self.path.startswith("/big"):  # larger than the proxy checks in memory: streamed, still scrubbed
            self.send_response(200)
            self.send_header("Content-Length", str(len(BIG)))
            self.end_headers()
            self.wfile.write(BIG)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        Echo.seen.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
        out = json.dumps(Echo.seen[-1]).encode()
        self.send_response(200)
        if self.path.startswith("/chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-Echo", self.headers.get("Authorization", ""))
            self.end_headers()
            for i in range(0, len(out), 7):  # small chunks: the value straddles chunk boundaries
                self.wfile.write(f"{len(out[i:i + 7]):x}\r\n".encode() + out[i:i + 7] + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Echo", self.headers.get("Authorization", ""))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _reply


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    a = server.server_address[1]
    policy = compile_text(POLICY.replace("{A}", str(a))).policy
    log = EventLog(tmp_path_factory.mktemp("secrets") / "events.db")
    monitor = Monitor(policy, log=log)
    vault = Vault.from_policy(policy, values={"API_KEY": REAL})
    egress = Egress(monitor, resolver=static_resolver({"api.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}),
                    vault=vault)
    bg = BackgroundLoop()
    proxy = HttpProxy(egress)
    _, port = bg.run(proxy.start())
    yield dict(a=a, proxy=f"http://127.0.0.1:{port}", sentinel=vault.sandbox_env()["API_KEY"], log=log)
    bg.run(proxy.close())
    bg.stop()
    server.shutdown()


def curl(world, *args):
    return subprocess.run(["curl", "-sS", "-i", "--max-time", "10", "-x", world["proxy"], *args],
                          capture_output=True, text=True, timeout=20)


def test_the_sandbox_sees_a_sentinel(world):
    assert world["sentinel"].startswith(SENTINEL_PREFIX) and REAL not in world["sentinel"]


def test_swapped_in_headers_for_the_bound_host_and_scrubbed_on_the_way_back(world):
    Echo.seen.clear()
    out = curl(world, "-H", f"Authorization: Bearer {world['sentinel']}", f"http://api.test:{world['a']}/v1")
    assert " 200 " in out.stdout.splitlines()[0]
    assert Echo.seen[-1]["headers"]["Authorization"] == f"Bearer {REAL}", "the real server got the real value"
    assert REAL not in out.stdout and "*" * len(REAL) in out.stdout, "the echoed value is masked"


def test_swapped_in_bodies_with_content_length_fixed(world):
    Echo.seen.clear()
    body = json.dumps({"key": world["sentinel"], "q": "x"})
    out = curl(world, "-H", "Content-Type: application/json", "-d", body, f"http://api.test:{world['a']}/v1")
    assert " 200 " in out.stdout.splitlines()[0]
    assert json.loads(Echo.seen[-1]["body"]) == {"key": REAL, "q": "x"}


def test_scrubbed_across_chunk_boundaries(world):
    out = curl(world, "-H", f"Authorization: Bearer {world['sentinel']}", f"http://api.test:{world['a']}/chunked")
    assert REAL not in out.stdout and "*" * len(REAL) in out.stdout


@pytest.mark.parametrize("how", ["header", "body", "query"])
def test_a_sentinel_headed_elsewhere_is_blocked_and_reported(world, how):
    Echo.seen.clear()
    url = f"http://other.test:{world['a']}/collect"
    args = {"header": ["-H", f"X-Key: {world['sentinel']}", url], "body": ["-d", f"k={world['sentinel']}", url],
            "query": [f"{url}?k={world['sentinel']}"]}[how]
    out = curl(world, *args)
    assert " 403 " in out.stdout.splitlines()[0]
    assert "secret `API_KEY` is headed for http://other.test" in out.stdout
    assert Echo.seen == [], "nothing reached the other host"
    world["log"].flush()
    assert any(e.op == "send" and e.target.startswith("API_KEY@http://other.test") for e in world["log"].events("deny"))


def test_a_large_response_is_scrubbed_as_it_streams(world):
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "-x", world["proxy"], f"http://api.test:{world['a']}/big"],
                         capture_output=True, timeout=30)
    assert len(out.stdout) == len(BIG) and REAL.encode() not in out.stdout
    assert out.stdout == BIG.replace(REAL.encode(), b"*" * len(REAL))


def test_a_sentinel_in_a_large_body_is_blocked(world, tmp_path):
    Echo.seen.clear()
    big = tmp_path / "big"
    big.write_bytes(b"x" * (2 << 20) + world["sentinel"].encode() + b"y" * 100)
    out = curl(world, "--data-binary", f"@{big}", f"http://other.test:{world['a']}/collect")
    assert "HTTP/1.1 403 " in out.stdout and "too large to check in memory" in out.stdout
    assert all(world["sentinel"] not in seen["body"] for seen in Echo.seen)


def test_loading_values(monkeypatch, tmp_path):
    monkeypatch.setenv("IFC_TEST_SECRET", "from-env")
    assert load_value("env", "IFC_TEST_SECRET", "K") == b"from-env"
    (tmp_path / "k").write_text("from-file\n")
    assert load_value("file", str(tmp_path / "k"), "K") == b"from-file"
    assert load_value("command", f"{sys.executable} -c 'print(123)'", "K") == b"123"
    monkeypatch.delenv("IFC_TEST_SECRET")
    with pytest.raises(SecretError, match="not set"):
        load_value("env", "IFC_TEST_SECRET", "K")
    assert os.environ.get("IFC_TEST_SECRET") is None


def test_a_commands_home_is_the_users_and_an_empty_value_is_none(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "token").write_text("from-home\n")
    assert load_value("command", "cat ~/token", "K") == b"from-home"
    monkeypatch.setenv("IFC_TEST_SECRET", "")
    (tmp_path / "empty").write_text("\n")
    for source, ref in (("env", "IFC_TEST_SECRET"), ("file", str(tmp_path / "empty")), ("command", "true")):
        with pytest.raises(SecretError, match="empty value"):
            load_value(source, ref, "K")
    with pytest.raises(SecretError, match="No closing quotation"):  # no traceback: the secret has no value
        load_value("command", "cat 'unclosed", "K")


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed (scripts/sysdeps.sh)")
@pytest.mark.parametrize(("auth", "loaded"), [
    ({"tokens": {"access_token": "at-123", "refresh_token": "rt-456"}}, {"CHATGPT_ACCESS_TOKEN": b"at-123",
                                                                        "CHATGPT_REFRESH_TOKEN": b"rt-456"}),
    ({"OPENAI_API_KEY": "sk-x", "tokens": None}, {}),  # an API-key login: no ChatGPT tokens, not the text `null`
])
def test_the_codex_presets_chatgpt_tokens_come_from_its_auth_file(monkeypatch, tmp_path, auth, loaded):
    from ifc.enforce.secret_values import load_vault
    from ifc.policy import load_policy

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real")
    (tmp_path / ".codex").mkdir()
    (tmp_path / ".codex" / "auth.json").write_text(json.dumps(auth))
    vault = load_vault(load_policy(ROOT / "policies" / "codex.flow"))
    chatgpt = {h.name: h.value for h in vault.vault.held if h.name.startswith("CHATGPT_") and
               h.name not in vault.unset}
    assert chatgpt == loaded
    assert set(vault.unset) == {"CHATGPT_ACCESS_TOKEN", "CHATGPT_REFRESH_TOKEN"} - set(loaded)


def test_stream_scrubber_splits_anywhere():
    vault = Vault.from_policy(compile_text(POLICY.replace("{A}", "1")).policy, values={"API_KEY": REAL})
    data = (b"abc" + REAL.encode() + b"def") * 3
    for step in (1, 2, 5, 7, 100):
        s = StreamScrubber(vault)
        out = b"".join(s.feed(data[i:i + step]) for i in range(0, len(data), step)) + s.flush()
        assert out == data.replace(REAL.encode(), b"*" * len(REAL))


_pieces = st.lists(st.one_of(st.binary(max_size=40), st.sampled_from([REAL.encode(), REAL.encode()[:5], b"sk-",
                                                                       b"ifc-sentinel-", b"*"])), max_size=30)


@settings(max_examples=300, deadline=None)
@given(_pieces, st.lists(st.integers(1, 60), min_size=1, max_size=20), st.booleans())
def test_streaming_scrub_and_watch_match_the_whole_stream(pieces, steps, with_sentinel):
    vault = Vault.from_policy(compile_text(POLICY.replace("{A}", "1")).policy, values={"API_KEY": REAL})
    sentinel = vault.held[0].sentinel
    data = b"".join(pieces) + (sentinel + b"tail" if with_sentinel else b"")
    chunks, i = [], 0
    for step in steps * (len(data) // max(1, sum(steps)) + 1):
        if i >= len(data):
            break
        chunks.append(data[i:i + step])
        i += step
    s, watch = StreamScrubber(vault), SentinelWatch(vault)
    assert b"".join(s.feed(c) for c in chunks) + s.flush() == data.replace(REAL.encode(), b"*" * len(REAL))
    assert any(watch.found(c) for c in chunks) == (sentinel in data)
