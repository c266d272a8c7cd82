"""The DNS stub: answers the names the policy's endpoints name itself (a placeholder address), refuses the
rest and data-carrying labels, and never sends a queried name anywhere, clean or tainted. The hook resolves a
name upstream only for a connect the monitor allowed against the run's taint."""

from __future__ import annotations

import base64
import ipaddress
import socket
import struct

import pytest

from ifc.enforce.dns_stub import (
    FORMERR,
    NOERROR,
    REFUSED,
    TYPE_A,
    TYPE_AAAA,
    DnsStub,
    looks_like_data,
    parse_query,
    placeholder_address,
)
from ifc.enforce.egress import BackgroundLoop, Egress, static_resolver
from ifc.enforce.http_proxy import HttpProxy, Limits
from ifc.monitor import EventLog, Monitor
from ifc.monitor.monitor import Request
from ifc.policy import compile_text

pytestmark = pytest.mark.integration

POLICY = """
labels {
  secrecy public < internal < secret
}
files {
  "**"    internal
  ".env"  secret
}
endpoints {
  "https://pypi.org", "https://files.pythonhosted.org"  clearance internal as packages, external
  "https://**.githubusercontent.com", "http://**.githubusercontent.com"  clearance internal as forge, external
}
"""

SECRET = b"API_KEY=sk-live-42"
# the name a tainted agent would look up to carry `.env` out under a zone the policy allows
TUNNEL = base64.b32encode(SECRET).decode().rstrip("=").lower() + ".raw.githubusercontent.com"
# the hook's upstream resolver answers every name with loopback, so an allowed connect ends at the address
# check (a refusal logged *after* the resolution), and nothing in these tests reaches the internet
HOSTS = {name: ["127.0.0.1"] for name in ("pypi.org", "raw.githubusercontent.com", TUNNEL)}


@pytest.fixture
def stub(tmp_path):
    log = EventLog(tmp_path / "events.db")
    monitor = Monitor(compile_text(POLICY).policy, log=log)
    asked: list[str] = []
    table = static_resolver(HOSTS)

    async def resolver(name):  # the hook's only way to ask anyone about a name: it records every question
        asked.append(name)
        return await table(name)

    egress = Egress(monitor, resolver=resolver)
    bg = BackgroundLoop()
    dns = DnsStub(egress)
    _, port = bg.run(dns.start())
    proxy = HttpProxy(egress, Limits(head_timeout=1.0, idle_timeout=5.0))
    _, pport = bg.run(proxy.start())
    yield dict(port=port, pport=pport, log=log, asked=asked, monitor=monitor)
    bg.run(proxy.close())
    bg.run(dns.close())
    bg.stop()
    log.close()


def taint(stub) -> None:
    read = stub["monitor"].decide(Request("read", ".env"))
    assert read.allowed and "secret" in read.taint_after


def query(name: str, qtype: int = TYPE_A, qid: int = 0x1234) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def ask_udp(stub, data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(data, ("127.0.0.1", stub["port"]))
        return s.recv(4096)


def ask_tcp(stub, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", stub["port"]), timeout=5) as s:
        s.sendall(struct.pack("!H", len(data)) + data)
        size = struct.unpack("!H", s.recv(2))[0]
        out = b""
        while len(out) < size:
            out += s.recv(size - len(out))
        return out


def rcode_and_addresses(reply: bytes) -> tuple[int, list[str]]:
    _qid, flags, _qd, ancount, _ns, _ar = struct.unpack("!6H", reply[:12])
    assert flags & 0x8000
    pos = 12
    while reply[pos]:
        pos += reply[pos] + 1
    pos += 5
    out = []
    for _ in range(ancount):
        rtype, _cls, _ttl, size = struct.unpack("!HHIH", reply[pos + 2:pos + 12])
        raw = reply[pos + 12:pos + 12 + size]
        out.append(socket.inet_ntop(socket.AF_INET if rtype == TYPE_A else socket.AF_INET6, raw))
        pos += 12 + size
    return flags & 0xF, out


def test_known_names_get_a_placeholder_address_over_udp_and_tcp(stub):
    pypi = placeholder_address("pypi.org")
    assert ipaddress.ip_address(pypi) in ipaddress.ip_network("198.18.0.0/15")
    assert rcode_and_addresses(ask_udp(stub, query("pypi.org"))) == (NOERROR, [pypi])
    assert rcode_and_addresses(ask_udp(stub, query("PyPI.org."))) == (NOERROR, [pypi]), "one name, one address"
    assert rcode_and_addresses(ask_udp(stub, query("pypi.org", TYPE_AAAA))) == (NOERROR, [])
    raw = placeholder_address("raw.githubusercontent.com")
    assert raw != pypi and rcode_and_addresses(ask_tcp(stub, query("raw.githubusercontent.com"))) == (NOERROR, [raw])
    assert struct.unpack("!H", ask_udp(stub, query("pypi.org", qid=0xBEEF))[:2])[0] == 0xBEEF
    assert stub["asked"] == [], "the stub answers from the policy and asks no resolver"


@pytest.mark.parametrize("tainted", [False, True], ids=["clean", "after-reading-.env"])
def test_a_name_carrying_the_secret_under_an_allowed_zone_never_leaves(stub, tainted):
    if tainted:
        taint(stub)
    for ask in (ask_udp, ask_tcp):
        assert rcode_and_addresses(ask(stub, query(TUNNEL))) == (NOERROR, [placeholder_address(TUNNEL)])
    assert stub["asked"] == [], "the name reached no resolver"
    decision = stub["monitor"].decide(Request("dns", TUNNEL))
    assert decision.allowed and "sent nowhere" in decision.reason


def proxy_status(stub, head: str) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", stub["pport"]), timeout=10) as s:
        s.sendall(head.encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            more = s.recv(4096)
            if not more:
                break
            reply += more
    lines = reply.decode("latin-1").split("\r\n")
    denied = [line for line in lines if line.startswith("X-Ifc-Denied: ")]
    return int(lines[0].split()[1]), denied[0] if denied else ""


@pytest.mark.parametrize("tainted", [False, True], ids=["clean", "after-reading-.env"])
def test_the_proxy_resolves_a_name_only_after_the_connect_is_allowed(stub, tainted):
    """Tainted, a connect to the tunnel name is denied by the monitor and nothing resolved it; clean, the
    connect is allowed (internal data may go there) and only then does the hook ask its resolver."""
    if tainted:
        taint(stub)
    connect = proxy_status(stub, f"CONNECT {TUNNEL}:443 HTTP/1.1\r\nHost: {TUNNEL}:443\r\n\r\n")
    get = proxy_status(stub, f"GET http://{TUNNEL}/ HTTP/1.1\r\nHost: {TUNNEL}\r\n\r\n")
    assert connect[0] == get[0] == 403
    stub["log"].flush()
    denials = [e for e in stub["log"].events("deny") if TUNNEL in e.target]
    if tainted:
        assert stub["asked"] == [], "the tunnel name was resolved before the monitor decided the connect"
        assert "secret" in connect[1] and all(e.op == "connect" and e.rule != "containment: address" for e in denials)
    else:  # allowed, resolved, then refused only because the test's resolver says loopback
        assert stub["asked"] == [TUNNEL, TUNNEL]
        assert denials and all(e.rule == "containment: address" and e.op == "resolve" for e in denials)


def test_unknown_names_are_refused_and_never_forwarded(stub):
    assert rcode_and_addresses(ask_udp(stub, query("evil.example")))[0] == REFUSED
    assert rcode_and_addresses(ask_tcp(stub, query("example.com")))[0] == REFUSED
    assert stub["asked"] == [], "the stub asked no resolver about a refused name"
    stub["log"].flush()
    assert any(e.op == "dns" and e.target == "evil.example" for e in stub["log"].events("deny"))


@pytest.mark.parametrize("name", [
    "6b6579203d20736b2d616e742d6170693033.evil.example",                 # hex-encoded secret
    "mzxw6ytboi2dsnzrgqzdgmbvgq3dinjvgiydonzxha4tsnrqgu3ts.t.evil.example",  # base32, long
    "a" * 50 + ".evil.example",
    ".".join(["abcdefgh"] * 20) + ".evil.example",
])
def test_data_carrying_queries_are_refused_with_a_reason(stub, name):
    assert rcode_and_addresses(ask_udp(stub, query(name)))[0] == REFUSED
    stub["log"].flush()
    [event] = [e for e in stub["log"].events("deny") if e.target == name]
    assert event.rule == "dns: tunnel" and "looks like data" in event.reason


def test_malformed_queries_get_formerr(stub):
    reply = ask_udp(stub, b"\x12\x34" + b"\x01\x00" + b"\x00\x02" + b"\x00" * 6 + b"\x00")
    assert struct.unpack("!HH", reply[:4]) == (0x1234, 0x8100 | FORMERR)


def test_heuristics():
    assert looks_like_data("files.pythonhosted.org") is None
    assert looks_like_data("www.documentation-server.example") is None
    assert looks_like_data("q9x7vk2m4p8z1w3b.evil.example")
    assert parse_query(query("a.b")).name == "a.b"
