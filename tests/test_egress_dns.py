"""The DNS stub: answers only names the policy's endpoints name, refuses data-carrying labels, forwards nothing."""

from __future__ import annotations

import socket
import struct

import pytest

from ifc.enforce.dns_stub import FORMERR, NOERROR, REFUSED, TYPE_A, TYPE_AAAA, looks_like_data, parse_query
from ifc.enforce.egress import BackgroundLoop, Egress, static_resolver
from ifc.monitor import EventLog, Monitor
from ifc.policy import compile_text

pytestmark = pytest.mark.integration

POLICY = """
labels {
  secrecy public < internal < secret
}
files { "**" internal }
endpoints {
  "https://pypi.org", "https://files.pythonhosted.org"  clearance internal as packages, external
  "https://**.githubusercontent.com"  clearance internal as forge, external
}
"""

HOSTS = {"pypi.org": ["151.101.0.223", "2a04:4e42::223"], "files.pythonhosted.org": ["151.101.1.63"],
         "raw.githubusercontent.com": ["185.199.108.133"]}


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    log = EventLog(tmp_path_factory.mktemp("dns") / "events.db")
    monitor = Monitor(compile_text(POLICY).policy, log=log)
    asked: list[str] = []
    table = static_resolver(HOSTS)

    async def resolver(name):
        asked.append(name)
        return await table(name)

    from ifc.enforce.dns_stub import DnsStub

    bg = BackgroundLoop()
    dns = DnsStub(Egress(monitor, resolver=resolver))
    _, port = bg.run(dns.start())
    yield dict(port=port, log=log, asked=asked)
    bg.run(dns.close())
    bg.stop()


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


def test_allowed_names_are_answered_over_udp_and_tcp(stub):
    assert rcode_and_addresses(ask_udp(stub, query("pypi.org"))) == (NOERROR, ["151.101.0.223"])
    assert rcode_and_addresses(ask_udp(stub, query("PyPI.org.", TYPE_AAAA))) == (NOERROR, ["2a04:4e42::223"])
    assert rcode_and_addresses(ask_tcp(stub, query("raw.githubusercontent.com"))) == (NOERROR, ["185.199.108.133"])
    assert struct.unpack("!H", ask_udp(stub, query("pypi.org", qid=0xBEEF))[:2])[0] == 0xBEEF


def test_unknown_names_are_refused_and_never_forwarded(stub):
    stub["asked"].clear()
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
