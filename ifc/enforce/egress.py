"""The egress hook's shared core: subjects from tokens, name resolution, address checks, refusals.

Every exit (the HTTP proxy, the SMTP front, the DNS stub) goes through one `Egress`:

  subject   a client presenting its own token is its own subject (`token:<id>`) for *authority*; every
            subject shares the run's taint (the monitor keeps one per run), so a token the sandbox
            derived from its own while clean is exactly as tainted as the session; without a token the
            client is the session (presenting `session_token`, if any)
  connect   `Egress.open(...)`: the monitor decides `connect scheme://host:port` (an IP-literal host needs a
            rule naming it by IP or CIDR); then the hook resolves the name itself, once, and the monitor
            decides `resolve scheme://host:port` on the addresses it got (`Facts.addresses`): loopback,
            private, link-local, CGNAT, multicast, unspecified and cloud-metadata addresses are refused
            unless an endpoint rule names them by IP or CIDR (`ifc.monitor.containment`). The caller
            connects to the address that was checked, never to the name (no DNS rebinding between check
            and use).
  streams   a connection opened for a `Flow` stays registered with the monitor until `close`; when the
            run's taint rises and the endpoint is no longer cleared, the monitor cuts it: every socket
            attached to the flow is shut down at once, from the thread that raised the taint.

Refusals that are no decision (a target that does not parse, a name that does not resolve, a stream cut
for what it carried) are logged by the monitor (`Monitor.refuse`), with rule `egress: ...`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ifc.match import Endpoint, PatternError
from ifc.monitor.containment import Facts, is_ip_literal
from ifc.monitor.egressowners import PEER_PREFIX
from ifc.monitor.monitor import Decision, Monitor, Request

log = logging.getLogger("ifc.egress")

Resolver = Callable[[str], Awaitable[list[str]]]


async def system_resolver(host: str) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    out: list[str] = []
    for info in infos:
        addr = info[4][0]
        if addr not in out:
            out.append(addr)
    return out


def static_resolver(table: dict[str, list[str]], fallback: Resolver | None = None) -> Resolver:
    """A resolver answering from a table (tests, `--hosts`), then `fallback` (or nothing)."""
    async def resolve(host: str) -> list[str]:
        if host.lower() in table:
            return list(table[host.lower()])
        if fallback is None:
            raise OSError(f"`{host}` is not in the hosts table")
        return await fallback(host)

    return resolve


@dataclass(frozen=True)
class Verdict:
    """The hook's answer for one outgoing connection: allowed with the addresses to use, or why not."""

    allowed: bool
    reason: str
    endpoint: Endpoint | None = None
    addresses: tuple[str, ...] = ()
    decision: Decision | None = None
    status: int = 403  # for the HTTP proxy: 403 refused, 400 bad target, 502 resolution failed


class Flow:
    """One egress stream as the hook holds it: the sockets to shut when the monitor cuts it.

    `cut` may run on any thread (a FUSE worker whose read raised the taint), while the event loop is
    between two writes: shutting the sockets down is what makes the cut immediate and thread-safe — the
    loop's next read sees EOF, its next write fails, a splice thread's next call returns."""

    def __init__(self, describe: str):
        self.describe = describe
        self.stream = None  # the monitor's registration, once allowed
        self.cut_reason: str | None = None
        self._sockets: list = []
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self.cut_reason is None

    def attach(self, *sockets) -> None:
        """Sockets that carry this stream's bytes; attached after a cut, they are shut at once."""
        with self._lock:
            self._sockets.extend(s for s in sockets if s is not None)
            if self.cut_reason is not None:
                self._shut()

    def cut(self, reason: str) -> None:
        with self._lock:
            self.cut_reason = reason
            self._shut()

    def _shut(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError, ValueError):
                sock.shutdown(socket.SHUT_RDWR)


def socket_of(writer) -> object | None:
    """The socket under an asyncio stream writer (for a TLS stream, the TCP socket under it)."""
    return writer.get_extra_info("socket") if writer is not None else None


@dataclass(frozen=True)
class Client:
    subject: str
    token: str | None
    peer: str = ""


class Egress:
    def __init__(self, monitor: Monitor, *, resolver: Resolver | None = None, vault=None,
                 session_token: str | None = None, clock: Callable[[], float] = time.time,
                 unset: dict[str, str] | None = None):
        """`unset`: secrets that had no value when the run started (`ifc.enforce.secret_values`), with why: every
        send carrying one's sentinel is refused."""
        from ifc.enforce.secrets import Vault

        self.monitor = monitor
        self.resolver = resolver or system_resolver
        self.vault = vault if vault is not None else Vault()
        self.unset = dict(unset or {})
        self.session_token = session_token
        self.clock = clock
        self._subjects: dict[str, str] = {}
        self.refusals = 0

    # ------------------------------------------------------------------------------------ subjects
    def client(self, token: str | None, peer: str = "") -> Client:
        """The session for no token or the session's own (one subject, one taint, whichever exit it uses);
        a subject of its own for any other token (an attenuated one, for a sub-agent)."""
        if not token or token == self.session_token:
            return Client("session", self.session_token, peer)
        subject = self._subjects.get(token)
        if subject is None:
            subject = "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]
            verifier = self.monitor.verifier
            if verifier is not None:
                with contextlib.suppress(Exception):
                    subject = "token:" + verifier.verify(token, now=self.clock()).token_id
            self._subjects[token] = subject
        return Client(subject, token, peer)

    def _request(self, client: Client, op: str, target: str, facts: Facts | None = None) -> Request:
        parent = "session" if client.subject != "session" else None
        return Request(op, target, subject=client.subject, token=client.token, parent=parent, facts=facts,
                       cmdline=f"{PEER_PREFIX}{client.peer}" if client.peer else None)

    def decide(self, client: Client, op: str, target: str) -> Decision:
        return self.monitor.decide(self._request(client, op, target))

    def close(self, flow: Flow | None) -> None:
        """The stream ended: the monitor stops deciding it again."""
        if flow is not None:
            self.monitor.close_stream(flow.stream)

    # ------------------------------------------------------------------------------------ refusals
    def refuse(self, client: Client, op: str, target: str, reason: str, rule: str, status: int = 403) -> Verdict:
        """A refusal the hook makes without a decision (not a policy question), logged by the monitor."""
        self.refusals += 1
        log.info("refused %s %s for %s: %s", op, target, client.subject, reason)
        decision = self.monitor.refuse(self._request(client, op, target), reason, rule)
        return Verdict(False, reason, decision=decision, status=status)

    # ------------------------------------------------------------------------------------ connect
    async def open(self, client: Client, scheme: str, host: str, port: int, *,
                   flow: Flow | None = None, method: str | None = None, path: str | None = None,
                   inspected: bool = False) -> Verdict:
        """Decide `connect scheme://host:port`, resolve it, and have the monitor check the addresses.

        With a `flow`, the allowed connection stays under the monitor until `close(flow)`: cut when the run's
        taint rises past what the endpoint is cleared for. With `method` and `path` (a plain-HTTP request), the
        connection is decided for that request; `inspected=True` says the hook will decide every request on it
        with `decide_request` (a TLS tunnel it terminates, a plain-HTTP forward), which lets rules and grants
        naming paths or methods admit the connection itself."""
        decided = self._decide_connect(client, scheme, host, port, method, path, flow, inspected)
        if isinstance(decided, Verdict):
            return decided
        endpoint, decision = decided
        if not decision.allowed:  # nothing is resolved before the monitor allowed the connect
            return Verdict(False, decision.reason, endpoint, decision=decision)
        host = endpoint.host
        if is_ip_literal(host):
            addresses = [host]
        else:
            try:
                addresses = await asyncio.wait_for(self.resolver(host), timeout=10)
            except (TimeoutError, OSError, UnicodeError) as exc:
                return self.refuse(client, "connect", str(endpoint), f"cannot resolve `{host}`: {exc}",
                                   "egress: resolve", 502)
            if not addresses:
                return self.refuse(client, "connect", str(endpoint), f"`{host}` has no address", "egress: resolve",
                                   502)
        checked = self.monitor.decide(self._request(client, "resolve", str(endpoint.connection),
                                                    Facts(addresses=tuple(addresses))))
        if not checked.allowed:
            return Verdict(False, checked.reason, endpoint, decision=checked)
        return Verdict(True, "allowed", endpoint, tuple(addresses), decision)

    def decide_request(self, client: Client, scheme: str, host: str, port: int, method: str, path: str, *,
                       flow: Flow | None = None) -> Verdict:
        """Decide one HTTP request on a connection `open` allowed (a request inside a terminated tunnel, or the
        next request on a kept-alive plain-HTTP connection): `connect METHOD scheme://host:port/path`, judged by
        the last endpoint rule matching its method and path and by the subject's grants or token. `host` and
        `port` are the connection's (the CONNECT target), never the request's `Host` header; `path` is the request
        target's path (an origin-form target, query included: it is dropped before matching). Nothing is resolved:
        the connection's addresses were checked when it opened. With a `flow` the request stays under the
        monitor (cut if the taint rises past its rule) until `close(flow)`. 400 for a path that is not in normal
        form (`ifc.match.request_path`), 403 for a denial."""
        decided = self._decide_connect(client, scheme, host, port, method, path, flow, False)
        if isinstance(decided, Verdict):
            return decided
        endpoint, decision = decided
        return Verdict(decision.allowed, "allowed" if decision.allowed else decision.reason, endpoint,
                       decision=decision)

    def _decide_connect(self, client: Client, scheme: str, host: str, port: int, method: str | None,
                        path: str | None, flow: Flow | None, inspected: bool) -> tuple[Endpoint, Decision] | Verdict:
        """The monitor's `connect` decision for a connection or one request on it (a refusal for a bad target)."""
        host = host.strip("[]").lower().rstrip(".")
        target = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}{path or ''}"
        if method is not None:
            target = f"{method} {target}"
        try:
            endpoint = Endpoint.parse(target)
        except PatternError as exc:
            return self.refuse(client, "connect", target, f"bad target: {exc.message}", "egress: target", 400)
        if endpoint.method != method or (path is None) != (endpoint.path is None):
            return self.refuse(client, "connect", target, "bad target: the method or path does not parse as one",
                               "egress: target", 400)
        request = self._request(client, "connect", str(endpoint), Facts(inspected=True) if inspected else None)
        if flow is None:
            return endpoint, self.monitor.decide(request)
        decision, flow.stream = self.monitor.open_stream(request, flow.describe, flow.cut)
        return endpoint, decision

    def check_secrets(self, client: Client, endpoint: Endpoint, data: bytes) -> tuple[list, Verdict | None]:
        """Sentinels in outgoing bytes: (the ones bound to `endpoint`, or a refusal naming the first that is not).
        A secret is bound to a connection (an exact host and port), so a request is judged by the one it travels
        on, whatever its method and path."""
        endpoint = endpoint.connection
        found = self.vault.found(data) if self.vault else []
        for held in found:
            if held.name in self.unset:  # no value to swap in: refused whatever the policy says
                return [], self.refuse(client, "send", f"{held.name}@{endpoint}", f"secret `{held.name}` had no value "
                                       f"when the run started ({self.unset[held.name]})", "egress: secret unset")
            d = self.decide(client, "send", f"{held.name}@{endpoint}")
            if not d.allowed:
                return [], Verdict(False, f"the sentinel of secret `{held.name}` is headed for {endpoint}: {d.reason}",
                                   endpoint, decision=d)
        # allowed and not bound here: a workspace file's value, whose sentinel goes as it is (`Monitor._send`)
        return [h for h in found if h.bound_to(endpoint)], None


async def connect_checked(addresses: tuple[str, ...], port: int, timeout: float = 10.0,
                          tls: ssl.SSLContext | None = None, server_hostname: str | None = None):
    """Open a TCP connection to the first checked address that answers (never to a name); with `tls`, TLS
    verified for `server_hostname`. A certificate that does not verify is raised, not tried elsewhere."""
    last: Exception | None = None
    for addr in addresses:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                addr, port, limit=1 << 20, ssl=tls, server_hostname=server_hostname if tls else None), timeout)
            writer.transport.set_write_buffer_limits(high=1 << 21)
            return reader, writer
        except ssl.SSLError:
            raise
        except (TimeoutError, OSError) as exc:
            last = exc
    raise OSError(f"cannot connect: {last}")


class StreamFront:
    """The listening part every TCP front of the hook shares (the HTTP proxy, the SMTP front): subclasses
    give `_serve(reader, writer)` and the stream buffer limit `_read_limit`."""

    _read_limit: int
    server: asyncio.AbstractServer | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, host, port, limit=self._read_limit)
        return self.server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


class BackgroundLoop:
    """An event loop in a daemon thread, for callers that are not async (tests, the benchmark)."""

    def __init__(self):
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ifc-egress", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float | None = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
