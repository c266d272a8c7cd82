"""The SMTP front's client side: one message to the real relay, over TLS whenever it carries anything secret.

Why a client of our own rather than smtplib: smtplib sends STARTTLS only when offered and verifies the
certificate against the name it connected to, which for the hook is a checked *address* (the name is
resolved once, by the hook); it would need a private attribute to verify the relay's name instead, and a
thread per message. Here the relay is reached with `connect_checked` (the addresses the monitor checked),
TLS is verified against the relay's name, and the rule is simple:

* implicit TLS (`smtps://`, or port 465) from the first byte; otherwise STARTTLS whenever the relay offers it,
  and it must succeed (a certificate that does not verify ends the session: nothing is sent);
* when the message carries a swapped secret or the front authenticates (`require_tls`), a relay that does
  not offer STARTTLS gets nothing: an attacker on the path can strip the offer, so its absence is refused;
* credentials go only over TLS, with AUTH PLAIN (or LOGIN when PLAIN is not offered), never CRAM-MD5 or other
  mechanisms that would need the password in another form;
* a reply the relay sent ahead of its STARTTLS answer is refused (plaintext injected into what would be
  read as the encrypted session, CVE-2011-0411 style).

Failures are `RelayError`: the reply for the sandbox and, for a refusal the hook makes (TLS, AUTH), the rule
under which the monitor logs it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
from dataclasses import dataclass

from ifc.enforce.egress import Flow, connect_checked, socket_of

_READ = 1 << 22  # more than a StreamReader can hold (its limit is 1 MiB, it pauses at twice that): one read empties it
_MAX_REPLY = 64 << 10


class RelayError(Exception):
    """The relay said no, or the front refused to go on. `code`/`text` is the reply for the sandbox (real
    values are scrubbed by the front); `rule` names a refusal the hook itself made, for the event log."""

    def __init__(self, code: int, text: bytes, rule: str | None = None):
        super().__init__(text.decode("utf-8", "replace"))
        self.code = code
        self.text = text
        self.rule = rule


@dataclass(frozen=True)
class Relay:
    """Where the front sends mail: `smtp://host[:587]` (STARTTLS) or `smtps://host[:465]` (implicit TLS)."""

    host: str
    port: int
    implicit_tls: bool

    @classmethod
    def parse(cls, url: str) -> Relay:
        scheme, _, rest = url.partition("://")
        if scheme not in ("smtp", "smtps") or not rest or "/" in rest:
            raise ValueError(f"the relay must be `smtp://host:port` or `smtps://host:port`, not `{url}`")
        if rest.startswith("["):
            host, _, tail = rest[1:].partition("]")
            port = tail[1:] if tail.startswith(":") else tail + "?" if tail else ""
        else:
            host, _, port = rest.partition(":")
        if not host or (port and not port.isdigit()):
            raise ValueError(f"the relay must be `smtp://host:port` or `smtps://host:port`, not `{url}`")
        number = int(port) if port else 465 if scheme == "smtps" else 587
        return cls(host.lower(), number, scheme == "smtps" or number == 465)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'smtps' if self.implicit_tls else 'smtp'}://{host}:{self.port}"


@dataclass(frozen=True)
class Credentials:
    """What the front authenticates to the relay with (real values, after the swap)."""

    user: bytes
    password: bytes


@dataclass(frozen=True)
class Message:
    sender: str
    recipients: list[str]
    data: bytes


class _Session:
    """Replies read through a buffer of our own, so what the relay sent beyond a reply is visible (the
    STARTTLS check) without reaching into the StreamReader."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float):
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.buffer = bytearray()

    async def reply(self) -> tuple[int, list[bytes]]:
        """(code, the text of each line) of one possibly multi-line reply."""
        lines: list[bytes] = []
        while True:
            while b"\n" not in self.buffer:
                if len(self.buffer) > _MAX_REPLY:
                    raise RelayError(451, b"4.4.0 relay reply too long")
                chunk = await asyncio.wait_for(self.reader.read(_READ), self.timeout)
                if not chunk:
                    raise RelayError(451, b"4.4.0 relay closed the connection")
                self.buffer += chunk
            end = self.buffer.index(b"\n") + 1
            line, self.buffer[:end] = bytes(self.buffer[:end]).rstrip(b"\r\n"), b""
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                raise RelayError(451, b"4.4.0 relay sent a malformed reply")
            lines.append(line[4:])
            if len(lines) > 1000:
                raise RelayError(451, b"4.4.0 relay reply too long")
            if line[3:4] != b"-":
                return int(line[:3]), lines

    async def command(self, line: bytes, expect: int, what: str, rule: str | None = None) -> list[bytes]:
        self.writer.write(line + b"\r\n")
        await self.writer.drain()
        code, text = await self.reply()
        if code != expect:
            raise RelayError(code, f"relay refused {what}: ".encode() + b" ".join(text), rule)
        return text


def _extensions(ehlo: list[bytes]) -> dict[str, list[str]]:
    """`250-AUTH PLAIN LOGIN` → {"AUTH": ["PLAIN", "LOGIN"]} (the first line is the greeting)."""
    out: dict[str, list[str]] = {}
    for line in ehlo[1:]:
        words = line.decode("latin-1").upper().split()
        if words:
            out[words[0]] = words[1:]
    return out


def _wire(data: bytes) -> bytes:
    """The DATA payload: CRLF line ends, leading dots doubled, ended by `.`."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", data) + b".\r\n"


async def deliver(relay: Relay, addresses: tuple[str, ...], context: ssl.SSLContext, message: Message, *,
                  credentials: Credentials | None, require_tls: bool, flow: Flow, name: str,
                  timeout: float = 30.0) -> None:
    """Send one message to the relay at one of the checked `addresses` (raises `RelayError`)."""
    try:
        reader, writer = await connect_checked(addresses, relay.port, timeout,
                                               tls=context if relay.implicit_tls else None,
                                               server_hostname=relay.host)
    except ssl.SSLError as exc:
        raise RelayError(454, f"4.7.0 TLS to the relay failed: {exc.reason or exc}".encode(),
                         "egress: smtp tls") from None
    flow.attach(socket_of(writer))
    session = _Session(reader, writer, timeout)
    try:
        await _converse(session, relay, context, message, credentials, require_tls, name)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, RelayError) as exc:
        if flow.cut_reason is not None:  # the monitor shut the socket: say why, not what the relay did next
            raise RelayError(550, f"5.7.1 ifc: {flow.cut_reason}".encode()) from None
        if isinstance(exc, RelayError):
            raise
        raise RelayError(451, f"4.4.0 relay failed: {exc or type(exc).__name__}".encode()) from None
    finally:
        writer.close()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(writer.wait_closed(), 2)


async def _converse(session: _Session, relay: Relay, context: ssl.SSLContext, message: Message,
                    credentials: Credentials | None, require_tls: bool, name: str) -> None:
    code, text = await session.reply()
    if code != 220:
        raise RelayError(code, b"relay greeting: " + b" ".join(text))
    ehlo = f"EHLO {name}".encode()
    extensions = _extensions(await session.command(ehlo, 250, "EHLO"))
    if not relay.implicit_tls:
        if "STARTTLS" in extensions:
            await session.command(b"STARTTLS", 220, "STARTTLS", "egress: smtp tls")
            if session.buffer:
                raise RelayError(454, b"4.7.0 the relay sent data ahead of TLS (injected on the path?): refused",
                                 "egress: smtp tls")
            try:
                await session.writer.start_tls(context, server_hostname=relay.host,
                                               ssl_handshake_timeout=session.timeout)
            except (ssl.SSLError, OSError, TimeoutError) as exc:
                reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else str(exc) or type(exc).__name__
                raise RelayError(454, f"4.7.0 STARTTLS to the relay failed: {reason}".encode(),
                                 "egress: smtp tls") from None
            extensions = _extensions(await session.command(ehlo, 250, "EHLO after STARTTLS"))
        elif require_tls:
            raise RelayError(530, f"5.7.10 ifc: {relay} does not offer STARTTLS; a message carrying a secret or "
                                  "credentials is never sent in clear".encode(), "egress: smtp tls")
    if credentials is not None:
        await _authenticate(session, extensions.get("AUTH", []), credentials, relay)
    await session.command(f"MAIL FROM:<{message.sender}>".encode(), 250, "the sender")
    accepted = 0
    for rcpt in message.recipients:
        session.writer.write(f"RCPT TO:<{rcpt}>".encode() + b"\r\n")
        await session.writer.drain()
        code, _ = await session.reply()
        accepted += code in (250, 251)
    if not accepted:
        raise RelayError(550, b"5.1.1 relay refused every recipient")
    await session.command(b"DATA", 354, "DATA")
    session.writer.write(_wire(message.data))
    await session.writer.drain()
    code, text = await session.reply()
    if code != 250:
        raise RelayError(code, b"relay refused the message: " + b" ".join(text))
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await session.command(b"QUIT", 221, "QUIT")


async def _authenticate(session: _Session, mechanisms: list[str], credentials: Credentials, relay: Relay) -> None:
    rule = "egress: smtp auth"
    if "PLAIN" in mechanisms:
        blob = base64.b64encode(b"\0" + credentials.user + b"\0" + credentials.password)
        await session.command(b"AUTH PLAIN " + blob, 235, "the credentials", rule)
    elif "LOGIN" in mechanisms:
        await session.command(b"AUTH LOGIN", 334, "AUTH LOGIN", rule)
        await session.command(base64.b64encode(credentials.user), 334, "the user name", rule)
        await session.command(base64.b64encode(credentials.password), 235, "the credentials", rule)
    else:
        raise RelayError(535, f"5.7.8 ifc: {relay} offers no AUTH PLAIN or LOGIN".encode(), rule)
