"""The egress hook's HTTP/1.1 codec: bytes from the sandbox → a typed `ProxyRequest` → bytes to the upstream.

Framing is `h11`'s (sans-IO, RFC 9112: chunk sizes, Content-Length, 1xx, HEAD, 204/304, keep-alive,
close-delimited bodies), chosen by measurement over the hand parser it replaces and `httptools` (see
docs/architecture.md). On top, the rules a proxy needs that a server library leaves lenient:

* a head is refused before h11 sees it when a line ends in a bare LF, a header line is folded, a line or the
  header count is over `Limits`, or `Content-Length` appears twice (h11 merges equal copies; RFC 9112 §6.3
  lets a proxy refuse, and a hook that decides on one reading must not leave another to the upstream);
* `Content-Length` with `Transfer-Encoding` is refused (§6.1: a request smuggling signature), as is any
  transfer coding but exactly `chunked` (h11);
* the target is checked per RFC 3986 character by character (h11 only excludes controls and spaces), the
  authority is split strictly (no user information, a port in range, a host that is a name or an address).

The upstream only ever receives a request re-serialised from the decided `ProxyRequest` (`upstream_head`):
never a byte of the client's head. That is what tests/test_http_codec.py checks, differentially.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

import h11


@dataclass(frozen=True)
class Limits:
    max_head: int = 64 * 1024  # request or response head, bytes
    max_line: int = 8 * 1024  # request line or one header line
    max_headers: int = 100
    head_timeout: float = 10.0  # the whole head must arrive within this (slowloris)
    idle_timeout: float = 30.0  # between requests on a kept-alive connection
    io_timeout: float = 60.0  # one read or write on an open exchange
    connect_timeout: float = 10.0
    max_swap_body: int = 1 << 20  # bodies up to this are buffered, checked and swapped
    max_chunked_body: int = 64 << 20  # a chunked request body is de-chunked in memory up to this
    max_connections: int = 1024


class ProxyError(Exception):
    """A request the proxy answers itself: `status`, a one-line reason, the rule it is logged under."""

    def __init__(self, status: int, reason: str, rule: str = "egress: http"):
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
        self.rule = rule


# headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the proxy's own credentials
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "proxy-connection",
                        "te", "trailer", "transfer-encoding", "upgrade", "expect"))

# RFC 3986: path and query characters (pchar / "/" / "?"), a percent sign only as `%XX`
_TARGET = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*")
_REG_NAME = re.compile(r"[A-Za-z0-9\-._~]+")  # a host name (no sub-delims: no resolver takes them)


@dataclass(frozen=True)
class Framing:
    """How a request body is delimited: `length` bytes, `chunked`, or no body (`none`)."""

    kind: str
    length: int = 0


@dataclass(frozen=True)
class ProxyRequest:
    """One request as the hook decides it: the facts the monitor sees, then the addresses it resolved."""

    method: str
    form: str  # the target's form (RFC 9112 §3.2): origin, absolute, authority (CONNECT), asterisk
    scheme: str  # http for absolute-form, https inside a terminated tunnel or for CONNECT (or tcp)
    host: str
    port: int
    path: str  # origin-form for upstream ("/x?y"), "*" for asterisk-form, "" for CONNECT
    version: str  # "1.1" or "1.0"
    headers: tuple[tuple[str, str], ...] = field(default=())  # as received, names in their case
    framing: Framing = Framing("none")
    token: str | None = None
    sni: str | None = None  # the TLS ClientHello's server name, for a tunnel
    addresses: tuple[str, ...] = ()  # what the hook resolved and the monitor checked

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of a header, lower-cased (`Connection: keep-alive, Upgrade`)."""
        return {t.strip().lower() for k, v in self.headers if k.lower() == name.lower() for t in v.split(",")} - {""}

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 80 if self.scheme == "http" else 443
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def keep_alive(self) -> bool:
        return self.version == "1.1" and "close" not in self.tokens("connection")

    @property
    def upgrade(self) -> str | None:
        """The protocol asked for by `Upgrade` (with `Connection: upgrade`), e.g. `websocket`."""
        if "upgrade" in self.tokens("connection"):
            return self.header("upgrade") or None
        return None

    def with_(self, **changes) -> ProxyRequest:
        return replace(self, **changes)


# ------------------------------------------------------------------------------------------ decoding

def check_head(head: bytes, limits: Limits) -> None:
    """What h11 would accept but a proxy must not (see the module's docstring). `head` ends with a blank line."""
    lines = head.split(b"\r\n")
    if b"\n" in head.replace(b"\r\n", b""):
        raise ProxyError(400, "a line of the head ends in a bare LF or holds a bare CR")
    while lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise ProxyError(400, "empty request")
    if len(lines[0]) > limits.max_line:
        raise ProxyError(414, f"request line longer than {limits.max_line} bytes")
    if len(lines) - 1 > limits.max_headers:
        raise ProxyError(431, f"more than {limits.max_headers} header lines")
    lengths = 0
    for line in lines[1:]:
        if len(line) > limits.max_line:
            raise ProxyError(431, f"a header line is longer than {limits.max_line} bytes")
        if line[:1] in (b" ", b"\t"):
            raise ProxyError(400, "folded header lines are not accepted")
        if line[:15].lower() == b"content-length:":
            lengths += 1
            if not line[15:].strip(b" \t").isdigit():  # h11 takes `1, 1` as 1
                raise ProxyError(400, "Content-Length is not one decimal number")
    if lengths > 1:
        raise ProxyError(400, "Content-Length appears more than once")


def split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """`host[:port]` (RFC 3986 §3.2) → (lower-case host, port); no user information, no empty port."""
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ProxyError(400, f"bad authority `{authority[:100]}`")
        port_text = rest[1:] if rest else None
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ProxyError(400, f"bad IPv6 address `{host[:100]}`") from None
    else:
        host, sep, port_text = authority.partition(":")
        if not sep:
            port_text = None
        if "@" in authority:
            raise ProxyError(400, "user information in the target is not accepted")
        if not _REG_NAME.fullmatch(host):
            raise ProxyError(400, f"bad host `{host[:100]}`")
    if port_text is None:
        if default_port is None:
            raise ProxyError(400, "CONNECT needs `host:port`")
        return host.lower(), default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536 or len(port_text) > 5:
        raise ProxyError(400, f"bad port `{port_text[:20]}`")
    return host.lower(), int(port_text)


def token_from(value: str | None) -> str | None:
    """`Proxy-Authorization: Basic base64(ifc:TOKEN)` (any user name) or `Bearer TOKEN`."""
    if not value:
        return None
    kind, _, cred = value.strip().partition(" ")
    if kind.lower() == "bearer":
        return cred.strip() or None
    if kind.lower() != "basic":
        raise ProxyError(400, "Proxy-Authorization must be Basic (`ifc:TOKEN`) or Bearer")
    try:
        decoded = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ProxyError(400, "Proxy-Authorization is not valid base64") from None
    _user, sep, password = decoded.partition(":")
    if not sep:
        raise ProxyError(400, "Proxy-Authorization must be `ifc:TOKEN`")
    return unquote(password) or None


def _path(target: str) -> str:
    if not _TARGET.fullmatch(target):
        bad = next((c for c in target if not re.fullmatch(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]", c)), "%")
        raise ProxyError(400, f"the request target holds `{bad!r}`"[:120] + " (RFC 3986 allows only URI characters)")
    return target


def _framing(headers: list[tuple[str, str]]) -> Framing:
    names = {k.lower(): v for k, v in headers}
    if "transfer-encoding" in names and "content-length" in names:
        raise ProxyError(400, "both Transfer-Encoding and Content-Length (RFC 9112 §6.1)")
    if "transfer-encoding" in names:
        return Framing("chunked")  # h11 refused every other coding
    if "content-length" in names:
        return Framing("length", int(names["content-length"]))
    return Framing("none")


def new_server(limits: Limits) -> h11.Connection:
    """The codec for one exchange with the sandbox (the hook's server side)."""
    return h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)


def decode_request(conn: h11.Connection, head: bytes, limits: Limits = Limits(),
                   tunnel: ProxyRequest | None = None) -> ProxyRequest:
    """The request whose head (ending in a blank line) `conn` has just been given; with `tunnel` (the CONNECT
    of a terminated tunnel) an origin-form request inside it, whose Host must name the CONNECT authority."""
    check_head(head, limits)
    try:
        conn.receive_data(head)
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise ProxyError(exc.error_status_hint if exc.error_status_hint in (400, 414, 431, 501) else 400,
                         f"malformed request: {str(exc)[:200]}") from None
    if not isinstance(event, h11.Request):
        raise ProxyError(400, "malformed request")
    if event.http_version not in (b"1.1", b"1.0"):
        raise ProxyError(400, f"unsupported version `HTTP/{event.http_version.decode('latin-1')[:20]}`")
    method = event.method.decode("ascii")
    target = event.target.decode("ascii", "replace")
    version = event.http_version.decode("ascii")
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()]
    framing = _framing(headers)
    if tunnel is not None:
        return _tunnelled(tunnel, method, target, version, headers, framing)
    token = token_from(next((v for k, v in headers if k.lower() == "proxy-authorization"), None))
    if method == "CONNECT":
        host, port = split_authority(target, None)
        return ProxyRequest(method, "authority", "https", host, port, "", version, tuple(headers), framing, token)
    low = target[:8].lower()
    if low.startswith("https://"):
        raise ProxyError(400, "an https:// URL must be tunnelled with CONNECT")
    if not low.startswith("http://"):
        raise ProxyError(400, "not a proxy request: the target must be an absolute http:// URL")
    rest = target[7:]
    slash = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:slash], rest[slash:] or "/"
    if path.startswith("?"):
        path = "/" + path
    host, port = split_authority(authority, 80)
    return ProxyRequest(method, "absolute", "http", host, port, _path(path), version, tuple(headers), framing, token)


def _tunnelled(tunnel: ProxyRequest, method: str, target: str, version: str, headers: list[tuple[str, str]],
               framing: Framing) -> ProxyRequest:
    if method == "OPTIONS" and target == "*":
        form = "asterisk"
    elif method != "CONNECT" and target.startswith("/"):
        form = "origin"
    else:
        raise ProxyError(400, "inside a tunnel a request names only a path (`GET /x HTTP/1.1`)")
    hosts = [v for k, v in headers if k.lower() == "host"]
    if len(hosts) != 1:
        raise ProxyError(400, "a request inside a tunnel needs exactly one Host header")
    if split_authority(hosts[0], 443) != (tunnel.host, tunnel.port):
        raise ProxyError(400, f"Host `{hosts[0][:100]}` is not the tunnel's `{tunnel.authority}`")
    path = target if form == "asterisk" else _path(target)
    return ProxyRequest(method, form, "https", tunnel.host, tunnel.port, path, version, tuple(headers), framing,
                        tunnel.token, tunnel.sni, tunnel.addresses)


def parse_request(head: bytes, limits: Limits = Limits(), tunnel: ProxyRequest | None = None) -> ProxyRequest:
    """A proxy request from its head alone (the final blank line may be left off)."""
    if not head.endswith(b"\r\n\r\n"):
        head += b"\r\n\r\n"
    return decode_request(new_server(limits), head, limits, tunnel)


# ------------------------------------------------------------------------------------------ encoding

def upstream_request(req: ProxyRequest, length: int | None, keep_upgrade: bool = False) -> h11.Request:
    """What the upstream receives for a decided request: its method and origin-form path, `Host` from the
    decided authority (RFC 9112 §3.2.2: a proxy replaces the client's), the end-to-end headers as they
    came, and `Content-Length: length` when there is a body (None: none). `keep_upgrade`: forward
    `Upgrade`/`Connection: upgrade` (a WebSocket the hook relays as a stream)."""
    drop = HOP_BY_HOP | req.tokens("connection") | {"host", "content-length"}
    if keep_upgrade:
        drop -= {"upgrade"}
    headers = [("Host", req.authority)] + [(k, v) for k, v in req.headers if k.lower() not in drop]
    if keep_upgrade:
        headers.append(("Connection", "upgrade"))
    if length is not None:
        headers.append(("Content-Length", str(length)))
    return h11.Request(method=req.method, target=req.path,  # values as bytes: obs-text passes unchanged
                       headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers])


def upstream_head(req: ProxyRequest, length: int | None, keep_upgrade: bool = False) -> bytes:
    """The request head bytes the upstream receives (what the differential test compares with)."""
    return h11.Connection(h11.CLIENT).send(upstream_request(req, length, keep_upgrade))


def response_headers(response: h11.Response, scrub) -> list[tuple[bytes, bytes]]:
    """A response's headers for the sandbox: hop-by-hop ones dropped (the hook's codec frames the hop to the
    client itself: Content-Length kept, chunked or close-delimited bodies sent chunked to an HTTP/1.1 client),
    every value through `scrub` (same length: masks real secret values)."""
    named = {t.strip().lower() for k, v in response.headers if k == b"connection" for t in v.split(b",")}
    chunked = any(k == b"transfer-encoding" for k, _ in response.headers)
    drop = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"trailer", *named}
    if chunked:  # h11 reads a response with both as chunked (RFC 9112 §6.3): so does the client
        drop.add(b"content-length")
    out = [(raw, scrub(value)) for (raw, value), (low, _) in zip(response.headers.raw_items(), response.headers,
                                                                 strict=True) if low not in drop]
    if chunked:
        out.append((b"Transfer-Encoding", b"chunked"))
    return out
