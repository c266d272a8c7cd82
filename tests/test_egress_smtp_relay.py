"""The SMTP front against relays that want what real providers want: AUTH, over STARTTLS (587) or implicit TLS
(465), with a certificate the front verifies. smtplib (the sandbox) → ifc → an aiosmtpd relay on 127.0.0.1."""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ifc.enforce.egress import BackgroundLoop, Egress
from ifc.enforce.secrets import Vault
from ifc.enforce.smtp_front import SmtpFront
from ifc.enforce.tls import upstream_context
from ifc.monitor import EventLog, Monitor
from ifc.monitor.monitor import Request
from ifc.policy import compile_text
from tests.tls_support import make_upstream_ca

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")
from aiosmtpd.smtp import AuthResult  # noqa: E402  (after the skip: aiosmtpd is a dev dependency)

pytestmark = pytest.mark.integration

USER = "agent@example.test"
PASSWORD = "real-app-password-0f3c"
POLICY = """
labels {
  secrecy public < internal < secret
}
files {
  "**"     internal
  ".env"   secret
}
endpoints {
  "smtp://127.0.0.1:{S}"  clearance public as mail, external
}
deny secret -> external "secrets never leave the sandbox"
secret SMTP_PASSWORD from env "IFC_TEST_SMTP_PASSWORD" to "smtp://127.0.0.1:{S}"
secret API_KEY from env "IFC_TEST_API_KEY" to "https://api.example.com"
"""
MESSAGE = b"From: agent@example.test\r\nTo: friend@example.org\r\nSubject: hi\r\n\r\n.a dotted line\r\nbye\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """An aiosmtpd relay that records who authenticated, with what, and over what."""

    def __init__(self, password: str = PASSWORD, echo: bool = False):
        self.password = password.encode()
        self.echo = echo
        self.logins: list[tuple[str, bytes, bytes, bool]] = []
        self.messages: list[tuple[str, list[str], bytes, bool]] = []

    def __call__(self, server, session, envelope, mechanism, auth_data):
        tls = server.transport.get_extra_info("ssl_object") is not None
        self.logins.append((mechanism, auth_data.login, auth_data.password, tls))
        if auth_data.login == USER.encode() and auth_data.password == self.password:
            return AuthResult(success=True)
        # a relay that echoes what it got: the front must not let the real value through
        message = f"535 5.7.8 bad password {auth_data.password.decode()}" if self.echo else None
        return AuthResult(success=False, handled=False, message=message)

    async def handle_DATA(self, server, session, envelope):
        tls = server.transport.get_extra_info("ssl_object") is not None
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content, tls))
        return "250 OK"


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


@pytest.fixture
def certs(tmp_path):
    """The relay's certificate (trusted by the front through `upstream`), and one from a CA nobody trusts."""
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    ca, cert, key = make_upstream_ca(tmp_path / "good", ["127.0.0.1"])
    _, bad_cert, bad_key = make_upstream_ca(tmp_path / "bad", ["127.0.0.1"])
    return dict(ca=ca, good=server_context(cert, key), bad=server_context(bad_cert, bad_key))


@pytest.fixture
def world(tmp_path, certs):
    """`start(kind, ...)`: a relay of that kind and a front in front of it. Kinds: `starttls` (STARTTLS required,
    AUTH only over TLS), `implicit` (465-style), `plain` (no STARTTLS, AUTH offered in clear), `badcert`
    (STARTTLS with a certificate that does not verify), `implicit-badcert`."""
    started = []

    def start(kind: str, relay: Relay | None = None, real: str = PASSWORD, **controller):
        relay = relay or Relay()
        port = free_port()
        implicit = kind.startswith("implicit")
        context = certs["bad" if kind.endswith("badcert") else "good"]
        if implicit:  # aiosmtpd counts only STARTTLS as TLS for `auth_require_tls`: the login records it
            controller.update(ssl_context=context, auth_require_tls=False)
        elif kind != "plain":
            controller.update(tls_context=context, require_starttls=True)
        else:
            controller.update(auth_require_tls=False)
        ctl = aiosmtpd_controller.Controller(relay, hostname="127.0.0.1", port=port, authenticator=relay,
                                             **controller)
        ctl.start()
        policy = compile_text(POLICY.replace("{S}", str(port))).policy
        log = EventLog(tmp_path / f"events-{port}.db")
        monitor = Monitor(policy, log=log)
        vault = Vault.from_policy(policy, values={"SMTP_PASSWORD": real, "API_KEY": "sk-real-api"})
        bg = BackgroundLoop()
        front = SmtpFront(Egress(monitor, vault=vault), f"{'smtps' if implicit else 'smtp'}://127.0.0.1:{port}",
                          upstream=upstream_context(str(certs["ca"]), alpn=()))
        _, fport = bg.run(front.start())
        started.append((bg, front, ctl, monitor))
        env = vault.sandbox_env()
        return dict(relay=relay, port=fport, log=log, monitor=monitor, relay_port=port,
                    sentinel=env["SMTP_PASSWORD"], api_sentinel=env["API_KEY"])

    yield start
    for bg, front, ctl, monitor in started:
        bg.run(front.close())
        bg.stop()
        ctl.stop()
        monitor.close()


class Sandbox:
    """The sandbox's mail client, keeping every reply the front sent it."""

    def __init__(self, port: int):
        self.smtp = smtplib.SMTP("127.0.0.1", port, timeout=20)
        self.replies: list[bytes] = []
        self.smtp.ehlo()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.smtp.close()

    def login(self, user: str, password: str, mechanism: str = "PLAIN"):
        self.smtp.user, self.smtp.password = user, password
        try:
            code, text = self.smtp.auth(mechanism, getattr(self.smtp, f"auth_{mechanism.lower()}"))
        except smtplib.SMTPAuthenticationError as exc:
            self.replies.append(exc.smtp_error)
            raise
        self.replies.append(text)
        return code

    def send(self, message: bytes = MESSAGE):
        try:
            return self.smtp.sendmail(USER, ["friend@example.org"], message)
        except smtplib.SMTPResponseException as exc:
            self.replies.append(exc.smtp_error)
            raise


def refusals(w, rule: str) -> list:
    w["log"].flush()
    return [e for e in w["log"].events("deny") if e.rule == rule]


# ------------------------------------------------------------------------------------------ delivered

@pytest.mark.parametrize("kind", ["starttls", "implicit"])
def test_the_relay_gets_the_real_password_over_tls_and_the_sandbox_only_the_sentinel(world, kind):
    w = world(kind)
    with Sandbox(w["port"]) as sandbox:
        assert sandbox.login(USER, w["sentinel"]) == 235
        assert sandbox.send() == {}
    [(mechanism, login, password, tls)] = w["relay"].logins
    assert (mechanism, login, password, tls) == ("PLAIN", USER.encode(), PASSWORD.encode(), True)
    [(sender, rcpts, content, tls)] = w["relay"].messages
    assert (sender, rcpts, tls) == (USER, ["friend@example.org"], True)
    assert b"\r\n.a dotted line\r\nbye" in content, "dot-stuffing survives the relay hop"
    assert not any(PASSWORD.encode() in r for r in sandbox.replies)


def test_auth_login_on_both_sides(world):
    w = world("starttls", auth_exclude_mechanism=["PLAIN"])
    with Sandbox(w["port"]) as sandbox:
        assert sandbox.login(USER, w["sentinel"], "LOGIN") == 235
        sandbox.send()
    assert [(m, p, tls) for m, _, p, tls in w["relay"].logins] == [("LOGIN", PASSWORD.encode(), True)]
    assert len(w["relay"].messages) == 1


def test_mail_without_credentials_still_uses_the_offered_starttls(world):
    w = world("starttls")
    with Sandbox(w["port"]) as sandbox:
        sandbox.send()
    assert [tls for *_, tls in w["relay"].messages] == [True] and not w["relay"].logins


# ------------------------------------------------------------------------------------------ never in clear

def test_a_relay_without_starttls_gets_neither_the_credentials_nor_the_message(world):
    w = world("plain")
    with Sandbox(w["port"]) as sandbox:
        sandbox.login(USER, w["sentinel"])
        with pytest.raises(smtplib.SMTPDataError) as info:
            sandbox.send()
    assert info.value.smtp_code == 530 and "does not offer STARTTLS" in info.value.smtp_error.decode()
    assert not w["relay"].logins and not w["relay"].messages
    [event] = refusals(w, "egress: smtp tls")
    assert event.target == f"smtp://127.0.0.1:{w['relay_port']}" and "never sent in clear" in event.reason


@pytest.mark.parametrize("kind", ["badcert", "implicit-badcert"])
def test_a_relay_certificate_that_does_not_verify_gets_nothing(world, kind):
    w = world(kind)
    with Sandbox(w["port"]) as sandbox:
        sandbox.login(USER, w["sentinel"])
        with pytest.raises(smtplib.SMTPDataError) as info:
            sandbox.send()
    assert info.value.smtp_code == 454 and "CERTIFICATE_VERIFY_FAILED" in info.value.smtp_error.decode()
    assert not w["relay"].logins and not w["relay"].messages
    assert len(refusals(w, "egress: smtp tls")) == 1


def test_a_reply_injected_ahead_of_tls_is_refused(tmp_path):
    """A relay (or someone on the path) that sends more after `220` to STARTTLS: those plaintext bytes would be
    read as the first reply inside TLS, so the front refuses before the handshake."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    policy = compile_text(POLICY.replace("{S}", str(port))).policy
    log = EventLog(tmp_path / "injected.db")
    monitor = Monitor(policy, log=log)
    vault = Vault.from_policy(policy, values={"SMTP_PASSWORD": PASSWORD, "API_KEY": "sk-real-api"})
    bg = BackgroundLoop()
    front = SmtpFront(Egress(monitor, vault=vault), f"smtp://127.0.0.1:{port}")
    _, fport = bg.run(front.start())
    seen = []

    def relay():
        conn, _ = listener.accept()
        with conn, conn.makefile("rwb") as f:
            f.write(b"220 relay\r\n")
            f.flush()
            for line in f:
                seen.append(line)
                if line.startswith(b"EHLO"):
                    f.write(b"250-relay\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n")
                elif line.startswith(b"STARTTLS"):
                    f.write(b"220 go ahead\r\n250 injected\r\n")
                f.flush()

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    try:
        with Sandbox(fport) as sandbox:
            sandbox.login(USER, vault.sandbox_env()["SMTP_PASSWORD"])
            with pytest.raises(smtplib.SMTPDataError) as info:
                sandbox.send()
        thread.join(10)
    finally:
        bg.run(front.close())
        bg.stop()
        listener.close()
    assert info.value.smtp_code == 454 and "ahead of TLS" in info.value.smtp_error.decode()
    assert [line.split()[0] for line in seen] == [b"EHLO", b"STARTTLS"], "nothing after STARTTLS, in clear or not"
    log.flush()
    assert [e.rule for e in log.events("deny")] == ["egress: smtp tls"]
    monitor.close()


# ------------------------------------------------------------------------------------------ credentials

def test_wrong_credentials_are_a_clear_error_and_the_echoed_password_is_scrubbed(world):
    w = world("starttls", relay=Relay(password="what-the-relay-wants", echo=True))
    with Sandbox(w["port"]) as sandbox:
        sandbox.login(USER, w["sentinel"])
        with pytest.raises(smtplib.SMTPDataError) as info:
            sandbox.send()
    text = info.value.smtp_error.decode()
    assert info.value.smtp_code == 535 and "relay refused the credentials" in text
    assert "*" * len(PASSWORD) in text and PASSWORD not in text, "the relay's echo reaches the sandbox masked"
    assert [p for _, _, p, _ in w["relay"].logins] == [PASSWORD.encode()] and not w["relay"].messages
    [event] = refusals(w, "egress: smtp auth")
    assert "relay refused the credentials" in event.reason and PASSWORD not in event.reason


def test_a_password_of_the_sandbox_own_is_refused(world):
    w = world("starttls")
    with Sandbox(w["port"]) as sandbox, pytest.raises(smtplib.SMTPAuthenticationError) as info:
        sandbox.login(USER, "a-key-planted-in-the-workspace")
    assert info.value.smtp_code == 535 and "not a secret's sentinel" in info.value.smtp_error.decode()
    assert not w["relay"].logins
    assert len(refusals(w, "egress: smtp auth")) == 1


def test_the_sentinel_of_a_secret_bound_elsewhere_is_no_password(world):
    w = world("starttls")
    with Sandbox(w["port"]) as sandbox, pytest.raises(smtplib.SMTPAuthenticationError) as info:
        sandbox.login(USER, w["api_sentinel"])
    assert "secret `API_KEY` is headed for smtp://127.0.0.1" in info.value.smtp_error.decode()
    assert not w["relay"].logins


def test_the_credential_sentinel_in_a_message_is_refused(world):
    """A secret bound to the relay is its password: in a message it would reach the recipients."""
    w = world("starttls")
    with Sandbox(w["port"]) as sandbox:
        sandbox.login(USER, w["sentinel"])
        with pytest.raises(smtplib.SMTPDataError) as info:
            sandbox.send(MESSAGE + f"the password is {w['sentinel']}\r\n".encode())
    assert info.value.smtp_code == 550 and "sent only in AUTH" in info.value.smtp_error.decode()
    assert not w["relay"].logins and not w["relay"].messages
    assert len(refusals(w, "egress: smtp credential in message")) == 1


def test_taint_at_message_completion_keeps_the_credentials_home(world):
    w = world("starttls")
    with Sandbox(w["port"]) as sandbox:
        sandbox.login(USER, w["sentinel"])
        sandbox.smtp.mail(USER)
        sandbox.smtp.rcpt("friend@example.org")
        assert w["monitor"].decide(Request("read", ".env")).allowed  # between MAIL and DATA
        code, text = sandbox.smtp.data(MESSAGE)
    assert code == 550 and b"`secret` data may not go to" in text
    assert not w["relay"].logins and not w["relay"].messages


def test_a_relay_session_in_progress_is_cut_when_the_taint_rises(world):
    """The hop to the relay is a stream under the monitor (issue 11): the run reads `.env` while the relay is
    still checking the credentials, and the session ends there, with no message sent."""
    entered, release = threading.Event(), threading.Event()

    class Slow(Relay):
        def __call__(self, *args):
            entered.set()
            release.wait(10)
            return super().__call__(*args)

    w = world("starttls", relay=Slow())
    result = {}

    def mail():
        with Sandbox(w["port"]) as sandbox:
            sandbox.login(USER, w["sentinel"])
            try:
                sandbox.send()
            except smtplib.SMTPDataError as exc:
                result["error"] = exc

    thread = threading.Thread(target=mail)
    thread.start()
    assert entered.wait(10)
    assert w["monitor"].decide(Request("read", ".env")).allowed
    release.set()
    thread.join(20)
    error = result["error"]
    assert error.smtp_code == 550 and "`secret` data may not go to" in error.smtp_error.decode()
    assert not w["relay"].messages


# ------------------------------------------------------------------------------------------ ifc proxy

def test_ifc_proxy_relays_with_the_real_password_over_implicit_tls(tmp_path, certs):
    """End to end through the CLI: the SMTP front is served by `ifc proxy --smtp` (not by `ifc run`, which
    forwards only the HTTP proxy and the DNS stub), the relay verified with `--upstream-ca`."""
    relay = Relay()
    port = free_port()
    ctl = aiosmtpd_controller.Controller(relay, hostname="127.0.0.1", port=port, authenticator=relay,
                                         ssl_context=certs["good"], auth_require_tls=False)
    ctl.start()
    policy = tmp_path / "p.flow"
    policy.write_text(POLICY.replace("{S}", str(port)))
    run_dir = tmp_path / "run"
    env = {**os.environ, "IFC_TEST_SMTP_PASSWORD": PASSWORD, "IFC_TEST_API_KEY": "sk-real-api"}
    proc = subprocess.Popen([sys.executable, "-m", "ifc", "proxy", "--policy", str(policy), "--agent", "none",
                             "--listen", "127.0.0.1:0", "--smtp", "127.0.0.1:0",
                             "--smtp-relay", f"smtps://127.0.0.1:{port}", "--upstream-ca", str(certs["ca"]),
                             "--run-dir", str(run_dir)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr.readline().startswith("ifc proxy: http on ")
        line = proc.stderr.readline()
        assert line.startswith("ifc proxy: smtp on 127.0.0.1:"), line
        sandbox_env = dict(x.split("=", 1) for x in (run_dir / "sandbox.env").read_text().splitlines())
        assert PASSWORD not in (run_dir / "sandbox.env").read_text()
        with Sandbox(int(line.rsplit(":", 1)[1])) as sandbox:
            sandbox.login(USER, sandbox_env["SMTP_PASSWORD"])
            sandbox.send()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        ctl.stop()
    assert [(login, password, tls) for _, login, password, tls in relay.logins] == [
        (USER.encode(), PASSWORD.encode(), True)]
    assert len(relay.messages) == 1


def test_ifc_proxy_refuses_a_relay_that_is_not_smtp(tmp_path):
    policy = tmp_path / "p.flow"
    policy.write_text(POLICY.replace("{S}", "2525"))
    out = subprocess.run([sys.executable, "-m", "ifc", "proxy", "--policy", str(policy), "--smtp", "127.0.0.1:0",
                          "--smtp-relay", "https://smtp.example.com"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "IFC_TEST_SMTP_PASSWORD": "x", "IFC_TEST_API_KEY": "y"})
    assert out.returncode == 2 and "--smtp-relay: the relay must be `smtp://host:port`" in out.stderr
    assert "Traceback" not in out.stderr
