"""The run's flow guarantee, as a hypothesis state machine over the real egress hook.

*Data read in this run goes only where its labels allow — for every subject, at every moment, across runs.*

Each example runs a random interleaving of: reads of `.env` (secret) and of ordinary files by random
subjects; writes that float labels; token derivations (attenuated or sealed, offline, from the run's token
or from an earlier derivation); tunnels opened through the proxy (to an `internal` sink and to a `secret`-
cleared vault) and plain requests whose head is sent at once and whose body follows in pieces; partial
sends on every open stream; and new runs on the same workspace (a fresh monitor and proxy, the same label
store). The sinks are raw TCP servers that record every byte they receive.

Every payload says, in its bytes, whether the run was tainted `secret` at the moment it was sent. The test
fails if any payload sent while tainted reaches the `internal` sink — whatever subject sent it, on whatever
stream, opened whenever — and (liveness) if a payload sent on an open stream to the vault, which is cleared
for `secret`, never arrives, or if a stream was refused that the model says is cleared. Lookups and tunnels
to names under an allowed wildcard zone carry the same marks in the name: no name made while the run was
tainted may reach a resolver.
"""

from __future__ import annotations

import base64
import itertools
import re
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from caps import HostKey, Verifier, attenuate, mint
from caps import seal as seal_token
from ifc.enforce.dns_stub import DnsStub
from ifc.enforce.egress import BackgroundLoop, Egress
from ifc.enforce.http_proxy import HttpProxy
from ifc.match import Endpoint
from ifc.monitor import LabelStore, Monitor, Request
from ifc.policy import compile_text

AUDIENCE = "run-flow-machine"
KEY = HostKey.generate()
PAYLOAD = re.compile(rb"<P(\d{6})([CT])>")  # C: sent while clean, T: sent while tainted `secret`
SUBJECTS = ("session", "pid:101", "pid:202")
PAYLOAD_BYTES = len(b"<P000001C>")
PAYLOAD_IDS = itertools.count(1)  # unique across examples: the recorders outlive each one


class Recorder:
    """A TCP server that keeps every byte every connection sends it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.data: list[bytes] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        with conn:
            while chunk := conn.recv(65536):
                with self.lock:
                    self.data.append(chunk)

    def payloads(self) -> dict[int, bytes]:
        with self.lock:
            blob = b"".join(self.data)
        return {int(m.group(1)): m.group(2) for m in PAYLOAD.finditer(blob)}


@pytest.fixture(scope="module")
def world():
    web, sink, vault = Recorder(), Recorder(), Recorder()
    policy = compile_text(f"""\
labels {{ secrecy public < internal < secret }}
files {{
  "**"    internal
  ".env"  secret
}}
endpoints {{
  "http://127.0.0.1:{web.port}" clearance internal as web
  "tcp://127.0.0.1:{sink.port}" clearance internal as web
  "tcp://127.0.0.1:{vault.port}" clearance secret as vault
  "https://*.zone.test" clearance internal as web
}}
deny secret -> web "secrets never leave the sandbox"
""").policy
    assert policy is not None
    loop = BackgroundLoop()
    yield dict(policy=policy, web=web, sink=sink, vault=vault, loop=loop)
    loop.stop()
    for r in (web, sink, vault):
        r.sock.close()


class RunFlow(RuleBasedStateMachine):
    world: dict = {}

    tokens = Bundle("tokens")

    def __init__(self) -> None:
        super().__init__()
        w = self.world
        self.policy = w["policy"]
        self.labels = LabelStore()  # the workspace's: every run of this example shares it
        self.rights = [f"connect http://127.0.0.1:{w['web'].port}", f"connect tcp://127.0.0.1:{w['sink'].port}",
                       f"connect tcp://127.0.0.1:{w['vault'].port}", "read **", "write **"]
        self.run_token = mint(KEY, rights=self.rights, audience=AUDIENCE, ttl=3600)
        self.sent: dict[int, str] = {}  # payload id -> "C" / "T", and where it went
        self.expected_at_vault: set[int] = set()
        self.asked: list[str] = []  # every name the hook asked a resolver about, over all runs
        self.proxy = None
        self._new_run()

    # ------------------------------------------------------------------------------------ the run
    def _new_run(self) -> None:
        if self.proxy is not None:
            self._close_streams()
            self.world["loop"].run(self.proxy.close())
        self.monitor = Monitor(self.policy, verifier=Verifier([KEY.public], audience=AUDIENCE), labels=self.labels)
        egress = Egress(self.monitor, session_token=self.run_token, resolver=self._resolve)
        self.dns = DnsStub(egress)
        self.proxy = HttpProxy(egress)
        _, self.port = self.world["loop"].run(self.proxy.start())
        self.tainted = False
        self.floated: set[str] = set()  # the model's floated files carry over: see `new_run`
        self.streams: list[tuple[socket.socket, str]] = []  # (socket, sink name)

    def _close_streams(self) -> None:
        for sock, _ in self.streams:
            sock.close()
        self.streams = []

    def teardown(self) -> None:
        self._close_streams()
        self.world["loop"].run(self.proxy.close())
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not self.expected_at_vault <= set(self.world["vault"].payloads()):
            time.sleep(0.05)
        self.check_nothing_tainted_reached_an_internal_sink()
        missing = self.expected_at_vault - set(self.world["vault"].payloads())
        assert not missing, f"payloads sent to the secret-cleared vault never arrived: {sorted(missing)}"

    async def _resolve(self, name: str) -> list[str]:
        """The hook's only way to ask anyone about a name: every question is recorded, none answered."""
        self.asked.append(name)
        raise OSError("this resolver answers nothing")

    # ------------------------------------------------------------------------------------ helpers
    def _dial(self, token: str | None) -> tuple[socket.socket, str]:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        auth = "" if token is None else \
            "Proxy-Authorization: Basic " + base64.b64encode(f"ifc:{token}".encode()).decode() + "\r\n"
        return sock, auth

    def _authorised(self, token: str | None, endpoint: str) -> bool:
        """Does `token` (None: the run's own) still hold `connect endpoint` after its derivations?"""
        if token is None:
            return True
        verified = Verifier([KEY.public], audience=AUDIENCE).verify(token, now=time.time())
        return verified.check("connect", Endpoint.parse(endpoint)).allowed

    def _payload(self) -> bytes:
        self.last_id = next(PAYLOAD_IDS)
        mark = "T" if self.tainted else "C"
        self.sent[self.last_id] = mark
        return f"<P{self.last_id:06d}{mark}>".encode()

    # ------------------------------------------------------------------------------------ rules
    @rule(subject=st.sampled_from(SUBJECTS))
    def read_secret(self, subject: str) -> None:
        assert self.monitor.decide(Request("read", ".env", subject=subject)).allowed
        self.tainted = True

    @rule(subject=st.sampled_from(SUBJECTS), name=st.sampled_from(("a.txt", "b.txt", "c.txt")))
    def read_file(self, subject: str, name: str) -> None:
        assert self.monitor.decide(Request("read", name, subject=subject)).allowed
        if name in self.floated:
            self.tainted = True

    @rule(subject=st.sampled_from(SUBJECTS), name=st.sampled_from(("a.txt", "b.txt", "c.txt")))
    def write_file(self, subject: str, name: str) -> None:
        assert self.monitor.decide(Request("write", name, subject=subject)).allowed
        if self.tainted:
            self.floated.add(name)

    @rule(target=tokens, sealed=st.booleans(), which=st.integers(0, 2))
    def derive_from_the_run_token(self, sealed: bool, which: int) -> str:
        if sealed:
            return seal_token(self.run_token)
        return attenuate(self.run_token, rights=[self.rights[which]], ttl=600)

    @rule(target=tokens, parent=tokens)
    def derive_again(self, parent: str) -> str:
        try:
            return attenuate(parent, ttl=300)
        except Exception:  # a sealed token cannot be attenuated: present it as it is
            return parent

    @rule(token=st.one_of(st.none(), tokens), to_vault=st.booleans())
    def open_tunnel(self, token: str | None, to_vault: bool) -> None:
        name = "vault" if to_vault else "sink"
        port = self.world[name].port
        sock, auth = self._dial(token)
        sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\n".encode())
        head = sock.recv(4096)
        status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else 0
        cleared = to_vault or not self.tainted
        if cleared and self._authorised(token, f"tcp://127.0.0.1:{port}"):
            assert status == 200, (name, head)
            self.streams.append((sock, name))
        else:
            assert status == 403, (name, head)
            sock.close()

    @rule(token=st.one_of(st.none(), tokens))
    def open_request(self, token: str | None) -> None:
        port = self.world["web"].port
        sock, auth = self._dial(token)
        sock.sendall(f"POST http://127.0.0.1:{port}/up HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
                     f"Content-Length: {2 * PAYLOAD_BYTES}\r\n\r\n".encode())
        if self.tainted or not self._authorised(token, f"http://127.0.0.1:{port}"):  # decided at the head
            assert sock.recv(4096).startswith(b"HTTP/1.1 403"), "the request head was not refused"
            sock.close()
            return
        self.streams.append((sock, "web"))

    @precondition(lambda self: self.streams)
    @rule(index=st.integers(0, 50))
    def send(self, index: int) -> None:
        sock, name = self.streams[index % len(self.streams)]
        data = self._payload()
        try:
            sock.sendall(data)
        except OSError:
            return  # cut: nothing more goes this way
        if name == "vault":  # cleared for `secret`: never cut, so everything sent there arrives
            self.expected_at_vault.add(self.last_id)

    @rule(subject=st.sampled_from(SUBJECTS))
    def lookup(self, subject: str) -> None:
        """A name under an allowed zone that carries data: the stub answers it from the policy, sends it nowhere."""
        name = self._payload().decode().strip("<>").lower() + ".zone.test"
        qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
        reply = self.dns.respond(struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1))
        assert reply is not None and reply[3] & 0xF == 0, "a name the policy knows is answered"

    @rule(token=st.one_of(st.none(), tokens))
    def connect_by_name(self, token: str | None) -> None:
        """A tunnel to a name that carries data: resolved only once the connect is allowed (clean runs)."""
        name = self._payload().decode().strip("<>").lower() + ".zone.test"
        sock, auth = self._dial(token)
        sock.sendall(f"CONNECT {name}:443 HTTP/1.1\r\nHost: {name}:443\r\n{auth}\r\n".encode())
        head = sock.recv(4096)
        sock.close()
        if self.tainted:
            assert head.startswith(b"HTTP/1.1 403"), head

    @rule()
    def new_run(self) -> None:
        """The same workspace, a new run: a clean taint, the labels that earlier runs floated."""
        floated = self.floated
        self._new_run()
        self.floated = floated

    # ------------------------------------------------------------------------------------ the property
    @invariant()
    def check_nothing_tainted_reached_an_internal_sink(self) -> None:
        named = [n for n in self.asked if re.fullmatch(r"p\d{6}t", n.split(".")[0])]
        assert not named, f"names made while the run was tainted reached a resolver: {named}"
        for name in ("web", "sink"):
            leaked = sorted(i for i, mark in self.world[name].payloads().items() if mark == b"T" and i in self.sent)
            assert not leaked, f"payloads sent while the run was tainted reached `{name}`: {leaked}"


def test_no_byte_leaves_for_a_sink_not_cleared_at_the_moment_it_is_sent(world):
    RunFlow.world = world
    run_state_machine_as_test(RunFlow, settings=settings(
        max_examples=100, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]))
