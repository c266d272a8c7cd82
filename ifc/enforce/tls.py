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
import ssl
import threading
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
        if pattern._network is not None:
            ips.append(pattern._network)
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


class TlsStream:
    """The server side of TLS on an already open asyncio stream pair, with an `ssl.SSLObject` over memory BIOs.

    Why not `loop.start_tls`: the hook has already read the ClientHello (to check its SNI against the CONNECT
    host before anything else happens), and `start_tls` cannot be handed bytes already read. Here they are
    simply fed to the TLS engine first. `reader` is an ordinary `asyncio.StreamReader` (with flow control:
    the pump stops reading the socket while it is full); `writer` has the `StreamWriter` methods the proxy
    uses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext,
                 first: bytes, limit: int):
        self._raw_reader, self._raw_writer = reader, writer
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._in.write(first)
        self._tls = context.wrap_bio(self._in, self._out, server_side=True)
        self.reader = asyncio.StreamReader(limit=limit)
        self.reader.set_transport(self)  # type: ignore[arg-type]  # pause_reading/resume_reading below
        self.writer = _TlsWriter(self)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._pump: asyncio.Task | None = None

    async def handshake(self, timeout: float) -> None:
        async def run() -> None:
            while True:
                try:
                    self._tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._flush()
                    data = await self._raw_reader.read(1 << 16)
                    if not data:
                        raise TlsFailure("the client closed the connection during the TLS handshake") from None
                    self._in.write(data)
                except ssl.SSLError as exc:
                    with contextlib.suppress(Exception):
                        await self._flush()  # the alert, so the client learns why
                    raise TlsFailure(_handshake_reason(exc)) from None
            await self._flush()

        try:
            await asyncio.wait_for(run(), timeout)
        except TimeoutError:
            raise TlsFailure(f"the TLS handshake did not finish within {timeout:g} s") from None
        except ConnectionError as exc:
            raise TlsFailure(f"the client went away during the TLS handshake ({exc})") from None
        self._pump = asyncio.get_running_loop().create_task(self._read_loop())

    async def _flush(self) -> None:
        if self._out.pending:
            self._raw_writer.write(self._out.read())
            await self._raw_writer.drain()

    async def _read_loop(self) -> None:
        """Decrypt what the client sends into `reader` until close_notify, EOF or an error."""
        try:
            while True:
                await self._flowing.wait()
                while True:
                    try:
                        data = self._tls.read(1 << 18)
                    except ssl.SSLWantReadError:
                        break
                    if not data:
                        raise ssl.SSLZeroReturnError
                    self.reader.feed_data(data)
                if self._out.pending:  # post-handshake messages (key update answers)
                    self._raw_writer.write(self._out.read())
                more = await self._raw_reader.read(1 << 18)
                if not more:
                    break
                self._in.write(more)
        except ssl.SSLZeroReturnError:
            pass
        except (ssl.SSLError, ConnectionError) as exc:
            self.reader.set_exception(ConnectionError(f"the tunnel's TLS stream failed: {exc}"))
            return
        except asyncio.CancelledError:
            return
        self.reader.feed_eof()

    # the transport side StreamReader calls for flow control
    def pause_reading(self) -> None:
        self._flowing.clear()

    def resume_reading(self) -> None:
        self._flowing.set()

    def write(self, data: bytes) -> None:
        if data:
            self._tls.write(data)
            self._raw_writer.write(self._out.read())

    def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        with contextlib.suppress(Exception):
            self._tls.unwrap()  # queue close_notify
        with contextlib.suppress(Exception):
            self._raw_writer.write(self._out.read())
        self._raw_writer.close()


class _TlsWriter:
    """The `StreamWriter` surface of a `TlsStream` that the proxy's request path uses."""

    def __init__(self, stream: TlsStream):
        self._stream = stream

    def write(self, data: bytes) -> None:
        self._stream.write(data)

    async def drain(self) -> None:
        await self._stream._raw_writer.drain()

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        self._stream.close()

    async def wait_closed(self) -> None:
        await self._stream._raw_writer.wait_closed()

    def get_extra_info(self, name: str, default=None):
        return self._stream._raw_writer.get_extra_info(name, default)
