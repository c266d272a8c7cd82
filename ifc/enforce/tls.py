"""TLS termination for the egress hook: a per-run CA, leaf certificates on demand, a TLS stream over asyncio.

Why terminate at all: a policy secret bound to an HTTPS endpoint (`secret K from env "K" to
"https://api.example.com"`) can only be swapped for its real value where the hook sees the request, and
inside a TLS tunnel it sees nothing. So for a CONNECT to an endpoint some secret is bound to (and only
there) the hook answers the TLS handshake itself with a leaf certificate for the CONNECT host, signed by a
CA made for this run, and forwards each request to the real server over TLS verified as any client would.
Every other tunnel stays blind: only a worthless sentinel can leave through it.

The CA:

* its EC P-256 private key is generated when the hook starts and lives only in the hook's memory: it is
  never written to disk, and leaf keys reach OpenSSL through an anonymous memory file (`memfd`), so a run
  leaves no key behind and no other run shares it;
* it is valid from one hour before the run started (clock skew in the guest) to `VALIDITY` after;
* its name constraints (critical) permit only the DNS names (and addresses) that secrets are bound to —
  `*.example.com` as the subtree `example.com`; a DNS subtree also covers the name's subdomains (RFC
  5280) — and exclude every IP address otherwise; a policy that
  binds a secret to `*` gets no constraints, one that binds none permits only `invalid` (RFC 6761). So even
  a sandbox that trusts the CA would accept its certificates only for the hosts the hook terminates;
* its certificate (`RUN_DIR/ca.pem`, written by `ifc.enforce.runfiles`) is meant to be trusted only inside
  the sandbox (the microVM's trust store, or `curl --cacert`), never by the host.

EC P-256 keeps generation cheap (well under a millisecond per key; see docs/benchmarks.md), so the CA is
made at every start and a leaf at the first CONNECT to each host (then cached).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import socket
import ssl
import threading
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ifc.enforce.wire import Wire
from ifc.match import Endpoint, EndpointPattern

VALIDITY = datetime.timedelta(days=7)
SKEW = datetime.timedelta(hours=1)
NOTHING = "invalid"  # the permitted name of a CA that is bound to no host (RFC 6761: never resolves)
_ALL_IPS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def name_constraints(patterns: list[EndpointPattern]) -> x509.NameConstraints | None:
    """The names a CA for these endpoint patterns may certify; None when one of them is any host (`*`)."""
    dns: list[str] = []
    ips: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for pattern in patterns:
        if pattern.host == "*":
            return None
        with contextlib.suppress(ValueError):  # a host given as an address or a CIDR
            ips.append(ipaddress.ip_network(pattern.host))
            continue
        name = pattern.host.split(".", 1)[1] if pattern.host.startswith(("*.", "**.")) else pattern.host
        if name not in dns:
            dns.append(name)
    permitted: list[x509.GeneralName] = [x509.DNSName(n) for n in dns or [NOTHING]]
    permitted += [x509.IPAddress(n) for n in ips]
    excluded = None if ips else [x509.IPAddress(n) for n in _ALL_IPS]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded)


class RunCA:
    """A certificate authority for one run: issues a leaf per host, cached, as a server-side SSLContext."""

    def __init__(self, patterns: list[EndpointPattern] | None = None, now: datetime.datetime | None = None):
        now = now or datetime.datetime.now(datetime.UTC)
        self.not_before, self.not_after = now - SKEW, now + VALIDITY
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ifc-sandbox"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"ifc-sandbox run CA {os.urandom(4).hex()}")])
        ski = x509.SubjectKeyIdentifier.from_public_key(self._key.public_key())
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(self.not_before).not_valid_after(self.not_after)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                key_cert_sign=True, crl_sign=True, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(ski, critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False))
        constraints = name_constraints(patterns or [])
        if constraints is not None:
            builder = builder.add_extension(constraints, critical=True)
        self.cert = builder.sign(self._key, hashes.SHA256())
        self._ski = ski
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()  # the mount's hook runs on its own loop thread; tests call from others

    @property
    def pem(self) -> bytes:
        """The CA certificate (never the key): what the sandbox is told to trust."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def leaf(self, host: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A fresh leaf certificate and key for `host` (a DNS name or an IP address)."""
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        cert = (x509.CertificateBuilder()
                # no host-like CN: with SANs present it is ignored by clients, and OpenSSL would otherwise hold
                # a CN that looks like a name against the name constraints too
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ifc-sandbox")]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(self.not_before).not_valid_after(self.not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=False, crl_sign=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.SubjectAlternativeName([san]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                               critical=False)
                .sign(self._key, hashes.SHA256()))
        return cert, key

    def server_context(self, host: str) -> ssl.SSLContext:
        """The server side of a terminated tunnel to `host` (made once per host)."""
        with self._lock:
            context = self._contexts.get(host)
            if context is None:
                cert, key = self.leaf(host)
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                context.set_alpn_protocols(["http/1.1"])  # the hook speaks HTTP/1.1 inside the tunnel
                _load_in_memory(context, cert, key)
                self._contexts[host] = context
            return context


def _load_in_memory(context: ssl.SSLContext, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    """`load_cert_chain` reads only files: hand it an anonymous memory file, so the key never touches a disk."""
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.memfd_create("ifc-leaf", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def upstream_context(extra_ca: str | None = None, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """How the hook verifies the real server: the system trust store, plus `extra_ca` (a PEM bundle) if given.
    `alpn=()` for mail: a relay has no ALPN name, and offering `http/1.1` to one could be refused."""
    context = ssl.create_default_context()
    if extra_ca:
        context.load_verify_locations(cafile=extra_ca)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


@dataclass
class Termination:
    """Which tunnels the hook terminates, and with what: those to a host a policy secret is bound to (to swap
    sentinels) and those to a host whose endpoint rules or connect grants name paths or methods (to decide each
    request, `Egress.decide_request`). Both name exact hosts only, so the run CA's name constraints stay a list
    of names: a rule with a path under `*.example.com` terminates nothing, and the monitor refuses its tunnels."""

    ca: RunCA
    upstream: ssl.SSLContext
    bound: list[EndpointPattern] = field(default_factory=list)

    @classmethod
    def for_policy(cls, policy, upstream_ca: str | None = None) -> Termination:
        # only exact bindings: the monitor never honours a pattern binding, so the CA must not cover one either
        bound = [p for secret in policy.secrets_ for p in secret.endpoints if p.names_hosts]
        bound += policy.routed_hosts
        return cls(RunCA(bound), upstream_context(upstream_ca), bound)

    def terminates(self, endpoint: Endpoint) -> bool:
        return endpoint.scheme == "https" and any(p.matches_connection(endpoint) for p in self.bound)


# ------------------------------------------------------------------------------------------ ClientHello

def sni_from_client_hello(data: bytes) -> tuple[str | None, int]:
    """(server name or None, bytes still needed; 0 when complete) of a tunnel's first bytes, read before a
    byte is forwarded: the SNI must name the CONNECT host. Raises ValueError if not a ClientHello."""
    if len(data) < 5:
        return None, 5 - len(data)
    if data[0] != 0x16:
        raise ValueError("not a TLS handshake")
    handshake = b""
    pos = 0
    while True:
        if len(data) < pos + 5:
            return None, pos + 5 - len(data)
        if data[pos] != 0x16:
            raise ValueError("the ClientHello is interleaved with other records")
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        if len(data) < pos + 5 + length:
            return None, pos + 5 + length - len(data)
        handshake += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if len(handshake) >= 4:
            if handshake[0] != 1:
                raise ValueError("the first handshake message is not a ClientHello")
            total = int.from_bytes(handshake[1:4], "big") + 4
            if total > 1 << 16:
                raise ValueError("the ClientHello is too large")
            if len(handshake) >= total:
                break
    body = handshake[4:total]
    i = 2 + 32
    i += 1 + body[i]  # session id
    i += 2 + int.from_bytes(body[i:i + 2], "big")  # cipher suites
    i += 1 + body[i]  # compression methods
    if i + 2 > len(body):
        return None, 0
    end = i + 2 + int.from_bytes(body[i:i + 2], "big")
    i += 2
    while i + 4 <= end:
        ext_type = int.from_bytes(body[i:i + 2], "big")
        ext_len = int.from_bytes(body[i + 2:i + 4], "big")
        ext = body[i + 4:i + 4 + ext_len]
        if ext_type == 0:
            j = 2
            while j + 3 <= len(ext):
                name_type, name_len = ext[j], int.from_bytes(ext[j + 1:j + 3], "big")
                if name_type == 0:
                    return ext[j + 3:j + 3 + name_len].decode("ascii", "replace").lower().rstrip("."), 0
                j += 3 + name_len
        i += 4 + ext_len
    return None, 0


# ------------------------------------------------------------------------------------------ TLS over asyncio

class TlsFailure(Exception):
    """The client's side of a terminated tunnel failed the handshake; `reason` is one line for the log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _handshake_reason(exc: ssl.SSLError) -> str:
    text = (exc.reason or str(exc)).lower().replace("_", " ")
    if "unknown ca" in text or "bad certificate" in text or "certificate unknown" in text:
        return f"the client does not trust the run's CA ({text}): give it RUN_DIR/ca.pem"
    return f"the TLS handshake with the client failed ({text})"


class TlsStream(Wire):
    """TLS on an already open `Wire`, with an `ssl.SSLObject` over memory BIOs; itself a `Wire`.

    Why not `loop.start_tls`: the hook has already read the ClientHello (to check its SNI against the CONNECT
    host before anything else happens), and `start_tls` cannot be handed bytes already read. Here they are
    simply fed to the TLS engine first. The same class is the client side towards a bound upstream
    (`server_side=False`, verified for `server_hostname`), so both ends of a terminated tunnel are Wires the
    HTTP codec reads alike."""

    def __init__(self, wire: Wire, context: ssl.SSLContext, first: bytes = b"", *, server_side: bool = True,
                 server_hostname: str | None = None):
        super().__init__(wire.timeout)
        self.inner = wire
        self.sock = wire.sock
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._in.write(first)
        self._tls = context.wrap_bio(self._in, self._out, server_side=server_side,
                                     server_hostname=None if server_side else server_hostname)
        self._server_side = server_side

    async def handshake(self, timeout: float) -> None:
        """Raises `TlsFailure` with a one-line reason (the client's trust, the upstream's certificate...)."""
        async def run() -> None:
            while True:
                try:
                    self._tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._flush()
                    data = await self.inner.recv(1 << 16)
                    if not data:
                        raise TlsFailure("the peer closed the connection during the TLS handshake") from None
                    self._in.write(data)
                except ssl.SSLError as exc:
                    with contextlib.suppress(Exception):
                        await self._flush()  # the alert, so the peer learns why
                    if self._server_side:
                        raise TlsFailure(_handshake_reason(exc)) from None
                    text = (exc.reason or str(exc)).lower().replace("_", " ")
                    raise TlsFailure(f"the upstream's TLS did not verify ({text})") from None
            await self._flush()

        try:
            await asyncio.wait_for(run(), timeout)
        except TimeoutError:
            raise TlsFailure(f"the TLS handshake did not finish within {timeout:g} s") from None
        except ConnectionError as exc:
            raise TlsFailure(f"the peer went away during the TLS handshake ({exc})") from None

    async def _flush(self) -> None:
        if self._out.pending:
            await self.inner.send(self._out.read())

    async def recv(self, size: int = 1 << 18, timeout: float | None = None) -> bytes:
        """Decrypted bytes, as many records as have arrived (up to `size`: one record is only 16 KiB, and each
        read is a trip through the codec); b"" at close_notify or the end of the TCP stream. A broken TLS
        stream raises ConnectionError, as a reset socket would."""
        while True:
            out = bytearray()
            try:
                while len(out) < size and (data := self._tls.read(size - len(out))):
                    out += data
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return bytes(out)  # what came before close_notify; the next call returns b""
            except ssl.SSLError as exc:
                raise ConnectionError(f"the TLS stream failed: {exc}") from None
            if out:
                return bytes(out)
            await self._flush()  # post-handshake messages (key update answers)
            more = await self.inner.recv(1 << 18, timeout)
            if not more:
                return b""
            self._in.write(more)

    async def send(self, data: bytes, timeout: float | None = None) -> None:
        if data:
            self._tls.write(data)
            await self.inner.send(self._out.read(), timeout)

    def stale(self) -> bool:
        """Like `SocketWire.stale`, on what TLS makes of the bytes waiting: session tickets and key updates
        keep a connection usable, application data or close_notify end it."""
        while True:
            try:
                more = self.inner.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                return True
            if not more:
                return True
            self._in.write(more)
        try:
            self._tls.read(1)
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError:
            return True
        return True

    def shutdown_write(self) -> None:
        with contextlib.suppress(Exception):
            self._tls.unwrap()  # queue close_notify
        with contextlib.suppress(OSError):
            if self._out.pending:  # best effort, without waiting: a full socket drops the close_notify
                self.inner.sock.send(self._out.read())

    def close(self) -> None:
        self.shutdown_write()
        self.inner.close()
