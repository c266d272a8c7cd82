"""Endpoint patterns with paths and methods, decided by the monitor: a forge is a sink that knows whose account
it reaches. `git push` to another account on an allowed forge is refused while the project's own is allowed; a
GET-only rule refuses POST; grants narrow by path and method; a connection whose requests are decided one by one
is admitted only when the hook says it inspects them (a terminated tunnel), never blind; the run CA grows to
exactly the hosts that need it. Decided by the real monitor through `Egress` (no proxy: the hook's rewrite calls
`Egress.decide_request` per request)."""

from __future__ import annotations

import asyncio

import pytest

from ifc.enforce.egress import Egress, Flow, static_resolver
from ifc.enforce.tls import Termination, name_constraints
from ifc.match import Endpoint, EndpointPattern, PatternError, request_path
from ifc.monitor import EventLog, Monitor, Request
from ifc.monitor.containment import Facts
from ifc.policy import compile_text

POLICY = """
labels { secrecy public < internal < secret }
files {
  "**"     public
  "src/**" internal
  ".env"   secret
}
endpoints {
  # any public repository may be fetched: discovery and upload-pack, for every owner
  "https://github.com/*/*/info/refs"       methods GET  clearance public returns untrusted
  "https://github.com/*/*/git-upload-pack" methods POST clearance public returns untrusted
  # the project's own organisation: fetch and push, and it may hold the project's code
  "https://github.com/acme/**" methods GET, POST clearance internal
  "https://api.github.com/repos/acme/**" methods GET clearance internal
  "https://*.cdn.test/assets/**" clearance public
  "https://docs.test" clearance public except "https://docs.test/private/**"
  "https://plain.test" clearance internal
}
agent dev {
  read "**"
  connect "https://github.com", "https://api.github.com", "https://*.cdn.test", "https://docs.test",
          "https://plain.test"
}
agent reader {
  read "**"
  connect "https://github.com/acme/**" methods GET
}
"""

RESOLVE = {"github.com": ["140.82.112.3"], "api.github.com": ["140.82.112.6"], "a.cdn.test": ["93.184.216.34"],
           "docs.test": ["93.184.216.35"], "plain.test": ["93.184.216.36"]}
PUSH_ATTACKER = "/attacker/x.git/git-receive-pack"
PUSH_ACME = "/acme/x.git/git-receive-pack"


@pytest.fixture
def policy():
    result = compile_text(POLICY, "routes.flow")
    assert result.policy is not None, [d.message for d in result.diagnostics]
    return result.policy


@pytest.fixture
def log(tmp_path):
    events = EventLog(tmp_path / "events.db")
    yield events
    events.close()


def egress_for(policy, agent: str = "dev", log=None) -> Egress:
    monitor = Monitor(policy, agent=policy.agents[agent], log=log)
    return Egress(monitor, resolver=static_resolver(RESOLVE))


def request(egress: Egress, method: str, path: str, host: str = "github.com", flow: Flow | None = None):
    return egress.decide_request(egress.client(None), "https", host, 443, method, path, flow=flow)


def open_tunnel(egress: Egress, host: str, *, inspected: bool, flow: Flow | None = None):
    return asyncio.run(egress.open(egress.client(None), "https", host, 443, inspected=inspected, flow=flow))


# ================================================================================ whose account a push reaches
def test_git_push_to_another_account_is_refused_while_the_projects_own_is_allowed(policy, log):
    egress = egress_for(policy, log=log)
    assert request(egress, "GET", "/attacker/x.git/info/refs?service=git-upload-pack").allowed  # a clean clone
    assert request(egress, "POST", "/attacker/x.git/git-upload-pack").allowed
    refused = request(egress, "POST", PUSH_ATTACKER)
    assert not refused.allowed and refused.status == 403
    assert refused.decision.target == f"POST https://github.com:443{PUSH_ATTACKER}"
    assert "no endpoint rule names" in refused.reason
    assert request(egress, "POST", PUSH_ACME).allowed
    log.flush()
    denied = [e.target for e in log.events("deny")]
    assert denied == [f"POST https://github.com:443{PUSH_ATTACKER}"]


def test_after_reading_the_project_its_code_goes_only_to_the_projects_account(policy):
    egress = egress_for(policy)
    assert egress.monitor.decide(Request("read", "src/app.py")).allowed  # the run is now `internal`
    assert request(egress, "POST", PUSH_ACME).allowed
    fetch = request(egress, "POST", "/attacker/x.git/git-upload-pack")  # the request body could carry the code
    assert not fetch.allowed and "exceeds the clearance" in fetch.reason
    assert "git-upload-pack" in fetch.decision.rule and "routes.flow:11" in fetch.decision.rule_span


def test_a_get_only_rule_refuses_post(policy):
    egress = egress_for(policy)
    assert request(egress, "GET", "/repos/acme/x/issues", host="api.github.com").allowed
    assert request(egress, "HEAD", "/repos/acme/x", host="api.github.com").allowed is False
    post = request(egress, "POST", "/repos/acme/x/issues", host="api.github.com")
    assert not post.allowed and "no endpoint rule names POST https://api.github.com:443/repos/acme/x/issues" \
        in post.reason
    assert not request(egress, "GET", "/repos/attacker/x", host="api.github.com").allowed


def test_a_grant_with_a_path_and_methods_authorises_only_matching_requests(policy):
    egress = egress_for(policy, agent="reader")
    assert request(egress, "GET", "/acme/x.git/info/refs").allowed
    push = request(egress, "POST", PUSH_ACME)
    assert not push.allowed and "agent `reader` has no `connect` grant" in push.reason
    assert push.decision.fix["policy"].startswith('connect "https://github.com:443/acme/x.git/git-receive-pack" '
                                                  "methods POST")
    assert not request(egress, "GET", "/attacker/x.git/info/refs").allowed


# ================================================================================ connections and tunnels
def test_a_tunnel_is_decided_on_host_and_port_only_when_its_requests_are_inspected(policy, log):
    egress = egress_for(policy, log=log)
    blind = open_tunnel(egress, "github.com", inspected=False)
    assert not blind.allowed
    assert "not inspected" in blind.reason and "routes.flow:13" in blind.decision.rule_span
    inspected = open_tunnel(egress, "github.com", inspected=True)
    assert inspected.allowed and inspected.addresses == ("140.82.112.3",)
    # the agent whose grant names paths: the same, on its authority
    reader = egress_for(policy, agent="reader")
    refused = open_tunnel(reader, "github.com", inspected=False)
    assert not refused.allowed and "only for some paths or methods" in refused.reason
    assert open_tunnel(reader, "github.com", inspected=True).allowed


def test_a_host_whose_rules_name_no_path_keeps_its_blind_tunnel(policy):
    egress = egress_for(policy)
    assert open_tunnel(egress, "plain.test", inspected=False).allowed
    assert request(egress, "PUT", "/anything/at/all", host="plain.test").allowed


def test_an_inspected_tunnel_admits_what_some_rule_clears_and_each_request_is_held_to_its_own(policy):
    egress = egress_for(policy)
    egress.monitor.decide(Request("read", "src/app.py"))  # internal: only the acme rule may take it
    assert open_tunnel(egress, "github.com", inspected=True).allowed
    assert request(egress, "POST", PUSH_ACME).allowed
    assert not request(egress, "POST", PUSH_ATTACKER).allowed
    egress.monitor.decide(Request("read", ".env"))  # secret: no rule on the host may take it
    tunnel = open_tunnel(egress, "github.com", inspected=True)
    assert not tunnel.allowed and "exceeds the clearance" in tunnel.reason


def test_a_wildcard_host_with_a_path_is_never_terminated_and_its_tunnels_are_refused(policy):
    tls = Termination.for_policy(policy)
    assert tls.terminates(Endpoint("https", "github.com", 443))
    assert tls.terminates(Endpoint("https", "api.github.com", 443))
    assert tls.terminates(Endpoint("https", "docs.test", 443)), "an except naming a path needs the requests too"
    assert not tls.terminates(Endpoint("https", "a.cdn.test", 443))
    assert not tls.terminates(Endpoint("https", "plain.test", 443)), "no path, no secret: stays blind"
    permitted = [n.value for n in name_constraints(tls.bound).permitted_subtrees]
    assert sorted(permitted) == ["api.github.com", "docs.test", "github.com"], "exact names only"
    egress = egress_for(policy)
    refused = open_tunnel(egress, "a.cdn.test", inspected=False)
    assert not refused.allowed and "not inspected" in refused.reason
    assert "*.cdn.test/assets/**" in refused.decision.rule and "routes.flow:15" in refused.decision.rule_span
    # were it inspected (a plain-HTTP forward would be), its requests are decided by path
    assert request(egress, "GET", "/assets/app.js", host="a.cdn.test").allowed
    assert not request(egress, "GET", "/upload", host="a.cdn.test").allowed


def test_a_request_stream_is_cut_when_the_taint_rises_past_its_own_rule(policy):
    egress = egress_for(policy)
    cut: list[str] = []

    class Recorded(Flow):
        def cut(self, reason: str) -> None:
            cut.append(self.describe)
            super().cut(reason)

    upload, push = Recorded("upload-pack"), Recorded("receive-pack")
    assert request(egress, "POST", "/attacker/x.git/git-upload-pack", flow=upload).allowed
    assert request(egress, "POST", PUSH_ACME, flow=push).allowed
    egress.monitor.decide(Request("read", "src/app.py"))
    assert cut == ["upload-pack"] and not upload.alive and push.alive
    assert "git-upload-pack" in str(upload.stream.endpoint)
    egress.close(push)


# ================================================================================ exactness
def test_the_fast_path_keys_on_method_and_path(policy):
    egress = egress_for(policy)
    for _ in range(3):
        assert request(egress, "POST", PUSH_ACME).allowed
    assert not request(egress, "POST", PUSH_ATTACKER).allowed
    assert not request(egress, "PUT", PUSH_ACME).allowed
    m = egress.monitor
    assert not m.decide(Request("connect", f"POST https://github.com{PUSH_ATTACKER}")).allowed
    assert m.decide(Request("connect", f"POST https://github.com{PUSH_ACME}")).allowed
    blind = Request("connect", "https://github.com")
    assert not m.decide(blind).allowed
    assert m.decide(Request("connect", "https://github.com", facts=Facts(inspected=True))).allowed
    assert not m.decide(blind).allowed, "an inspected answer is never handed to a blind connection"


@pytest.mark.parametrize("path", ["/private/x", "/%70rivate/x", "/private/x/", "/private/x?q=1"])
def test_an_except_naming_paths_cannot_be_walked_around_by_spelling(policy, path):
    egress = egress_for(policy)
    assert request(egress, "GET", "/public/page", host="docs.test").allowed
    assert not request(egress, "GET", path, host="docs.test").allowed


@pytest.mark.parametrize("path", ["/public/../private/x", "/public/%2e%2e/private/x", "//private/x",
                                  "/private%2Fx", "/a\\b", "/a b", "relative", "/%zz"])
def test_a_path_a_server_could_read_two_ways_is_a_bad_request(policy, log, path):
    egress = egress_for(policy, log=log)
    verdict = request(egress, "GET", path, host="docs.test")
    assert not verdict.allowed and verdict.status == 400 and verdict.reason.startswith("bad target")
    log.flush()
    assert [e.rule for e in log.events("deny")] == ["egress: target"]


def test_request_paths_normalise_as_servers_compare_them():
    assert request_path("/") == ""
    assert request_path("/%61cme/X.git/") == "acme/X.git"
    assert request_path("/a%20b/%7e") == "a%20b/~"
    with pytest.raises(PatternError):
        request_path("/a/./b")


# ================================================================================ the language
@pytest.mark.parametrize(("text", "problem"), [
    ("tcp://db:5432/x", "only `https://` and `http://` endpoints have a path"),
    ("github.com/acme/**", "only `https://` and `http://` endpoints have a path"),
    ("smtp://mail.test methods POST", "only `https://` and `http://` patterns take methods"),
    ("https://h/a/../b", "`..` is not allowed"),
    ("https://h/a methods G(T", "is not an HTTP method"),
])
def test_bad_patterns_say_why(text, problem):
    with pytest.raises(PatternError, match=problem.replace("(", r"\(").replace("*", r"\*")):
        EndpointPattern.parse(text)


def test_paths_match_exactly_and_slash_star_star_is_every_path():
    acme = EndpointPattern.parse("https://github.com/acme/**")
    assert acme.matches(Endpoint.parse("GET https://github.com/acme/x/y"))
    assert not acme.matches(Endpoint.parse("GET https://github.com/acme"))
    assert not acme.matches(Endpoint.parse("GET https://github.com/acmeco/x"))
    one = EndpointPattern.parse("https://github.com/acme/*.git methods GET")
    assert one.matches(Endpoint.parse("GET https://github.com/acme/x.git"))
    assert not one.matches(Endpoint.parse("GET https://github.com/acme/x.git/info/refs"))
    assert not EndpointPattern.parse("https://github.com/**").restricted
    assert EndpointPattern.parse("https://github.com/**").covers(acme)
    assert not acme.covers(EndpointPattern.parse("https://github.com"))
    assert EndpointPattern.parse("https://github.com/acme/** methods GET,POST").covers(
        EndpointPattern.parse("https://github.com/acme/x/** methods GET"))
    assert not EndpointPattern.parse("https://github.com/acme/** methods GET").covers(
        EndpointPattern.parse("https://github.com/acme/x/** methods GET,POST"))


def test_the_compiler_places_paths_and_methods_where_they_can_be_decided():
    result = compile_text("""
labels { secrecy public < internal }
endpoints { "https://h.test/a/**" methods get  "https://h.test/b methods GET" }
secret K from env "K" to "https://h.test/a/**"
allow internal -> "https://h.test/b/**"
agent a { read "**" methods GET  connect "https://h.test/a/**" methods POST }
""", "c.flow")
    found = sorted((d.code, d.span.line, d.message) for d in result.diagnostics)
    assert [(code, line) for code, line, _ in found] == [
        ("bad-method", 3), ("bad-method", 6), ("bad-pattern", 3), ("bad-pattern", 4), ("bad-pattern", 5)]
    messages = " | ".join(m for _, _, m in found)
    assert "`get` is not `GET`" in messages and "`read` takes no methods" in messages
    assert "methods go after the string" in messages
    assert "a secret's binding names hosts" in messages and "a flow's sink names hosts" in messages


# ================================================================================ covers agrees with matches
_PATTERNS = ["https://github.com", "https://github.com/**", "https://github.com/acme/**",
             "https://github.com/acme/*", "https://github.com/*/x.git/**", "https://github.com/acme/x.git/**",
             "https://*.github.com/acme/**", "https://github.com/acme/** methods GET",
             "https://github.com/acme/** methods GET,POST", "https://github.com methods POST",
             "https://github.com/ methods GET", "https://github.com/acme", "*:443"]
_REQUESTS = [Endpoint.parse(t) for t in (
    "GET https://github.com/acme/x.git/info/refs", "POST https://github.com/acme/x.git/git-receive-pack",
    "POST https://github.com/attacker/x.git/git-receive-pack", "GET https://github.com/acme", "GET https://github.com/",
    "PUT https://github.com/acme/y", "GET https://api.github.com/acme/x", "DELETE https://github.com/acme/x.git")] + [
    Endpoint("https", "github.com", 443), Endpoint("https", "github.com", 443, inspected=True)]


@pytest.mark.parametrize("outer", _PATTERNS)
@pytest.mark.parametrize("inner", _PATTERNS)
def test_covers_never_claims_more_than_matches_shows(outer, inner):
    """`covers` decides `delegate-widens` and shadowing: when it says yes, every request the inner pattern
    matches, the outer one matches too."""
    a, b = EndpointPattern.parse(outer), EndpointPattern.parse(inner)
    if a.covers(b):
        for endpoint in _REQUESTS:
            assert not b.matches(endpoint) or a.matches(endpoint), (outer, inner, str(endpoint))


def test_ifc_check_reports_routes_that_cannot_work_as_written():
    from ifc.check import check

    result = check(compile_text("""
labels { secrecy public < internal }
endpoints {
  "https://h.test/a/**" methods GET    # shadowed: the host-wide rule below decides every request it matches
  "https://h.test"
  "https://h.test/b/**" methods POST   # not shadowing the host-wide rule: it narrows
  "https://*.cdn.test/assets/**"
  "https://docs.test" except "https://docs.test/private/**"
  "https://k.test/x" methods FETCH
}
agent a { read "**" connect "https://h.test/a/**" methods GET }
""", "r.flow"))
    found = sorted((d.code, d.span.line) for d in result.diagnostics
                   if d.code in ("shadowed-rule", "uninspected-route", "path-except", "unknown-method",
                                 "unusable-grant"))
    assert found == [("path-except", 8), ("shadowed-rule", 4), ("uninspected-route", 7), ("unknown-method", 9)]
