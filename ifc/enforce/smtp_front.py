"""The SMTP submission front: the sandbox's mail client talks to it, and it relays to the real server only
when the monitor allows `connect smtp://host:port` for the run's taint at the moment the message is
complete (so reading `.env` between MAIL and DATA still counts).

AUTH (PLAIN or LOGIN) from the sandbox means one of two things:

* user `ifc` with a capability token as the password: the client is its own subject (else it is the session);
* the relay's user name and, as the password, the sentinel of a policy secret bound to the relay
  (`secret SMTP_PASSWORD from env "..." to "smtp://smtp.gmail.com:587"`; the user name may be a literal or
  another bound secret's sentinel): the front authenticates to the relay with the real values, over TLS only
  (`ifc.enforce.smtp_relay`). Any other password is refused: the sandbox holds no credential of its own for
  the relay, so a key planted in the workspace cannot send as someone else.

A secret bound to the relay is its credential and is swapped only into AUTH: its sentinel in a message (body
or envelope) would reach the recipients, so the message is refused, as is the sentinel of a secret not bound
to the relay. Relay replies are scrubbed of real values before the sandbox sees them.

Replies: 550 5.7.1 with the reason on a denial, 535 5.7.8 for refused credentials, 454/530 when TLS to the
relay cannot be had, 451 when the relay fails, 500/501/503/504 for bad commands, 552 for an oversized
message, 421 for a slow client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import ssl
from dataclasses import dataclass, field

from ifc.enforce.egress import Client, Egress, Flow, StreamFront
from ifc.enforce.smtp_relay import Credentials, Message, Relay, RelayError, deliver
from ifc.enforce.tls import upstream_context
from ifc.match import Endpoint

log = logging.getLogger("ifc.egress.smtp")


@dataclass(frozen=True)
class SmtpLimits:
    max_line: int = 1000
    max_message: int = 10 << 20
    max_recipients: int = 100
    command_timeout: float = 60.0
    max_commands: int = 1000
    relay_timeout: float = 30.0


@dataclass
class _Envelope:
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)


def _address(arg: str, keyword: str) -> str | None:
    """`FROM:<a@b> SIZE=1` → `a@b`; None when malformed."""
    if not arg.upper().startswith(keyword + ":"):
        return None
    rest = arg[len(keyword) + 1:].strip()
    if not rest.startswith("<") or ">" not in rest:
        return None
    addr = rest[1:rest.index(">")]
    if any(c in addr for c in " \r\n\0<>"):
        return None
    return addr


class SmtpFront(StreamFront):
    def __init__(self, egress: Egress, relay: str, limits: SmtpLimits = SmtpLimits(), name: str = "ifc-egress",
                 upstream: ssl.SSLContext | None = None):
        """`relay`: `smtp://host[:port]` (STARTTLS) or `smtps://host[:port]` (implicit TLS, as is port 465).
        `upstream`: how the relay's certificate is verified (default: the system roots)."""
        self.relay = Relay.parse(relay)
        host = f"[{self.relay.host}]" if ":" in self.relay.host else self.relay.host
        self.endpoint = Endpoint.parse(f"smtp://{host}:{self.relay.port}")  # the policy's name for the relay
        self.upstream = upstream or upstream_context(alpn=())
        self.egress = egress
        self.limits = limits
        self.name = name

    @property
    def _read_limit(self) -> int:
        return self.limits.max_line + 2

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = self.egress.client(None, f"{peer[0]}:{peer[1]}" if peer else "")
        credentials: Credentials | None = None
        authenticated = False

        async def reply(text: str) -> None:
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        env = _Envelope()
        try:
            await reply(f"220 {self.name} ESMTP ifc egress")
            for _ in range(self.limits.max_commands):
                try:
                    line = await self._line(reader)
                except asyncio.LimitOverrunError:
                    await reply("500 5.5.2 line too long")
                    return
                except TimeoutError:
                    await reply("421 4.4.2 too slow, closing")
                    return
                verb, _, arg = line.decode("latin-1").rstrip("\r\n").partition(" ")
                verb = verb.upper()
                if verb in ("EHLO", "HELO"):
                    env = _Envelope()
                    if verb == "EHLO":
                        await reply(f"250-{self.name}\r\n250-SIZE {self.limits.max_message}\r\n250-8BITMIME\r\n"
                                    "250 AUTH PLAIN LOGIN")
                    else:
                        await reply(f"250 {self.name}")
                elif verb == "AUTH":
                    if authenticated:
                        await reply("503 5.5.1 already authenticated")
                        continue
                    client, credentials, authenticated = await self._auth(arg, client, reader, reply)
                elif verb == "MAIL":
                    sender = _address(arg, "FROM")
                    if sender is None:
                        await reply("501 5.5.4 syntax: MAIL FROM:<address>")
                    else:
                        env = _Envelope(sender)
                        await reply("250 2.1.0 ok")
                elif verb == "RCPT":
                    rcpt = _address(arg, "TO")
                    if env.sender is None:
                        await reply("503 5.5.1 MAIL first")
                    elif not rcpt:
                        await reply("501 5.5.4 syntax: RCPT TO:<address>")
                    elif len(env.recipients) >= self.limits.max_recipients:
                        await reply("452 4.5.3 too many recipients")
                    else:
                        env.recipients.append(rcpt)
                        await reply("250 2.1.5 ok")
                elif verb == "DATA":
                    if env.sender is None or not env.recipients:
                        await reply("503 5.5.1 MAIL and RCPT first")
                        continue
                    await reply("354 end data with <CR><LF>.<CR><LF>")
                    data = await self._data(reader)
                    if data is None:
                        await reply(f"552 5.3.4 message larger than {self.limits.max_message} bytes")
                        return
                    await reply(await self._submit(client, env, data, credentials))
                    env = _Envelope()
                elif verb == "RSET":
                    env = _Envelope()
                    await reply("250 2.0.0 ok")
                elif verb == "NOOP":
                    await reply("250 2.0.0 ok")
                elif verb == "QUIT":
                    await reply("221 2.0.0 bye")
                    return
                else:
                    await reply("500 5.5.2 command not recognised")
            await reply("421 4.7.0 too many commands")
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("internal error in the SMTP front")
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _line(self, reader: asyncio.StreamReader) -> bytes:
        return await asyncio.wait_for(reader.readuntil(b"\n"), self.limits.command_timeout)

    async def _challenge(self, reader, reply, prompt: bytes) -> bytes:
        """One SASL round: the prompt out, the client's base64 answer back (`*` cancels: ValueError)."""
        await reply("334 " + base64.b64encode(prompt).decode())
        try:
            answer = (await self._line(reader)).strip()
        except asyncio.LimitOverrunError:
            raise ValueError("answer too long") from None
        if answer == b"*":
            raise ValueError("cancelled")
        return base64.b64decode(answer, validate=True)

    async def _auth(self, arg: str, client: Client, reader, reply) -> tuple[Client, Credentials | None, bool]:
        """(the client, the relay credentials, whether AUTH succeeded) after one AUTH command."""
        mech, _, initial = arg.partition(" ")
        initial = initial.strip()
        try:
            if mech.upper() == "PLAIN":
                blob = base64.b64decode(initial, validate=True) if initial else await self._challenge(reader, reply,
                                                                                                     b"")
                parts = blob.split(b"\0")
                if len(parts) != 3:
                    raise ValueError("not authzid NUL user NUL password")
                _authz, user, password = parts
            elif mech.upper() == "LOGIN":
                user = (base64.b64decode(initial, validate=True) if initial
                        else await self._challenge(reader, reply, b"Username:"))
                password = await self._challenge(reader, reply, b"Password:")
            else:
                await reply("504 5.5.4 AUTH PLAIN or LOGIN: user `ifc` and a token, or the relay's user and the "
                            "sentinel of its password")
                return client, None, False
        except (binascii.Error, ValueError):
            await reply("501 5.5.2 AUTH cancelled or malformed")
            return client, None, False
        if self.egress.vault.found(password):
            _, refused = self.egress.check_secrets(client, self.endpoint, user + b"\0" + password)
            if refused is not None:
                await reply(f"535 5.7.8 ifc: {refused.reason}")
                return client, None, False
            await reply("235 2.7.0 credentials noted: the relay gets the real values, over TLS, with each message")
            return client, Credentials(user, password), True
        if user == b"ifc":
            try:
                token = password.decode("ascii")
            except UnicodeDecodeError:
                await reply("501 5.5.2 a token is ASCII")
                return client, None, False
            await reply("235 2.7.0 token noted; it is checked when the message is sent")
            return self.egress.client(token or None, client.peer), None, True
        reason = (f"the password is not a secret's sentinel: the sandbox holds no credential for {self.endpoint}; "
                  "give the sentinel of a secret bound to it (or user `ifc` and a token)")
        self.egress.refuse(client, "connect", str(self.endpoint), reason, "egress: smtp auth")
        await reply(f"535 5.7.8 ifc: {reason}")
        return client, None, False

    async def _data(self, reader) -> bytes | None:
        lines = []
        size = 0
        too_big = False
        while True:
            line = await self._line(reader)
            if line in (b".\r\n", b".\n"):
                break
            if line.startswith(b".."):
                line = line[1:]
            size += len(line)
            if size > self.limits.max_message:
                too_big = True
            elif not too_big:
                lines.append(line)
        return None if too_big else b"".join(lines)

    async def _submit(self, client: Client, env: _Envelope, data: bytes, credentials: Credentials | None) -> str:
        flow = Flow(f"smtp {self.endpoint} from {client.peer}")
        try:
            verdict = await self.egress.open(client, "smtp", self.relay.host, self.relay.port, flow=flow)
            if not verdict.allowed:
                return f"550 5.7.1 ifc: {verdict.reason}"
            message = Message(env.sender or "", env.recipients, data)
            in_message, refused = self.egress.check_secrets(
                client, verdict.endpoint, data + message.sender.encode() + " ".join(message.recipients).encode())
            if refused is not None:
                return f"550 5.7.1 ifc: {refused.reason}"
            if in_message:
                reason = (f"the sentinel of secret `{in_message[0].name}` is in the message: a secret bound to "
                          f"{verdict.endpoint} is its credential, sent only in AUTH; in a message it would reach "
                          "the recipients")
                self.egress.refuse(client, "send", f"{in_message[0].name}@{verdict.endpoint}", reason,
                                   "egress: smtp credential in message")
                return f"550 5.7.1 ifc: {reason}"
            if credentials is not None:
                swap, refused = self.egress.check_secrets(client, verdict.endpoint,
                                                          credentials.user + b"\0" + credentials.password)
                if refused is not None:
                    return f"535 5.7.8 ifc: {refused.reason}"
                vault = self.egress.vault
                credentials = Credentials(vault.swap(credentials.user, swap), vault.swap(credentials.password, swap))
            try:
                await deliver(self.relay, verdict.addresses, self.upstream, message, credentials=credentials,
                              require_tls=credentials is not None, flow=flow, name=self.name,
                              timeout=self.limits.relay_timeout)
            except RelayError as exc:
                text = self.egress.vault.scrub(exc.text).decode("utf-8", "replace")
                text = " ".join(text.split())  # one line, whatever the relay sent
                if exc.rule is not None:
                    self.egress.refuse(client, "connect", str(verdict.endpoint), text, exc.rule)
                return f"{exc.code if 400 <= exc.code < 600 else 451} {text}"  # never a success for a failure
            return "250 2.0.0 relayed"
        finally:
            self.egress.close(flow)
