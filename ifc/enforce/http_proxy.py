"""The HTTP proxy: absolute-URI requests and CONNECT tunnels, every one decided by the monitor.

    HTTPS_PROXY=http://ifc:TOKEN@127.0.0.1:PORT   (curl, pip, git, npm, urllib, http.client)

Every exchange follows one pipeline: **parse → facts → monitor → act**.

  parse    `ifc.enforce.http_codec` reads the head (bounded size, count and time) and decodes it strictly
           (h11, RFC 9112, plus the rules a proxy needs) into a typed `ProxyRequest`; garbage gets 400 and a
           logged reason (`Egress.refuse` → `Monitor.refuse`), never a traceback
  facts    `_decide`: the request's facts (method, target form, authority, headers, framing; SNI for a
           tunnel) meet the monitor there and nowhere else, through `Egress.open`, which also resolves the
           name and has the addresses checked; the request is stamped with the addresses it may use
  act      relay: plain HTTP is re-serialised from the decided request (never a byte of the client's head)
           and sent to a checked address over a connection kept alive for the next request of the same
           client; sentinels are swapped for bound endpoints or refused; the response passes through every
           status, 1xx, HEAD, 204/304, chunked and close-delimited bodies, with real secret values masked
           (`_relay_response`, the one place a response body streams through `StreamScrubber`)

CONNECT opens a tunnel after reading the TLS ClientHello: its SNI must name the CONNECT host. Without a
ClientHello a tunnel is raw TCP, allowed only where a `tcp://` endpoint rule names the host. A tunnel to an
endpoint some policy secret is bound to is terminated (`ifc.enforce.tls`): the hook answers the handshake
with the run CA's leaf for the CONNECT host and serves the origin-form requests inside through the same
pipeline (Host must name the CONNECT authority), forwarding each over TLS verified against the system trust
store (plus `--upstream-ca`). Every other tunnel is blind: spliced as it is (`ifc.enforce.splice`), so only
a sentinel, never a real value, can leave through it.

Streams: a plain request is registered with the monitor (`Flow`) until its body has been sent; a tunnel and
an upgraded connection (WebSocket over plain http://) for their whole life. `Upgrade` is refused where a
secret is bound (the hook could neither swap nor scrub inside it), and so is HTTP/2: the run CA's server
context offers only http/1.1 by ALPN, and a prior-knowledge preface is not HTTP/1.x (400).

Statuses: 400 garbage, 403 denied (reason in the body and `X-Ifc-Denied`), 426 an `Upgrade` refused where a
secret is bound (likewise explained: the same request without it is served, and a client that can fall back takes
426 as its cue — Codex then uses SSE at once, where a 403 cost it ~10 s of retries), 408 slow client, 413 body too
large to check, 414/431 head too large, 501 a transfer coding other than chunked, 502/504 upstream trouble,
503 too many connections.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import os
import socket
from collections.abc import Iterable

import h11

from ifc.enforce.credentials import Issued, foreign_credentials
from ifc.enforce.denial import denial_lines
from ifc.enforce.egress import Client, Egress, Flow, Verdict
from ifc.enforce.encodings import BodyScrubber, EncodingRefused, identity_only
from ifc.enforce.http_codec import (
    Limits,
    ProxyError,
    ProxyRequest,
    decode_request,
    new_server,
    parse_request,
    response_headers,
    upstream_head,
    upstream_request,
)
from ifc.enforce.secrets import SentinelWatch, StreamScrubber
from ifc.enforce.splice import TUNNEL_IDLE, pump_count, pump_scrubbed, splice_tunnel
from ifc.enforce.tls import Termination, TlsFailure, TlsStream, sni_from_client_hello
from ifc.enforce.wire import SocketWire, Wire, open_socket
from ifc.match import Endpoint
from ifc.monitor.containment import connect_scheme, is_ip_literal

__all__ = ["HttpProxy", "Limits", "ProxyError", "ProxyRequest", "parse_request", "sni_from_client_hello"]

log = logging.getLogger("ifc.egress.http")

_STATUS_TEXT = {400: "Bad Request", 403: "Forbidden", 408: "Request Timeout", 413: "Content Too Large",
                414: "URI Too Long", 426: "Upgrade Required", 431: "Request Header Fields Too Large",
                501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
_SPLICE_BODY = 1 << 20  # a plain-HTTP response body larger than this leaves the event loop


def _basic(name: str, value: str) -> bytes | None:
    """The `user:password` of an `Authorization: Basic` value, or None for any other header or scheme."""
    scheme, _, token = value.strip().partition(" ")
    if name.lower() != "authorization" or scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(token.strip(), validate=True)
    except ValueError:
        return None


def _basic_credentials(headers) -> bytes:
    """Basic credentials decoded, so a sentinel inside one is found (and judged) like any other."""
    return b"".join(b"\n" + decoded for name, value in headers if (decoded := _basic(name, value)) is not None)


def _pieces(got: bytes | Iterable[bytes]) -> list[bytes]:
    """What a scrubber gave for a chunk, as non-empty pieces: `StreamScrubber` gives bytes (what it may relay
    yet), `BodyScrubber` an iterable of decoded, masked pieces."""
    if isinstance(got, bytes | bytearray):
        return [bytes(got)] if got else []
    return [piece for piece in got if piece]


class _Stale(Exception):
    """A kept-alive upstream connection closed before answering (the request may be retried once)."""


class HttpProxy:
    """`tls`: terminate tunnels to endpoints a policy secret is bound to (None: every tunnel is blind)."""

    def __init__(self, egress: Egress, limits: Limits | None = None, splice: bool = True,
                 tls: Termination | None = None):
        self.egress = egress
        self.limits = limits = limits or Limits()
        self.splice = splice and hasattr(os, "splice")  # tunnels and large bodies move in the kernel
        self.tls = tls
        self._slots = asyncio.Semaphore(limits.max_connections)
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task] = set()
        self.issued = Issued()  # cookies bound hosts set in this run: the sandbox's jar is no foreign credential

    # ------------------------------------------------------------------------------------ listening
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(1024)
        listener.setblocking(False)
        self._listener = listener
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener)
        return listener.getsockname()[:2]

    async def close(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        if not self._tasks:
            return
        # connections whose clients have gone finish relaying what they hold; the rest are cut after 2 s
        _done, pending = await asyncio.wait(set(self._tasks), timeout=2)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1)

    def _accept(self, listener: socket.socket) -> None:
        """A connection is waiting (called by the loop): its own task, on its own Wire."""
        try:
            sock, peer = listener.accept()
        except OSError:  # taken by another wake-up, or the listener was closed
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.get_running_loop().create_task(self._serve(SocketWire(sock, self.limits.io_timeout),
                                                                     f"{peer[0]}:{peer[1]}"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, wire: SocketWire, peer: str) -> None:
        try:
            if self._slots.locked():
                await self._answer(wire, 503, "too many connections")
                return
            async with self._slots:
                await self._session(wire, peer)
        except (TimeoutError, OSError, asyncio.CancelledError):
            pass
        except Exception:  # fail closed: the connection ends; the reason goes to the daemon's log
            log.exception("internal error in the proxy")
        finally:
            wire.close()

    # ------------------------------------------------------------------------------------ parse
    async def _session(self, wire: Wire, peer: str, tunnel: tuple[ProxyRequest, Client] | None = None) -> None:
        """The requests of one client connection, or of one terminated tunnel (its CONNECT and client)."""
        upstreams: dict = {}  # (scheme, addresses, port, host) -> a kept-alive upstream Wire of this client
        try:
            first = True
            while await self._exchange(wire, peer, first, upstreams, tunnel):
                first = False
        finally:
            for up in upstreams.values():
                up.close()

    async def _read_head(self, wire: Wire, first: bool) -> bytes | None:
        """The next request head (through its blank line), None at a clean end of the connection; the bytes
        after it stay in `wire.buffer`."""
        limits = self.limits
        loop = asyncio.get_running_loop()
        while wire.buffer[:2] == b"\r\n":  # RFC 9112 §2.2: empty lines before a request are ignored
            del wire.buffer[:2]
        if not wire.buffer:
            try:
                got = await wire.fill(limits.head_timeout if first else limits.idle_timeout)
            except TimeoutError:
                if first:
                    raise ProxyError(408, f"the request head did not arrive within {limits.head_timeout:g} s") \
                        from None
                return None
            if not got:
                return None
        deadline = loop.time() + limits.head_timeout
        while True:
            end = wire.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(wire.buffer[:end + 4])
                del wire.buffer[:end + 4]
                return head
            if len(wire.buffer) > limits.max_head:
                raise ProxyError(431, f"the request head is larger than {limits.max_head} bytes")
            if wire.buffer.count(b"\n") != wire.buffer.count(b"\r\n"):
                raise ProxyError(400, "a line of the head ends in a bare LF")
            try:
                got = await wire.fill(max(deadline - loop.time(), 0.001))
            except TimeoutError:
                raise ProxyError(408, f"the request head did not arrive within {limits.head_timeout:g} s") from None
            if not got:
                raise ProxyError(400, "the connection ended inside the request head")

    async def _exchange(self, wire: Wire, peer: str, first: bool, upstreams: dict,
                        tunnel: tuple[ProxyRequest, Client] | None) -> bool:
        """One request and its answer; True to read the next one from the same connection."""
        conn = new_server(self.limits)
        try:
            head = await self._read_head(wire, first)
            if head is None:
                return False
            req = decode_request(conn, head, self.limits, tunnel[0] if tunnel else None)
        except ProxyError as exc:
            self.egress.refuse(tunnel[1] if tunnel else Client("session", None, peer), "connect", "(garbage)",
                               exc.reason, "egress: http", exc.status)
            await self._answer(wire, exc.status, exc.reason)
            return False
        client = tunnel[1] if tunnel else self.egress.client(req.token, peer)
        flow = Flow(f"{'tunnel' if req.method == 'CONNECT' else req.method} to {req.authority} from {peer}")
        flow.attach(wire.sock)
        try:
            if req.method == "CONNECT":
                await self._connect(req, client, wire, conn, flow)
                return False
            return await self._forward(req, client, wire, conn, upstreams, flow, inside=tunnel is not None)
        except h11.LocalProtocolError as exc:  # an upstream answer the client's HTTP version cannot carry
            self.egress.refuse(client, "connect", req.authority, f"cannot relay: {exc}"[:200], "egress: http", 502)
            return False
        finally:
            self.egress.close(flow)

    # ------------------------------------------------------------------------------------ facts → monitor
    async def _decide(self, req: ProxyRequest, client: Client, flow: Flow) -> tuple[ProxyRequest, Verdict]:
        """The one place a request's facts meet the monitor (`Egress.open`: the connect decision, then the
        resolved addresses checked): the request comes back stamped with the addresses it may use, and
        `flow` stays registered until the caller closes it."""
        if req.method == "CONNECT":
            req = req.with_(scheme=connect_scheme(self.egress.monitor.policy, req.host, req.port))
            # a tunnel the hook terminates is inspected: each request inside is decided by its method and path
            inspected = req.scheme == "https" and self.tls is not None and \
                self.tls.terminates(Endpoint("https", req.host, req.port))
            verdict = await self.egress.open(client, req.scheme, req.host, req.port, flow=flow, inspected=inspected)
        else:  # a request (plain, or inside a terminated tunnel: the CONNECT's host and port) by method and path
            verdict = await self.egress.open(client, req.scheme, req.host, req.port, flow=flow, method=req.method,
                                             path=req.path)
        return req.with_(addresses=verdict.addresses), verdict

    def _bound(self, endpoint: Endpoint) -> bool:
        """Is some policy secret bound to this endpoint (so what flows there must be readable to the hook)?"""
        return bool(self.egress.vault.bound_to(endpoint))

    # ------------------------------------------------------------------------------------ answers
    async def _answer(self, wire: Wire, status: int, reason: str, event: int | None = None,
                      lines: list[str] | None = None) -> None:
        """The hook's own answer, always the last on its connection. `lines`: the body of a denial
        (`ifc.enforce.denial`), whose first line is `ifc: REASON`."""
        line = reason.replace("\r", " ").replace("\n", " ")
        text = [x.replace("\r", " ").replace("\n", " ") for x in lines] if lines else [f"ifc: {line}"]
        body = "".join(f"{x}\n" for x in text).encode()
        head = [f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Error')}", "Content-Type: text/plain; charset=utf-8",
                f"Content-Length: {len(body)}", "Connection: close"]
        if status in (403, 426):
            head.append("X-Ifc-Denied: " + line.encode("ascii", "replace").decode()[:1000])
            # what the body says, where a client shows only headers (`curl -v` on a refused CONNECT)
            head += ["X-Ifc-Detail: " + x.encode("ascii", "replace").decode()[:1000] for x in text[1:12]]
            if event is not None:
                head.append(f"X-Ifc-Event: {event}")
        with contextlib.suppress(OSError, TimeoutError):
            await wire.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    async def _deny(self, wire: Wire, verdict: Verdict) -> None:
        event = verdict.decision.event if verdict.decision is not None else None
        await self._answer(wire, verdict.status, verdict.reason, event=event,
                           lines=denial_lines(verdict.reason, verdict.decision))

    # ------------------------------------------------------------------------------------ codec I/O
    async def _next_event(self, wire: Wire, conn: h11.Connection, status: int,
                          pending: tuple[Wire, bytearray] | None = None):
        """The codec's next event, reading `wire` as it needs; a protocol error is ProxyError(`status`).
        `pending`: bytes for another wire, sent before this one is waited on (a response's head and first
        body bytes leave in one write)."""
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ProxyError(status, f"{'the upstream sent' if status == 502 else 'malformed'} "
                                 f"HTTP: {str(exc)[:200]}") from None
            if event is not h11.NEED_DATA:
                return event
            if wire.buffer:
                conn.receive_data(wire.take())
                continue
            if pending is not None and pending[1]:
                await pending[0].send(bytes(pending[1]))
                pending[1].clear()
            data = await wire.recv()
            if not data and conn.their_state is h11.SEND_RESPONSE and not conn.trailing_data[0]:
                raise _Stale  # a kept-alive upstream closed before a byte of its answer
            conn.receive_data(data)

    # ------------------------------------------------------------------------------------ plain HTTP
    async def _read_body(self, req: ProxyRequest, wire: Wire, conn: h11.Connection) -> bytes | None:
        """The whole body when small enough to check and swap in memory, else None (streamed later)."""
        if req.framing.kind == "length" and req.framing.length > self.limits.max_swap_body:
            return None
        out = bytearray()
        while not isinstance(event := await self._next_event(wire, conn, 400), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                out += event.data
                if len(out) > self.limits.max_chunked_body:
                    raise ProxyError(413, f"a chunked body over {self.limits.max_chunked_body} bytes")
        return bytes(out)

    async def _forward(self, req: ProxyRequest, client: Client, wire: Wire, conn: h11.Connection, upstreams: dict,
                       flow: Flow, inside: bool) -> bool:
        """One request. Its decision holds until its body has been sent: `flow` is cut (both sockets shut) if
        the run's taint rises past the endpoint's clearance before then; the response only flows in."""
        req, verdict = await self._decide(req, client, flow)
        if not verdict.allowed:
            await self._deny(wire, verdict)
            return False
        endpoint = verdict.endpoint
        upgrade = req.upgrade
        if upgrade is not None and (inside or self._bound(endpoint)):
            refused = self.egress.refuse(client, "connect", str(endpoint), f"`Upgrade: {upgrade[:40]}` to an "
                                         "endpoint a secret is bound to: the hook could neither swap nor scrub "
                                         "inside it", "egress: upgrade", status=426)
            await self._deny(wire, refused)
            return False
        try:
            if conn.they_are_waiting_for_100_continue:  # decided: the client may send its body
                await wire.send(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            body = await self._read_body(req, wire, conn)
            bound = self._bound(endpoint)
            if bound:  # whose account a bound host's request reaches: the sentinel's, or none
                findings = foreign_credentials(self.egress.vault, endpoint, req.path, req.headers, body or b"",
                                               issued=self.issued)
                if findings:
                    await self._deny(wire, self.egress.refuse(
                        client, "connect", str(endpoint), "a credential that is not the bound secret's sentinel: "
                        + ", ".join(map(str, findings)), "egress: foreign credential"))
                    return False
                req = req.with_(headers=tuple(identity_only(list(req.headers))))  # echoes come back scrubbable
            length = None if req.framing.kind == "none" and not body else \
                req.framing.length if body is None else len(body)
            outgoing = upstream_request(req, length, keep_upgrade=upgrade is not None)
            swap, refused = self.egress.check_secrets(client, endpoint, upstream_head(req, length) + (body or b"")
                                                      + _basic_credentials(req.headers))
            if refused is not None:
                await self._deny(wire, refused)
                return False
            if swap:
                outgoing, body = self._swapped(req, body, swap, length, upgrade is not None)
            return await self._exchange_upstream(req, client, endpoint, verdict, wire, conn, outgoing, body,
                                                 upstreams, flow, upgrade is not None)
        except ProxyError as exc:
            self.egress.refuse(client, "connect", str(endpoint), exc.reason, exc.rule, exc.status)
            await self._answer(wire, exc.status, exc.reason)
            return False
        except TimeoutError:
            refused = self.egress.refuse(client, "connect", str(endpoint), "the upstream did not answer in time",
                                         "egress: http", 504)
            await self._answer(wire, 504, refused.reason)
            return False

    def _swapped(self, req: ProxyRequest, body: bytes | None, swap: list, length: int | None,
                 upgrade: bool) -> tuple[h11.Request, bytes | None]:
        """The outgoing request with the bound sentinels replaced by real values (target, headers, body)."""
        vault = self.egress.vault

        def text(value: str) -> str:
            return vault.swap(value.encode("latin-1"), swap).decode("latin-1")

        def header(name: str, value: str) -> str:
            decoded = _basic(name, value)  # `user:SENTINEL` in Basic (git over HTTPS): swapped inside
            if decoded is None:
                return text(value)
            return value.split(None, 1)[0] + " " + base64.b64encode(vault.swap(decoded, swap)).decode("ascii")

        req = req.with_(path=text(req.path), headers=tuple((k, header(k, v)) for k, v in req.headers))
        if body:
            body = vault.swap(body, swap)
            length = len(body)
        try:
            return upstream_request(req, length, keep_upgrade=upgrade), body
        except h11.LocalProtocolError:
            raise ProxyError(502, "a secret's real value cannot stand in an HTTP header") from None

    async def _open_upstream(self, req: ProxyRequest, client: Client, endpoint: Endpoint) -> Wire:
        try:
            up = await open_socket(req.addresses, req.port, self.limits.connect_timeout, self.limits.io_timeout)
        except OSError as exc:
            raise ProxyError(502, f"cannot reach {endpoint}: {exc}") from None
        if req.scheme != "https":
            return up
        tls = TlsStream(up, self.tls.upstream, server_side=False, server_hostname=req.host)
        try:
            await tls.handshake(self.limits.connect_timeout)
        except TlsFailure as exc:
            up.close()
            raise ProxyError(502, exc.reason, "egress: tls") from None
        return tls

    async def _exchange_upstream(self, req: ProxyRequest, client: Client, endpoint: Endpoint, verdict: Verdict,
                                 wire: Wire, conn: h11.Connection, outgoing: h11.Request, body: bytes | None,
                                 upstreams: dict, flow: Flow, upgrade: bool) -> bool:
        """Send the decided request upstream (on a kept-alive connection when there is one: retried once on a
        fresh one if that had closed) and relay the answer; True to keep the client connection."""
        key = (req.scheme, req.addresses, req.port, req.host)
        up = upstreams.pop(key, None)
        if up is not None and up.stale():
            up.close()
            up = None
        while True:
            reused = up is not None
            up = up or await self._open_upstream(req, client, endpoint)
            up_conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=self.limits.max_head)
            keep_up = False
            flow.attach(up.sock)
            try:
                if not flow.alive:
                    raise ConnectionError(flow.cut_reason)
                out = up_conn.send(outgoing)
                if body is not None:
                    out += up_conn.send(h11.Data(data=body)) if body else b""
                    out += up_conn.send(h11.EndOfMessage())
                await up.send(out)
                if body is None:
                    problem = await self._stream_body(client, endpoint, wire, conn, up, up_conn, flow)
                    if problem is not None:
                        await self._deny(wire, problem)
                        return False
                if not upgrade:
                    self.egress.close(flow)  # the request is out: from here on data only comes in
                keep, keep_up = await self._relay_response(req, client, endpoint, wire, conn, up, up_conn, flow)
                return keep
            except _Stale:
                if reused and body is not None:
                    up = None
                    continue  # the kept-alive upstream connection had closed: once more on a fresh one
                raise ProxyError(502, "the upstream closed without a response") from None
            except ConnectionError:
                if reused and body is not None and not up_conn.trailing_data[0]:
                    up = None
                    continue
                raise
            finally:
                if keep_up:
                    upstreams[key] = up
                elif up is not None:
                    up.close()

    async def _stream_body(self, client: Client, endpoint: Endpoint, wire: Wire, conn: h11.Connection, up: Wire,
                           up_conn: h11.Connection, flow: Flow) -> Verdict | None:
        """A body too large to swap in memory: streamed, and refused if a sentinel shows up in it."""
        watch = SentinelWatch(self.egress.vault, endpoint.connection)
        while not isinstance(event := await self._next_event(wire, conn, 400), h11.EndOfMessage):
            if not isinstance(event, h11.Data):
                continue
            if watch.found(event.data):
                return self.egress.refuse(client, "connect", str(endpoint),
                                          "a secret's sentinel in a request body too large to check in memory",
                                          "egress: secrets")
            if not flow.alive:  # the sockets are shut already; never hand the loop another byte
                raise ConnectionError(flow.cut_reason)
            await up.send(up_conn.send(h11.Data(data=bytes(event.data))))
        await up.send(up_conn.send(h11.EndOfMessage()))
        return None

    async def _relay_response(self, req: ProxyRequest, client: Client, endpoint: Endpoint, wire: Wire,
                              conn: h11.Connection, up: Wire, up_conn: h11.Connection,
                              flow: Flow) -> tuple[bool, bool]:
        """Forward one response exactly (status, reason, end-to-end headers, body) with real secret values
        masked; (keep the client connection, keep the upstream one)."""
        vault = self.egress.vault
        scrub_value = vault.scrub if vault else bytes
        while True:
            event = await self._next_event(up, up_conn, 502)
            if isinstance(event, h11.Response):
                break
            if event.status_code == 101:  # an upgrade the monitor allowed as a stream: relayed for its life
                await wire.send(conn.send(h11.InformationalResponse(
                    status_code=101, reason=event.reason, headers=[(k, scrub_value(v)) for k, v in
                                                                   event.headers.raw_items()])))
                await self._relay_upgraded(client, endpoint, wire, conn, up, up_conn)
                return False, False
            if event.status_code != 100:  # the hook answered Expect itself; other 1xx pass (103 hints)
                await wire.send(conn.send(h11.InformationalResponse(
                    status_code=event.status_code, reason=event.reason,
                    headers=[(k, scrub_value(v)) for k, v in event.headers.raw_items()])))
        headers = response_headers(event, scrub_value)
        names = {k for k, _ in event.headers}
        reusable = not (b"content-length" in names and b"transfer-encoding" in names)
        scrub: StreamScrubber | BodyScrubber = StreamScrubber(vault)
        if self._bound(endpoint):  # decoded, masked and watched for encoded echoes (`ifc.enforce.encodings`)
            self.issued.record(endpoint, event.headers.raw_items())
            no_body = req.method == "HEAD" or event.status_code in (204, 304)
            coding = None if no_body else next((v for k, v in event.headers if k == b"content-encoding"), None)
            try:
                scrub = BodyScrubber(vault, coding, lambda held: self.egress.monitor.absorb_secret(
                    held.name, str(endpoint), client.subject), ranged=b"content-range" in names)
                headers = scrub.headers(headers)
            except EncodingRefused as exc:
                raise ProxyError(502, exc.reason, "egress: encoding") from None
        out = bytearray(conn.send(h11.Response(status_code=event.status_code, reason=event.reason,
                                               headers=headers)))
        length = next((int(v) for k, v in event.headers if k == b"content-length"), 0)
        if self.splice and length > _SPLICE_BODY and req.method != "HEAD" and event.status_code not in (204, 304) \
                and isinstance(wire, SocketWire) and isinstance(up, SocketWire) and reusable \
                and isinstance(scrub, StreamScrubber):
            await wire.send(bytes(out))
            await self._splice_body(wire, up, up_conn, scrub, length)
            wire.give_back(conn.trailing_data[0])
            return req.keep_alive, False
        try:
            while not isinstance(body := await self._next_event(up, up_conn, 502, (wire, out)), h11.EndOfMessage):
                if isinstance(body, h11.Data):
                    for data in _pieces(scrub.feed(bytes(body.data))):
                        out += conn.send(h11.Data(data=data))
            tail = _pieces(scrub.flush() if isinstance(scrub, StreamScrubber) else scrub.finish())
        except (ProxyError, EncodingRefused) as exc:  # the head is out: the client learns of it by the cut
            self.egress.refuse(client, "connect", str(endpoint), exc.reason, "egress: http", 502)
            with contextlib.suppress(OSError, TimeoutError):
                await wire.send(bytes(out))
            return False, False
        for data in tail:
            out += conn.send(h11.Data(data=data))
        out += conn.send(h11.EndOfMessage())
        await wire.send(bytes(out))
        keep = conn.our_state is h11.DONE and conn.their_state is h11.DONE
        keep_up = reusable and up_conn.our_state is h11.DONE and up_conn.their_state is h11.DONE \
            and not up_conn.trailing_data[0]
        wire.give_back(conn.trailing_data[0])
        return keep, keep_up

    async def _splice_body(self, wire: SocketWire, up: SocketWire, up_conn: h11.Connection, scrub: StreamScrubber,
                           length: int) -> None:
        """A large body leaves the event loop: a thread moves it between the sockets — by the kernel (splice)
        when there is nothing to scrub, else read, scrubbed and written with one copy each way. What the codec
        already holds of it goes first; the upstream connection is not reused after."""
        held = bytearray()
        while isinstance(event := up_conn.next_event(), h11.Data):
            held += event.data
        left = length - len(held)
        pump = functools.partial(pump_scrubbed, scrub=scrub) if self.egress.vault else pump_count
        moved = await asyncio.to_thread(pump, up.sock.fileno(), wire.sock.fileno(), left, scrub.feed(bytes(held)))
        await wire.send(scrub.flush())
        if moved < left:
            raise ConnectionError("the body was cut short")

    async def _relay_upgraded(self, client: Client, endpoint: Endpoint, wire: Wire, conn: h11.Connection,
                              up: Wire, up_conn: h11.Connection) -> None:
        wire.give_back(conn.trailing_data[0])
        up.give_back(up_conn.trailing_data[0])
        await asyncio.gather(self._pipe(wire, up, client, endpoint), self._pipe(up, wire))

    # ------------------------------------------------------------------------------------ CONNECT
    async def _connect(self, req: ProxyRequest, client: Client, wire: Wire, conn: h11.Connection,
                       flow: Flow) -> None:
        """A tunnel, blind or terminated: decided when it opens and again whenever the run's taint rises for
        as long as it is open (`flow` is cut, both sockets shut, when it is no longer cleared)."""
        limits = self.limits
        req, verdict = await self._decide(req, client, flow)
        if not verdict.allowed and not self._refuse_inside(req, verdict):
            await self._deny(wire, verdict)
            return
        raw = req.scheme == "tcp"
        await wire.send(conn.send(h11.Response(status_code=200, reason=b"Connection established",
                                                      headers=[])))
        wire.give_back(conn.trailing_data[0])
        endpoint = verdict.endpoint
        if not raw:
            try:
                sni = await asyncio.wait_for(self._client_hello(wire), limits.head_timeout)
            except (ValueError, IndexError) as exc:
                self.egress.refuse(client, "connect", str(endpoint), f"not a TLS ClientHello ({exc}); raw "
                                   "TCP needs a `tcp://` endpoint rule", "egress: tls")
                return
            except TimeoutError:
                self.egress.refuse(client, "connect", str(endpoint),
                                   f"no TLS ClientHello within {limits.head_timeout:g} s", "egress: tls")
                return
            if sni is None and not is_ip_literal(req.host):
                self.egress.refuse(client, "connect", str(endpoint),
                                   "the TLS ClientHello names no server (SNI)", "egress: sni")
                return
            if sni is not None and sni != req.host:
                self.egress.refuse(client, "connect", str(endpoint),
                                   f"the TLS ClientHello names `{sni}`, not the CONNECT host `{req.host}`",
                                   "egress: sni")
                return
            req = req.with_(sni=sni)
            if self.tls is not None and self.tls.terminates(endpoint):
                await self._terminate(req, client, endpoint, wire)
                return
        if not verdict.allowed:  # only a terminated tunnel serves a refused CONNECT (`_refuse_inside`)
            return
        try:
            up = await open_socket(req.addresses, req.port, limits.connect_timeout, limits.io_timeout)
        except OSError:
            return
        flow.attach(up.sock)
        try:
            if not flow.alive:
                return
            if raw and self.egress.vault:
                await asyncio.gather(self._pipe(wire, up, client, endpoint), self._pipe(up, wire))
            elif self.splice:
                await splice_tunnel(wire.sock, up.sock, wire.take())
            else:
                await asyncio.gather(self._pipe(wire, up), self._pipe(up, wire))
        finally:
            up.close()

    def _refuse_inside(self, req: ProxyRequest, verdict: Verdict) -> bool:
        """Serve a CONNECT the monitor refused for what the run read as a terminated tunnel, whose requests the
        monitor then refuses one by one, each with the hook's 403 and its explanation.

        Why: an HTTP client shows the body of a 403 it receives in-band (an SDK raises it as the API's error, so
        the agent reads what was read and what a reviewer can do), but only a status for a refused CONNECT
        (`curl: (56) CONNECT tunnel failed, response 403`; Python: `Tunnel connection failed: 403 Forbidden`).
        Safe: only for flow refusals (authority and containment were satisfied) of endpoints the hook terminates
        anyway (their CA leaf exists for them), nothing is resolved or opened upstream for the tunnel, and every
        request inside is decided afresh by the monitor with the run's taint."""
        decision = verdict.decision
        return (req.scheme == "https" and self.tls is not None and verdict.status == 403 and decision is not None
                and bool(decision.path) and verdict.endpoint is not None
                and self.tls.terminates(Endpoint("https", req.host, req.port)))

    async def _terminate(self, req: ProxyRequest, client: Client, endpoint: Endpoint, wire: Wire) -> None:
        """Answer the TLS handshake with the run CA's leaf for the CONNECT host, then serve the requests inside
        like plain HTTP ones (each decided, sentinels swapped, responses scrubbed), forwarded over verified TLS."""
        tls = TlsStream(wire, self.tls.ca.server_context(req.host), wire.take())
        try:
            await tls.handshake(self.limits.head_timeout)
        except TlsFailure as exc:
            self.egress.refuse(client, "connect", str(endpoint), exc.reason, "egress: tls")
            return
        try:
            await self._session(tls, client.peer, (req, client))
        finally:
            tls.shutdown_write()

    async def _client_hello(self, wire: Wire) -> str | None:
        """The SNI of the ClientHello at the start of `wire.buffer` (read as far as needed, consumed not)."""
        while True:
            try:
                sni, need = sni_from_client_hello(bytes(wire.buffer))
            except ValueError:
                if wire.buffer[:1] != b"\x16":
                    raise ValueError("the first bytes are not a TLS handshake") from None
                raise
            if need == 0:
                return sni
            if not await wire.fill():
                raise ValueError("the connection ended inside the ClientHello")

    async def _pipe(self, src: Wire, dst: Wire, client: Client | None = None, endpoint: Endpoint | None = None) -> None:
        """One direction of a stream the hook relays in Python: with `client`, watched for sentinels (a raw
        TCP tunnel, an upgraded connection), which end it."""
        watch = SentinelWatch(self.egress.vault, endpoint.connection if endpoint is not None else None) \
            if client is not None else None
        try:
            chunk = src.take()
            while True:
                if not chunk:
                    chunk = await src.recv(timeout=TUNNEL_IDLE)
                    if not chunk:
                        break
                if watch is not None and watch.found(chunk):
                    self.egress.refuse(client, "connect", str(endpoint), "a secret's sentinel in a relayed stream "
                                       "(sentinels are swapped only in HTTP requests)", "egress: secrets")
                    break
                await dst.send(chunk)
                chunk = b""
        except (TimeoutError, OSError):
            pass
        finally:
            dst.shutdown_write()
