"""The SMTP submission front: the sandbox's mail client talks to it, and it relays to the real server only
when the monitor allows `connect smtp://host:port` for the sender's taint at the moment the message is
complete (so reading `.env` between MAIL and DATA still counts).

A client may `AUTH PLAIN` as `ifc` with a token as the password to be its own subject; otherwise it is
the session. Sentinels of policy secrets in the message are swapped when the secret is bound to the relay
endpoint, else the message is refused. Replies: 550 5.7.1 with the reason on a denial, 451 when the relay
fails, 500/501/503 for bad commands, 552 for an oversized message, 421 for a slow client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import smtplib
import ssl
from dataclasses import dataclass, field

from ifc.enforce.egress import Client, Egress, StreamFront

log = logging.getLogger("ifc.egress.smtp")


@dataclass(frozen=True)
class SmtpLimits:
    max_line: int = 1000
    max_message: int = 10 << 20
    max_recipients: int = 100
    command_timeout: float = 60.0
    max_commands: int = 1000


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
    def __init__(self, egress: Egress, relay: str, limits: SmtpLimits = SmtpLimits(), name: str = "ifc-egress"):
        scheme, _, rest = relay.partition("://")
        if scheme != "smtp" or not rest:
            raise ValueError(f"the relay must be `smtp://host:port`, not `{relay}`")
        host, _, port = rest.rpartition(":")
        self.relay_host, self.relay_port = (host, int(port)) if host else (rest, 587)
        self.egress = egress
        self.limits = limits
        self.name = name

    @property
    def _read_limit(self) -> int:
        return self.limits.max_line + 2

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = self.egress.client(None, f"{peer[0]}:{peer[1]}" if peer else "")

        async def reply(text: str) -> None:
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        env = _Envelope()
        try:
            await reply(f"220 {self.name} ESMTP ifc egress")
            for _ in range(self.limits.max_commands):
                try:
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), self.limits.command_timeout)
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
                                    "250 AUTH PLAIN")
                    else:
                        await reply(f"250 {self.name}")
                elif verb == "AUTH":
                    client = await self._auth(arg, client, reader, reply)
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
                    await reply(await self._submit(client, env, data))
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

    async def _auth(self, arg: str, client: Client, reader, reply) -> Client:
        mech, _, initial = arg.partition(" ")
        if mech.upper() != "PLAIN":
            await reply("504 5.5.4 only AUTH PLAIN (user `ifc`, password: a token)")
            return client
        if not initial:
            await reply("334 ")
            initial = (await asyncio.wait_for(reader.readuntil(b"\n"), self.limits.command_timeout)).decode().strip()
        try:
            _authz, _user, password = base64.b64decode(initial, validate=True).decode().split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            await reply("501 5.5.2 bad AUTH PLAIN response")
            return client
        await reply("235 2.7.0 token noted; it is checked when the message is sent")
        return self.egress.client(password or None, client.peer)

    async def _data(self, reader) -> bytes | None:
        lines = []
        size = 0
        too_big = False
        while True:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), self.limits.command_timeout)
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

    async def _submit(self, client: Client, env: _Envelope, data: bytes) -> str:
        verdict = await self.egress.open(client, "smtp", self.relay_host, self.relay_port)
        if not verdict.allowed:
            return f"550 5.7.1 ifc: {verdict.reason}"
        swap, refused = self.egress.check_secrets(client, verdict.endpoint, data + env.sender.encode() +
                                                  " ".join(env.recipients).encode())
        if refused is not None:
            return f"550 5.7.1 ifc: {refused.reason}"
        if swap:
            data = self.egress.vault.swap(data, swap)
        try:
            await asyncio.to_thread(_relay, verdict.addresses, self.relay_port, self.relay_host, env.sender,
                                    env.recipients, data)
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
            return f"{exc.smtp_code} relay: {text}".replace("\r", " ").replace("\n", " ")
        except smtplib.SMTPRecipientsRefused:
            return "550 5.1.1 relay refused every recipient"
        except (OSError, smtplib.SMTPException) as exc:
            return f"451 4.4.0 relay failed: {exc}".replace("\n", " ")
        return "250 2.0.0 relayed"


def _relay(addresses: tuple[str, ...], port: int, host: str, sender: str, recipients: list[str], data: bytes):
    """Send through the real server at a checked address; STARTTLS (verified against `host`) when offered."""
    last: Exception | None = None
    for addr in addresses:
        try:
            smtp = smtplib.SMTP(addr, port, timeout=30, local_hostname="ifc-egress")
        except OSError as exc:
            last = exc
            continue
        with smtp:
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                smtp._host = host  # verify the certificate against the name, not the address we connected to
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            smtp.sendmail(sender, recipients, data)
            return
    raise OSError(f"cannot reach the relay: {last}")
