"""The HTTP proxy: absolute-URI requests and CONNECT tunnels, every one decided by the monitor.

    HTTPS_PROXY=http://ifc:TOKEN@127.0.0.1:PORT   (curl, pip, git, npm, urllib, http.client)

One client connection → a loop of: read the head (bounded size, count and time) → parse it into a
`ProxyRequest` (garbage → 400 with a one-line reason) → `Egress.open` (monitor decision, resolution, address
checks) → forward. Plain HTTP is forwarded request by request on a fresh upstream connection to the
checked address (kept alive for the next request of the same client connection); sentinels in the request
are swapped for bound endpoints or refused, real secret values in responses are masked. CONNECT opens a
tunnel after reading the TLS ClientHello: its SNI must name the CONNECT host. Without a TLS ClientHello a
tunnel is raw TCP, allowed only where a `tcp://` endpoint rule names the host.

A tunnel to an endpoint some policy secret is bound to is terminated (`ifc.enforce.tls`): the hook answers
the handshake with the run CA's leaf for the CONNECT host and serves the origin-form requests inside (Host
must name the CONNECT authority) through the same path as plain HTTP — decision, taint, sentinel swap,
scrubbing — forwarding each over TLS verified against the system trust store (plus `--upstream-ca`). Every
other tunnel is blind: spliced as it is, so only a sentinel, never a real value, can leave through it.

Statuses: 400 garbage, 403 denied (reason in the body and `X-Ifc-Denied`), 408 slow client, 413 body too
large to check, 414/431 head too large, 502/504 upstream trouble, 503 too many connections.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import logging
import os
import re
import select
import socket
import ssl
import threading
from dataclasses import dataclass, field

from ifc.enforce.egress import Client, Egress, Flow, StreamFront, Verdict, connect_checked, socket_of
from ifc.enforce.secrets import SentinelWatch, StreamScrubber
from ifc.enforce.tls import Termination, TlsFailure, TlsStream
from ifc.match import Endpoint
from ifc.monitor.containment import connect_scheme

log = logging.getLogger("ifc.egress.http")


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


HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "proxy-connection",
                        "te", "trailer", "transfer-encoding", "upgrade", "expect"))
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_STATUS_TEXT = {400: "Bad Request", 403: "Forbidden", 408: "Request Timeout", 413: "Content Too Large",
                414: "URI Too Long", 431: "Request Header Fields Too Large", 502: "Bad Gateway",
                503: "Service Unavailable", 504: "Gateway Timeout"}


class ProxyError(Exception):
    """A request the proxy answers itself: `status` and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class _Stale(ProxyError):
    """A kept-alive upstream connection closed before answering (it may be retried once)."""


# ------------------------------------------------------------------------------------------ parsing

@dataclass(frozen=True)
class ProxyRequest:
    method: str
    scheme: str  # http for absolute-URI requests, https (or tcp) for CONNECT
    host: str
    port: int
    path: str  # origin-form for upstream ("/x?y"); "" for CONNECT
    version: str
    headers: tuple[tuple[str, str], ...] = field(default=())
    token: str | None = None

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 80 if self.scheme == "http" else 443
        return host if self.port == default else f"{host}:{self.port}"


def parse_head(head: bytes, limits: Limits = Limits()) -> tuple[str, str, str, list[tuple[str, str]]]:
    """Start line and headers of an HTTP/1.x head (without the final blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        raise ProxyError(400, "the head is not text") from None
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ProxyError(400, "empty request")
    if len(lines[0]) > limits.max_line:
        raise ProxyError(414, f"request line longer than {limits.max_line} bytes")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise ProxyError(400, "the request line is not `METHOD TARGET HTTP/1.x`")
    if len(lines) - 1 > limits.max_headers:
        raise ProxyError(431, f"more than {limits.max_headers} header lines")
    headers = []
    for line in lines[1:]:
        if len(line) > limits.max_line:
            raise ProxyError(431, f"a header line is longer than {limits.max_line} bytes")
        if line[:1] in (" ", "\t"):
            raise ProxyError(400, "folded header lines are not accepted")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise ProxyError(400, "a header line is not `Name: value`")
        if any(c in value for c in "\r\n\0"):
            raise ProxyError(400, "a header value holds a control character")
        headers.append((name, value.strip(" \t")))
    return parts[0], parts[1], parts[2], headers


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and not rest.startswith(":"):
            raise ProxyError(400, f"bad authority `{authority}`")
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            host, port_text = authority, None
    if "@" in host:
        raise ProxyError(400, "user information in the target is not accepted")
    if not host or not re.fullmatch(r"[A-Za-z0-9.\-_:]+", host):
        raise ProxyError(400, f"bad host `{host}`")
    if port_text is None or port_text == "":
        if default_port is None:
            raise ProxyError(400, "CONNECT needs `host:port`")
        return host.lower(), default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ProxyError(400, f"bad port `{port_text}`")
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
    from urllib.parse import unquote

    return unquote(password) or None


def parse_request(head: bytes, limits: Limits = Limits(), tunnel: ProxyRequest | None = None) -> ProxyRequest:
    """A proxy request (absolute URI or CONNECT), or with `tunnel` (the CONNECT of a terminated tunnel) an
    origin-form request inside it, whose Host must name the CONNECT authority."""
    method, target, version, headers = parse_head(head, limits)
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise ProxyError(400, f"unsupported version `{version[:20]}`")
    if not _TOKEN.match(method):
        raise ProxyError(400, "bad method")
    if tunnel is not None:
        return _tunnelled_request(tunnel, method, target, version, headers)
    token = token_from(next((v for k, v in headers if k.lower() == "proxy-authorization"), None))
    if method == "CONNECT":
        host, port = _split_authority(target, None)
        return ProxyRequest(method, "https", host, port, "", version, tuple(headers), token)
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
    if "#" in path:
        path = path.split("#", 1)[0]
    host, port = _split_authority(authority, 80)
    return ProxyRequest(method, "http", host, port, path, version, tuple(headers), token)


def _tunnelled_request(tunnel: ProxyRequest, method: str, target: str, version: str,
                       headers: list[tuple[str, str]]) -> ProxyRequest:
    if method == "CONNECT" or not target.startswith("/"):
        raise ProxyError(400, "inside a tunnel a request names only a path (`GET /x HTTP/1.1`)")
    hosts = [v for k, v in headers if k.lower() == "host"]
    if len(hosts) != 1:
        raise ProxyError(400, "a request inside a tunnel needs exactly one Host header")
    if _split_authority(hosts[0], 443) != (tunnel.host, tunnel.port):
        raise ProxyError(400, f"Host `{hosts[0][:100]}` is not the tunnel's `{tunnel.authority}`")
    path = target.split("#", 1)[0]
    return ProxyRequest(method, "https", tunnel.host, tunnel.port, path, version, tuple(headers), tunnel.token)


# ------------------------------------------------------------------------------------------ TLS ClientHello

def sni_from_client_hello(data: bytes) -> tuple[str | None, int]:
    """(server name or None, bytes still needed; 0 when complete). Raises ValueError if not a ClientHello."""
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


# ------------------------------------------------------------------------------------------ the server

class HttpProxy(StreamFront):
    """`tls`: terminate tunnels to endpoints a policy secret is bound to (None: every tunnel is blind)."""

    def __init__(self, egress: Egress, limits: Limits = Limits(), splice: bool = True,
                 tls: Termination | None = None):
        self.egress = egress
        self.limits = limits
        self.splice = splice  # tunnels and large bodies are pumped in a thread each, by splice(2) if not inspected
        self.tls = tls
        self._slots = asyncio.Semaphore(limits.max_connections)

    @property
    def _read_limit(self) -> int:
        return self.limits.max_head

    # ------------------------------------------------------------------------------------ per connection
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if peer else ""
        if self._slots.locked():
            await self._answer(writer, 503, "too many connections", close=True)
            return
        async with self._slots:
            try:
                await self._session(reader, writer, peer_text)
            except (TimeoutError, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            except Exception:
                log.exception("internal error in the proxy")
            finally:
                writer.close()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await writer.wait_closed()

    async def _session(self, reader, writer, peer: str, tunnel: tuple[ProxyRequest, Client] | None = None) -> None:
        """The requests of one client connection, or of one terminated tunnel (its CONNECT and client)."""
        upstreams: dict = {}  # (addresses, port) -> a kept-alive upstream connection of this client
        try:
            first = True
            while await self._one(reader, writer, peer, first, upstreams, tunnel):
                first = False
        finally:
            for _r, up_writer in upstreams.values():
                up_writer.close()

    async def _read_head(self, reader: asyncio.StreamReader, first: bool) -> bytes | None:
        """The next request head, None at a clean end of the connection."""
        limits = self.limits
        if not first:  # wait for the next request (idle), then give its head `head_timeout`
            try:
                await asyncio.wait_for(_peek(reader), limits.idle_timeout)
            except TimeoutError:
                return None
            if reader.at_eof() and not reader._buffer:  # type: ignore[attr-defined]
                return None
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), limits.head_timeout)
        except asyncio.LimitOverrunError:
            raise ProxyError(431, f"the request head is larger than {limits.max_head} bytes") from None
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return None
            raise ProxyError(400, "the connection ended inside the request head") from None
        except TimeoutError:
            raise ProxyError(408, f"the request head did not arrive within {limits.head_timeout:g} s") from None

    async def _one(self, reader, writer, peer: str, first: bool, upstreams: dict,
                   tunnel: tuple[ProxyRequest, Client] | None = None) -> bool:
        try:
            head = await self._read_head(reader, first)
            if head is None:
                return False
            req = parse_request(head[:-4], self.limits, tunnel[0] if tunnel else None)
        except ProxyError as exc:
            who = tunnel[1] if tunnel else Client("session", None, peer)
            self.egress.refuse(who, "connect", "(garbage)", exc.reason, "egress: http", exc.status)
            await self._answer(writer, exc.status, exc.reason, close=True)
            return False
        client = tunnel[1] if tunnel else self.egress.client(req.token, peer)
        flow = Flow(f"{'tunnel' if req.method == 'CONNECT' else req.method} to {req.authority} from {peer}")
        flow.attach(socket_of(writer))
        try:
            if req.method == "CONNECT":
                await self._connect(req, client, reader, writer, flow)
                return False
            return await self._forward(req, client, reader, writer, upstreams, flow)
        finally:
            self.egress.close(flow)

    async def _answer(self, writer, status: int, reason: str, close: bool, event: int | None = None,
                      version: str = "HTTP/1.1") -> None:
        line = reason.replace("\r", " ").replace("\n", " ")
        body = f"ifc: {line}\n".encode()
        head = [f"{version} {status} {_STATUS_TEXT.get(status, 'Error')}", "Content-Type: text/plain; charset=utf-8",
                f"Content-Length: {len(body)}"]
        if status == 403:
            head.append("X-Ifc-Denied: " + line.encode("ascii", "replace").decode()[:1000])
            if event is not None:
                head.append(f"X-Ifc-Event: {event}")
        head.append("Connection: close" if close else "Connection: keep-alive")
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await asyncio.wait_for(writer.drain(), self.limits.io_timeout)

    async def _deny(self, writer, verdict: Verdict, close: bool, version: str = "HTTP/1.1") -> None:
        event = verdict.decision.event if verdict.decision is not None else None
        await self._answer(writer, verdict.status, verdict.reason, close=close, event=event, version=version)

    # ------------------------------------------------------------------------------------ plain HTTP
    async def _read_body(self, req: ProxyRequest, reader) -> tuple[bytes | None, int]:
        """(the whole body when small enough to check in memory, else None; its Content-Length)."""
        limits = self.limits
        te = (req.header("transfer-encoding") or "").lower()
        cl = req.header("content-length")
        if te and cl is not None:
            raise ProxyError(400, "both Transfer-Encoding and Content-Length")
        if te:
            if te != "chunked":
                raise ProxyError(400, f"unsupported Transfer-Encoding `{te[:40]}`")
            return await self._dechunk(reader), -1
        if cl is None:
            return b"", 0
        if not cl.isdigit():
            raise ProxyError(400, "bad Content-Length")
        length = int(cl)
        if length <= limits.max_swap_body:
            return await asyncio.wait_for(reader.readexactly(length), limits.io_timeout), length
        return None, length

    async def _dechunk(self, reader) -> bytes:
        limits = self.limits
        out = bytearray()
        while True:
            line = await asyncio.wait_for(reader.readuntil(b"\r\n"), limits.io_timeout)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProxyError(400, "bad chunk size") from None
            if size == 0:
                while (await asyncio.wait_for(reader.readuntil(b"\r\n"), limits.io_timeout)) != b"\r\n":
                    pass  # trailers are dropped
                return bytes(out)
            if len(out) + size > limits.max_chunked_body:
                raise ProxyError(413, f"a chunked body over {limits.max_chunked_body} bytes")
            out += await asyncio.wait_for(reader.readexactly(size), limits.io_timeout)
            if await asyncio.wait_for(reader.readexactly(2), limits.io_timeout) != b"\r\n":
                raise ProxyError(400, "a chunk is not followed by CRLF")

    async def _forward(self, req: ProxyRequest, client: Client, reader, writer, upstreams: dict,
                       flow: Flow) -> bool:
        """One request. Its decision holds until its body has been sent: `flow` is cut (both sockets shut) if
        the run's taint rises past the endpoint's clearance before then; the response only flows in."""
        limits = self.limits
        keep_client = req.version == "HTTP/1.1" and (req.header("connection") or "").lower() != "close"
        verdict = await self.egress.open(client, req.scheme, req.host, req.port, flow=flow)
        if not verdict.allowed:
            await self._deny(writer, verdict, close=True, version=req.version)
            return False
        if (req.header("expect") or "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body, length = await self._read_body(req, reader)
        except ProxyError as exc:
            await self._answer(writer, exc.status, exc.reason, close=True)
            return False
        connection_named = {t.strip().lower() for t in (req.header("connection") or "").split(",")}
        lines = [f"{req.method} {req.path} HTTP/1.1", f"Host: {req.authority}"]
        for name, value in req.headers:
            low = name.lower()
            if low in HOP_BY_HOP or low in connection_named or low in ("host", "content-length"):
                continue
            lines.append(f"{name}: {value}")
        if length != 0 or body:
            lines.append(f"Content-Length: {len(body) if body is not None else length}")
        up_head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        endpoint = verdict.endpoint
        swap, refused = self.egress.check_secrets(client, endpoint, up_head + (body or b""))
        if refused is not None:
            await self._deny(writer, refused, close=True, version=req.version)
            return False
        if swap:
            up_head = self.egress.vault.swap(up_head, swap)
            if body:
                body = self.egress.vault.swap(body, swap)
                up_head = re.sub(rb"\r\nContent-Length: \d+\r\n", f"\r\nContent-Length: {len(body)}\r\n".encode(),
                                 up_head, count=1)
        key = (verdict.addresses, req.port)
        pooled = upstreams.pop(key, None)
        if pooled is not None and pooled[0].at_eof():
            pooled[1].close()
            pooled = None
        while True:
            reused = pooled is not None
            try:
                up_reader, up_writer = pooled or await connect_checked(
                    verdict.addresses, req.port, limits.connect_timeout,
                    tls=self.tls.upstream if self.tls and req.scheme == "https" else None, server_hostname=req.host)
            except ssl.SSLError as exc:
                refused = self.egress.refuse(client, "connect", str(endpoint), "the upstream's TLS did not verify "
                                             f"({(exc.reason or str(exc)).lower().replace('_', ' ')})",
                                             "egress: tls", 502)
                await self._answer(writer, 502, refused.reason, close=True)
                return False
            except OSError as exc:
                await self._answer(writer, 502, f"cannot reach {endpoint}: {exc}", close=True)
                return False
            pooled = None
            keep_up = False
            flow.attach(socket_of(up_writer))
            try:
                if not flow.alive:
                    raise ConnectionError(flow.cut_reason)
                up_writer.write(up_head)
                if body:
                    up_writer.write(body)
                await asyncio.wait_for(up_writer.drain(), limits.io_timeout)
                if body is None:
                    problem = await self._stream_body(client, endpoint, reader, up_writer, length, flow)
                    if problem is not None:
                        await self._deny(writer, problem, close=True, version=req.version)
                        return False
                self.egress.close(flow)  # the request is out: from here on data only comes in
                keep, keep_up = await self._relay_response(req, up_reader, writer, keep_client, up_writer)
                return keep
            except _Stale:
                if reused and body is not None:
                    continue  # the kept-alive upstream connection had closed: once more on a fresh one
                await self._answer(writer, 502, "the upstream closed without a response", close=True)
                return False
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                if reused and body is not None and not isinstance(exc, asyncio.IncompleteReadError):
                    continue
                raise
            except TimeoutError:
                await self._answer(writer, 504, f"{endpoint} did not answer in time", close=True)
                return False
            except ProxyError as exc:
                await self._answer(writer, exc.status, exc.reason, close=True)
                return False
            finally:
                if keep_up:
                    upstreams[key] = (up_reader, up_writer)
                else:
                    up_writer.close()

    async def _stream_body(self, client, endpoint: Endpoint, reader, up_writer, length: int,
                           flow: Flow) -> Verdict | None:
        """A body too large to swap in memory: streamed, and refused if a sentinel shows up in it."""
        watch = SentinelWatch(self.egress.vault)
        left = length
        while left > 0:
            chunk = await asyncio.wait_for(reader.read(min(left, 1 << 16)), self.limits.io_timeout)
            if not chunk:
                raise ConnectionError("client went away")
            left -= len(chunk)
            if watch.found(chunk):
                return self.egress.refuse(client, "connect", str(endpoint),
                                          "a secret's sentinel in a request body too large to check in memory",
                                          "egress: secrets")
            if not flow.alive:  # the sockets are shut already; never hand the loop another byte
                raise ConnectionError(flow.cut_reason)
            up_writer.write(chunk)
            await asyncio.wait_for(up_writer.drain(), self.limits.io_timeout)
        return None

    async def _relay_response(self, req: ProxyRequest, up_reader, writer, keep_client: bool,
                              up_writer=None) -> tuple[bool, bool]:
        """Forward one response; (keep the client connection, keep the upstream connection)."""
        limits = self.limits
        vault = self.egress.vault
        while True:
            try:
                head = await asyncio.wait_for(up_reader.readuntil(b"\r\n\r\n"), limits.io_timeout)
            except asyncio.LimitOverrunError:
                raise ProxyError(502, "the upstream response head is too large") from None
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    raise _Stale(502, "the upstream closed without a response") from None
                raise ProxyError(502, "the upstream closed inside its response head") from None
            try:
                start, status_text, _rest, headers = parse_head(head[:-4] + b"", Limits(max_line=limits.max_head))
            except ProxyError:
                status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = status_line.split(" ", 2)
                if len(parts) < 2:
                    raise ProxyError(502, "the upstream sent a malformed response") from None
                start, status_text = parts[0], parts[1]
                headers = []
            if not start.startswith("HTTP/1.") or not status_text.isdigit():
                raise ProxyError(502, "the upstream sent a malformed response")
            status = int(status_text)
            if 100 <= status < 200 and status != 101:
                continue  # interim responses are not forwarded (the proxy answered Expect itself)
            break
        low = {k.lower(): v for k, v in headers}
        te = (low.get("transfer-encoding") or "").lower()
        no_body = req.method == "HEAD" or status in (204, 304) or status == 101
        framed = no_body or "chunked" in te or "content-length" in low
        keep = keep_client and framed
        keep_up = framed and status != 101 and start == "HTTP/1.1" and \
            "close" not in (low.get("connection") or "").lower()
        out = [head.split(b"\r\n", 1)[0].decode("latin-1")]
        for name, value in headers:
            if name.lower() in ("connection", "keep-alive", "proxy-connection"):
                continue
            out.append(f"{name}: {value}")
        out.append("Connection: keep-alive" if keep else "Connection: close")
        out_head = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
        writer.write(vault.scrub(out_head) if vault else out_head)
        scrub = StreamScrubber(vault)
        if no_body:
            pass
        elif "chunked" in te:
            await self._relay_chunked(up_reader, writer, scrub)
        elif "content-length" in low:
            left = int(low["content-length"]) if low["content-length"].isdigit() else 0
            if self.splice and req.scheme == "http" and up_writer is not None and left > 1 << 20 \
                    and hasattr(os, "splice"):
                # a large body leaves the event loop: a thread moves it between the sockets — by the kernel
                # (splice) when there is nothing to scrub, else read, scrubbed and written with one copy each
                # way instead of the stream buffers' four. The upstream connection is not reused after.
                up_writer.transport.pause_reading()  # first: nothing more may land in the reader's buffer
                with memoryview(up_reader._buffer) as view:  # type: ignore[attr-defined]
                    buffered = bytes(view[:left])  # the body's start, already read: the thread sends it first
                del up_reader._buffer[:len(buffered)]  # type: ignore[attr-defined]
                await asyncio.wait_for(_flushed(writer), limits.io_timeout)  # the head goes before
                left -= len(buffered)
                src, dst = up_writer.get_extra_info("socket").fileno(), writer.get_extra_info("socket").fileno()
                pump = functools.partial(_pump_scrubbed, scrub=scrub) if vault else _pump_count
                moved = await asyncio.to_thread(pump, src, dst, left, scrub.feed(buffered))
                keep_up = False
                if moved < left:
                    raise ConnectionError("the body was cut short")
                left = 0
            while left > 0:
                chunk = await asyncio.wait_for(up_reader.read(min(left, 1 << 20)), limits.io_timeout)
                if not chunk:
                    keep = keep_up = False
                    break
                left -= len(chunk)
                writer.write(scrub.feed(chunk))
                await asyncio.wait_for(writer.drain(), limits.io_timeout)
            writer.write(scrub.flush())
        else:
            while chunk := await asyncio.wait_for(up_reader.read(1 << 20), limits.io_timeout):
                writer.write(scrub.feed(chunk))
                await asyncio.wait_for(writer.drain(), limits.io_timeout)
            writer.write(scrub.flush())
        await asyncio.wait_for(writer.drain(), limits.io_timeout)
        return keep, keep_up

    async def _relay_chunked(self, up_reader, writer, scrub: StreamScrubber) -> None:
        limits = self.limits
        while True:
            line = await asyncio.wait_for(up_reader.readuntil(b"\r\n"), limits.io_timeout)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProxyError(502, "the upstream sent a bad chunk") from None
            if size == 0:
                tail = scrub.flush()
                if tail:
                    writer.write(f"{len(tail):x}\r\n".encode() + tail + b"\r\n")
                writer.write(b"0\r\n")
                while True:
                    trailer = await asyncio.wait_for(up_reader.readuntil(b"\r\n"), limits.io_timeout)
                    writer.write(trailer)
                    if trailer == b"\r\n":
                        return
            data = await asyncio.wait_for(up_reader.readexactly(size), limits.io_timeout)
            if await asyncio.wait_for(up_reader.readexactly(2), limits.io_timeout) != b"\r\n":
                raise ProxyError(502, "the upstream sent a chunk not followed by CRLF")
            payload = scrub.feed(data)
            if payload:
                writer.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            await asyncio.wait_for(writer.drain(), limits.io_timeout)

    # ------------------------------------------------------------------------------------ CONNECT
    async def _connect(self, req: ProxyRequest, client: Client, reader, writer, flow: Flow) -> None:
        """A tunnel, blind or terminated: decided when it opens and again whenever the run's taint rises for
        as long as it is open (`flow` is cut, both sockets shut, when it is no longer cleared)."""
        limits = self.limits
        scheme = connect_scheme(self.egress.monitor.policy, req.host, req.port)
        raw = scheme == "tcp"
        verdict = await self.egress.open(client, scheme, req.host, req.port, flow=flow)
        if not verdict.allowed:
            await self._deny(writer, verdict, close=True, version=req.version)
            return
        writer.write(f"{req.version} 200 Connection established\r\n\r\n".encode())
        await asyncio.wait_for(writer.drain(), limits.io_timeout)
        first = b""
        if not raw:
            try:
                first = await asyncio.wait_for(self._client_hello(reader), limits.head_timeout)
                sni = sni_from_client_hello(first)[0]
            except (ValueError, IndexError) as exc:
                self.egress.refuse(client, "connect", str(verdict.endpoint), f"not a TLS ClientHello ({exc}); raw "
                                   "TCP needs a `tcp://` endpoint rule", "egress: tls")
                return
            except TimeoutError:
                self.egress.refuse(client, "connect", str(verdict.endpoint),
                                   f"no TLS ClientHello within {limits.head_timeout:g} s", "egress: tls")
                return
            if sni is None and not _is_ip(req.host):
                self.egress.refuse(client, "connect", str(verdict.endpoint),
                                   "the TLS ClientHello names no server (SNI)", "egress: sni")
                return
            if sni is not None and sni != req.host:
                self.egress.refuse(client, "connect", str(verdict.endpoint),
                                   f"the TLS ClientHello names `{sni}`, not the CONNECT host `{req.host}`",
                                   "egress: sni")
                return
            if self.tls is not None and self.tls.terminates(verdict.endpoint):
                await self._terminate(req, client, verdict.endpoint, reader, writer, first)
                return
        try:
            up_reader, up_writer = await connect_checked(verdict.addresses, req.port, limits.connect_timeout)
        except OSError:
            return
        flow.attach(socket_of(up_writer))
        try:
            if not flow.alive:
                return
            if first:
                up_writer.write(first)
            if raw and self.egress.vault:
                await asyncio.gather(self._pipe(reader, up_writer, client, verdict.endpoint),
                                     self._pipe(up_reader, writer))
            elif self.splice and hasattr(os, "splice"):
                await _splice_tunnel(reader, writer, up_reader, up_writer)
            else:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            up_writer.close()

    async def _terminate(self, req: ProxyRequest, client: Client, endpoint: Endpoint, reader, writer,
                         first: bytes) -> None:
        """Answer the TLS handshake with the run CA's leaf for the CONNECT host, then serve the requests inside
        like plain HTTP ones (each decided, sentinels swapped, responses scrubbed), forwarded over verified TLS."""
        pending = bytes(reader._buffer)  # type: ignore[attr-defined]  # sent after the ClientHello, unread
        reader._buffer.clear()  # type: ignore[attr-defined]
        tls = TlsStream(reader, writer, self.tls.ca.server_context(req.host), first + pending, self.limits.max_head)
        try:
            await tls.handshake(self.limits.head_timeout)
        except TlsFailure as exc:
            self.egress.refuse(client, "connect", str(endpoint), exc.reason, "egress: tls")
            return
        try:
            await self._session(tls.reader, tls.writer, client.peer, (req, client))
        finally:
            tls.close()

    async def _client_hello(self, reader) -> bytes:
        data = b""
        while True:
            try:
                _sni, need = sni_from_client_hello(data)
            except ValueError:
                if data[:1] != b"\x16":
                    raise ValueError("the first bytes are not a TLS handshake") from None
                raise
            if need == 0:
                return data
            more = await reader.read(need)
            if not more:
                raise ValueError("the connection ended inside the ClientHello")
            data += more

    async def _pipe(self, src, dst, client: Client | None = None, endpoint: Endpoint | None = None) -> None:
        watch = SentinelWatch(self.egress.vault) if client is not None else None
        try:
            while True:
                chunk = await asyncio.wait_for(src.read(1 << 20), 300)
                if not chunk:
                    break
                if watch is not None and watch.found(chunk):
                    self.egress.refuse(client, "connect", str(endpoint), "a secret's sentinel in a raw TCP "
                                       "stream (sentinels are swapped only in HTTP)", "egress: secrets")
                    break
                dst.write(chunk)
                await asyncio.wait_for(dst.drain(), self.limits.io_timeout)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                if dst.can_write_eof():
                    dst.write_eof()
                else:
                    dst.close()


async def _peek(reader: asyncio.StreamReader) -> None:
    """Wait until the reader has data or reached EOF, consuming nothing."""
    if reader._buffer or reader.at_eof():  # type: ignore[attr-defined]
        return
    await reader._wait_for_data("peek")  # type: ignore[attr-defined]


def _is_ip(host: str) -> bool:
    from ifc.enforce.egress import is_ip_literal

    return is_ip_literal(host)


TUNNEL_IDLE = 300.0  # seconds a tunnel may sit silent in both directions


async def _flushed(writer) -> None:
    """Wait until the transport has sent all it holds, not just until it is below its high-water mark: a
    thread about to write to the socket itself must not overtake bytes still queued in the event loop."""
    transport = writer.transport
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0)
    try:
        await writer.drain()
    finally:
        transport.set_write_buffer_limits(high=high, low=low)


async def _splice_tunnel(reader, writer, up_reader, up_writer) -> None:
    """Hand a checked tunnel to the kernel: asyncio stops reading both sockets, the bytes it already holds go
    first, then one thread per direction moves data with splice(2) through a pipe, never into Python."""
    await _flushed(writer)
    await _flushed(up_writer)
    writer.transport.pause_reading()
    up_writer.transport.pause_reading()
    pending = [bytes(reader._buffer), bytes(up_reader._buffer)]  # type: ignore[attr-defined]
    reader._buffer.clear()  # type: ignore[attr-defined]
    up_reader._buffer.clear()  # type: ignore[attr-defined]
    a = os.dup(writer.get_extra_info("socket").fileno())
    b = os.dup(up_writer.get_extra_info("socket").fileno())
    loop = asyncio.get_running_loop()
    done = [loop.create_future(), loop.create_future()]

    def run(src: int, dst: int, first: bytes, future) -> None:
        try:
            _pump(src, dst, first)
        except OSError:
            pass
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))

    try:
        for args in ((a, b, pending[0], done[0]), (b, a, pending[1], done[1])):
            threading.Thread(target=run, args=args, name="ifc-tunnel", daemon=True).start()
        await asyncio.gather(*done)
    finally:
        os.close(a)
        os.close(b)


def _pump(src: int, dst: int, first: bytes) -> None:
    os.set_blocking(dst, True)
    if first:
        with socket.socket(fileno=os.dup(dst)) as out:
            out.sendall(first)
    r, w = os.pipe()
    try:
        with contextlib.suppress(OSError):
            import fcntl

            fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
        while True:
            ready, _, _ = select.select([src], [], [], TUNNEL_IDLE)
            if not ready:
                break
            try:
                n = os.splice(src, w, 1 << 20, flags=getattr(os, "SPLICE_F_NONBLOCK", 2))
            except BlockingIOError:
                continue
            if n == 0:
                break
            while n:
                n -= os.splice(r, dst, n)
    finally:
        os.close(r)
        os.close(w)
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(dst)) as out:
            out.shutdown(socket.SHUT_WR)


def _send_all(dst: int, data: bytes, writable: select.poll) -> None:
    """Write all of `data` to the non-blocking socket `dst`, waiting (at most TUNNEL_IDLE) while it is full."""
    out = memoryview(data)
    while out:
        events = writable.poll(TUNNEL_IDLE * 1000)
        if not events:
            raise TimeoutError("the client stopped reading")
        if events[0][1] & (select.POLLHUP | select.POLLERR):
            raise ConnectionError("the client went away")
        with contextlib.suppress(BlockingIOError):
            out = out[os.write(dst, out):]


def _writable(dst: int) -> select.poll:
    poller = select.poll()
    poller.register(dst, select.POLLOUT)
    return poller


def _pump_count(src: int, dst: int, count: int, first: bytes = b"") -> int:
    """Send `first`, then move exactly `count` bytes src → dst with splice(2), leaving both (non-blocking)
    sockets as they were."""
    import fcntl

    _send_all(dst, first, _writable(dst))
    r, w = os.pipe()
    moved = inpipe = 0
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
        capacity = fcntl.fcntl(w, 1032)  # F_GETPIPE_SZ
        nonblock = getattr(os, "SPLICE_F_NONBLOCK", 2)
        poller = select.poll()
        while count > 0 or inpipe:
            want_read = count > 0 and inpipe < capacity
            poller.register(src, select.POLLIN if want_read else 0)
            poller.register(dst, select.POLLOUT if inpipe else 0)
            events = dict(poller.poll(TUNNEL_IDLE * 1000))
            poller.unregister(src)
            poller.unregister(dst)
            if not events:
                break
            if events.get(dst, 0) & (select.POLLHUP | select.POLLERR):
                raise ConnectionError("the client went away")
            if want_read and events.get(src):
                try:
                    n = os.splice(src, w, min(count, capacity - inpipe), flags=nonblock)
                except BlockingIOError:
                    n = -1
                if n == 0:
                    count = 0  # the upstream closed early: deliver what is in the pipe, then stop
                elif n > 0:
                    count -= n
                    inpipe += n
            if inpipe and events.get(dst):
                try:
                    m = os.splice(r, dst, inpipe, flags=nonblock)
                except BlockingIOError:
                    m = 0
                inpipe -= m
                moved += m
    finally:
        os.close(r)
        os.close(w)
    return moved


def _pump_scrubbed(src: int, dst: int, count: int, first: bytes, scrub: StreamScrubber) -> int:
    """Send `first` (already scrubbed), then move `count` bytes src → dst through `scrub`, in this thread,
    straight between the (non-blocking) sockets. Returns the bytes read; what `scrub` still holds back is the
    caller's to flush."""
    readable, writable = select.poll(), _writable(dst)
    readable.register(src, select.POLLIN)
    _send_all(dst, first, writable)
    done = 0
    while done < count:
        if not readable.poll(TUNNEL_IDLE * 1000):
            break
        try:
            chunk = os.read(src, min(count - done, 1 << 20))
        except BlockingIOError:
            continue
        if not chunk:
            break
        done += len(chunk)
        _send_all(dst, scrub.feed(chunk), writable)
    return done
