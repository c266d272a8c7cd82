"""The sandbox's only resolver: a DNS stub on UDP and TCP that answers names the policy's endpoints name
(monitor op `dns`) by itself, and never sends a queried name anywhere.

One query → parse (malformed → FORMERR) → a name under no endpoint rule whose labels look like data is
REFUSED and logged as `dns: tunnel` without asking further (a label over 40 bytes, a name over 150, or a
label of 16+ characters that mixes 3+ digits into 3+ letters or has over 4 bits/character of entropy: hex,
base32, base64 chunks) → otherwise the monitor decides `dns NAME` (unknown names are REFUSED, the monitor
logs why) → an allowed name gets a placeholder A record (`placeholder_address`); AAAA and other types get
an empty NOERROR.

Why a placeholder and not the real address: resolving upstream would send the name, and a name under an
allowed zone (`<base32 of .env>.githubusercontent.com`) is data the sandbox chose. The answer is never used
to reach anything: the sandbox's only way out is the hook (the proxy, the SMTP front), which is given the
*name* and resolves it itself, and only after the monitor allowed a connect to it, judged against the
run's taint (`Egress.open`). So the address only needs to be stable and harmless: it comes from
198.18.0.0/15, reserved for benchmarking (RFC 2544, RFC 6890: not globally routable), and the hook refuses
an IP-literal target no endpoint rule names by IP, so connecting to it through the proxy gets nowhere either.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import math
import struct
from collections import Counter
from dataclasses import dataclass

from ifc.enforce.egress import Client, Egress

log = logging.getLogger("ifc.egress.dns")

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
TYPE_A, TYPE_AAAA = 1, 28
MAX_LABEL_BYTES = 40
MAX_NAME_BYTES = 150
ENTROPY_MIN_LENGTH = 16
ENTROPY_BITS = 4.0
PLACEHOLDERS = ipaddress.ip_network("198.18.0.0/15")


class DnsFormatError(ValueError):
    pass


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    name: str
    qtype: int
    qclass: int
    question: bytes  # the question section as received, echoed in the answer


def parse_query(data: bytes) -> Query:
    if len(data) < 12:
        raise DnsFormatError("shorter than a DNS header")
    qid, flags, qdcount, _an, _ns, _ar = struct.unpack("!6H", data[:12])
    if flags & 0x8000:
        raise DnsFormatError("a response, not a query")
    if (flags >> 11) & 0xF != 0:
        raise DnsFormatError("not a standard query")
    if qdcount != 1:
        raise DnsFormatError("exactly one question is answered")
    pos, labels = 12, []
    while True:
        if pos >= len(data):
            raise DnsFormatError("the name runs past the end")
        length = data[pos]
        if length & 0xC0:
            raise DnsFormatError("compressed names are not accepted in a question")
        pos += 1
        if length == 0:
            break
        label = data[pos:pos + length]
        if len(label) != length:
            raise DnsFormatError("a label runs past the end")
        labels.append(label.decode("ascii", "replace").lower())
        pos += length
    if pos + 4 > len(data):
        raise DnsFormatError("the question has no type and class")
    qtype, qclass = struct.unpack("!HH", data[pos:pos + 4])
    return Query(qid, flags, ".".join(labels), qtype, qclass, data[12:pos + 4])


def entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values()) if text else 0.0


def looks_like_data(name: str) -> str | None:
    """Why the name looks like it carries data, or None."""
    if len(name) > MAX_NAME_BYTES:
        return f"the name is {len(name)} bytes long"
    for label in name.split("."):
        if len(label) > MAX_LABEL_BYTES:
            return f"label `{label[:20]}...` is {len(label)} bytes long"
        if len(label) < ENTROPY_MIN_LENGTH:
            continue
        digits, letters = sum(c.isdigit() for c in label), sum(c.isalpha() for c in label)
        if digits >= 3 and letters >= 3:
            return f"label `{label}` mixes {digits} digits into {letters} letters, like encoded data"
        if entropy(label) > ENTROPY_BITS:
            return f"label `{label}` has {entropy(label):.1f} bits/character of entropy"
    return None


def placeholder_address(name: str) -> str:
    """The address the stub gives `name`: the same for the same name in every run (a client caching it across
    runs sees no change), never the network's first or last address."""
    offset = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % (PLACEHOLDERS.num_addresses - 2)
    return str(PLACEHOLDERS.network_address + 1 + offset)


def answer(query: Query, rcode: int, addresses: list[str] = (), ttl: int = 60) -> bytes:
    flags = 0x8000 | (query.flags & 0x0100) | 0x0080 | rcode  # QR, RD copied, RA
    records = b""
    count = 0
    for text in addresses:
        addr = ipaddress.ip_address(text)
        rtype = TYPE_A if addr.version == 4 else TYPE_AAAA
        if rtype != query.qtype:
            continue
        records += struct.pack("!HHHIH", 0xC00C, rtype, 1, ttl, len(addr.packed)) + addr.packed
        count += 1
    return struct.pack("!6H", query.id, flags, 1, count, 0, 0) + query.question + records


def error_reply(data: bytes, rcode: int) -> bytes | None:
    if len(data) < 12:
        return None
    qid, flags = struct.unpack("!HH", data[:4])
    return struct.pack("!6H", qid, 0x8000 | (flags & 0x0100) | rcode, 0, 0, 0, 0)


class DnsStub:
    def __init__(self, egress: Egress):
        self.egress = egress
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.AbstractServer | None = None

    def _known(self, name: str) -> bool:
        return any(p.matches_host(name) for rule in self.egress.monitor.policy.endpoint_rules for p in rule.patterns)

    def respond(self, data: bytes, peer: str = "") -> bytes | None:
        """The reply to one query (None: no reply, the datagram was not even a DNS header). Nothing here
        waits on the network: the answer is made from the policy alone."""
        client = Client("session", self.egress.session_token, peer)
        try:
            query = parse_query(data)
        except DnsFormatError as exc:
            self.egress.refuse(client, "dns", "(malformed query)", f"malformed DNS query: {exc}", "dns: format")
            return error_reply(data, FORMERR)
        name = query.name.rstrip(".")
        if not name:
            return answer(query, REFUSED)
        why = None if self._known(name) else looks_like_data(name)
        if why is not None:
            self.egress.refuse(client, "dns", name, f"query under an unknown zone looks like data: {why}",
                               "dns: tunnel")
            return answer(query, REFUSED)
        decision = self.egress.decide(client, "dns", name)
        if not decision.allowed:
            return answer(query, REFUSED)
        if query.qtype != TYPE_A or query.qclass != 1:
            return answer(query, NOERROR)
        return answer(query, NOERROR, [placeholder_address(name)])

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.tcp = await asyncio.start_server(self._tcp, host, port)
        port = self.tcp.sockets[0].getsockname()[1]
        stub = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                out = stub.respond(data, f"{addr[0]}:{addr[1]}")
                if out is not None:
                    self.transport.sendto(out, addr)

        self.udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=(host, port))
        return host, port

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            for _ in range(100):
                size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))[0]
                data = await asyncio.wait_for(reader.readexactly(size), 10)
                out = self.respond(data, f"{peer[0]}:{peer[1]}" if peer else "")
                if out is None:
                    break
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()
