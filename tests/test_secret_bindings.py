"""Secrets go only to hosts their binding names one by one: `ifc check` calls a pattern binding (`*`, a
wildcard zone, a network) an error, the monitor never honours one (even if nobody ran `ifc check`), and no
fix or help text ever suggests `"*"`."""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import threading

import pytest

from ifc.check import check
from ifc.cli import main
from ifc.enforce.egress import BackgroundLoop, Egress, static_resolver
from ifc.enforce.http_proxy import HttpProxy
from ifc.enforce.secrets import Vault
from ifc.monitor import EventLog, Monitor, Request
from ifc.policy import compile_text

BASE = """labels { secrecy public < internal < secret }
files { "**" internal  ".env*" secret }
endpoints {
  "https://api.example.com", "https://uploads.example.com", "https://*.example.com"  clearance internal
  "tcp://10.0.0.5:5432", "tcp://10.0.0.0/8:5432"                                    clearance secret
  "*"                                                                               clearance public
}
"""

PATTERNS = ["*", "https://*", "*.com", "https://*.com", "https://*.example.com", "**.example.com",
            "https://**.example.com:*", "tcp://10.0.0.0/8:5432", "0.0.0.0/0"]
EXACT = ["https://api.example.com", "api.example.com:443", "https://api.example.com:*", "tcp://10.0.0.5:5432",
         "tcp://10.0.0.5/32:5432"]


def diagnostics(text: str):
    return check(compile_text(BASE + text, "p.flow")).diagnostics


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_secret_bound_to_a_pattern_is_an_error_at_the_pattern(pattern):
    text = f'secret K from env "K" to "https://api.example.com", "{pattern}"'
    [d] = [d for d in diagnostics(text) if d.code == "secret-pattern"]
    assert d.severity.name == "ERROR" and f"`{pattern}`" in d.message
    host = pattern.split("://")[-1].split(":")[0]
    assert ("every host:" if host == "*" else "nobody named") in d.message
    line = (BASE + text).splitlines()[d.span.line - 1]
    assert line[d.span.column - 1:].startswith(f'"{pattern}"'), "the caret points at the pattern"
    assert "exact hosts" in d.help


@pytest.mark.parametrize("pattern", EXACT)
def test_exact_hosts_and_single_addresses_are_fine(pattern):
    assert not [d for d in diagnostics(f'secret K from env "K" to "{pattern}"') if d.code == "secret-pattern"]


@pytest.mark.parametrize("pattern", ["https://*", "https://*.example.com", "tcp://10.0.0.0/8:5432"])
def test_the_monitor_never_honours_a_pattern_binding(pattern):
    policy = compile_text(BASE + f'secret K from env "K" to "https://api.example.com", "{pattern}"').policy
    monitor = Monitor(policy)
    exact = monitor.decide(Request("send", "K@https://api.example.com:443"))
    assert exact.allowed, "the exact binding still holds"
    target = {"https://*": "https://evil.example:443", "https://*.example.com": "https://attacker.example.com:443",
              "tcp://10.0.0.0/8:5432": "tcp://10.9.9.9:5432"}[pattern]
    denied = monitor.decide(Request("send", f"K@{target}"))
    assert not denied.allowed and f"`{pattern}`" in denied.reason and "nobody named" in denied.reason


def test_ifc_decide_denies_sending_a_pattern_bound_secret(tmp_path, capsys):
    policy = tmp_path / "p.flow"
    policy.write_text(BASE + 'secret K from env "K" to "https://*"\n')
    assert main(["check", str(policy)]) != 0
    assert "error: secret `K` is bound to `https://*`" in capsys.readouterr().out
    code = main(["decide", "--policy", str(policy), "--agent", "none", "--format", "json",
                 "send", "K@https://evil.example"])
    [step] = json.loads(capsys.readouterr().out)["steps"]
    assert code == 1 and not step["allowed"] and "covers hosts nobody named" in step["reason"]


HELP_POLICY = "\n".join(line for line in BASE.splitlines() if not line.lstrip().startswith('"*"')) + """
agent a {
  read "**"
  connect "https://*", "*.com", "*", "https://nowhere.test"
}
secret K from env "K" to "*"
secret L from env "L" to "https://*"
secret M from env "M" to "https://nowhere.test"
"""


def test_no_help_text_suggests_a_star():
    found = check(compile_text(HELP_POLICY, "p.flow")).diagnostics
    assert {"broad-grant", "secret-pattern", "secret-no-endpoint", "unusable-grant"} <= {d.code for d in found}
    for d in found:
        # a suggested `deny` may name a broad pattern: it narrows; what widens must name hosts
        quoted = re.findall(r'"([^"]*)"', re.sub(r"`deny [^`]*`", "", d.help or ""))
        assert not [q for q in quoted if q.split("://")[-1].startswith("*") or q in ("*", "**")], (d.code, d.help)


def test_an_authority_fix_for_a_file_named_star_grants_that_file_only():
    policy = compile_text(BASE + 'agent a { read "src/**" }').policy
    monitor = Monitor(policy, agent=policy.agents_[0])
    d = monitor.decide(Request("read", "*"))
    assert not d.allowed
    assert d.fix["policy"].startswith(r'read "/\\*"') and r"--read '/\*'" in d.fix["mint"]


class Echo(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        Echo.seen.append(self.headers.get("Authorization", ""))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.mark.integration
def test_the_proxy_swaps_a_sentinel_only_for_the_exactly_bound_host(tmp_path):
    """`to "http://api.test:P", "http://*:P"`: the wildcard binding is not honoured, so a request carrying the
    sentinel to another host is refused and the real value reaches only api.test."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    policy = compile_text(f"""labels {{ secrecy public < internal < secret }}
files {{ "**" internal }}
endpoints {{ "http://api.test:{port}", "http://other.test:{port}", "http://127.0.0.1:{port}" clearance internal }}
secret K from env "K" to "http://api.test:{port}", "http://*:{port}"
""").policy
    vault = Vault.from_policy(policy, values={"K": b"real-value-42"})
    log = EventLog(tmp_path / "events.db")
    egress = Egress(Monitor(policy, log=log), vault=vault,
                    resolver=static_resolver({"api.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}))
    bg = BackgroundLoop()
    _, pport = bg.run(HttpProxy(egress).start())
    sentinel = vault.sandbox_env()["K"]
    try:
        def get(host: str) -> str:
            return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                                   "-x", f"http://127.0.0.1:{pport}", "-H", f"Authorization: Bearer {sentinel}",
                                   f"http://{host}:{port}/"], capture_output=True, text=True, timeout=20).stdout

        assert get("other.test") == "403"
        assert get("api.test") == "200"
        assert Echo.seen == ["Bearer real-value-42"], "only the exactly bound host got the real value"
        log.flush()
        [denied] = [e for e in log.events("deny") if e.op == "send"]
        assert denied.target == f"K@http://other.test:{port}" and "nobody named" in denied.reason
    finally:
        bg.stop()
        server.shutdown()


@pytest.mark.parametrize("pattern", ["*", "https://*", "https://*.example.com"])
def test_the_run_ca_never_covers_a_pattern_binding(pattern):
    """A policy that skipped `ifc check`: the per-run CA is constrained to the exactly bound hosts, so a pattern
    binding cannot make the hook terminate (and read) every HTTPS tunnel."""
    from ifc.enforce.tls import Termination
    from ifc.match import Endpoint

    policy = compile_text(BASE + f'secret K from env "K" to "https://api.example.com", "{pattern}"').policy
    tls = Termination.for_policy(policy)
    assert tls.terminates(Endpoint.parse("https://api.example.com"))
    assert not tls.terminates(Endpoint.parse("https://other.example.com"))
    assert not tls.terminates(Endpoint.parse("https://evil.test"))
