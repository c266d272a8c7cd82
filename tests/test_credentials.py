"""Foreign credentials (ifc.enforce.credentials): on a host a secret is bound to, the sandbox may present that
secret's sentinel or no credential; every other credential is found, in each place a request can carry one,
and named without its value."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ifc.enforce.credentials import Finding, Issued, credential_name, foreign_credentials
from ifc.enforce.secrets import Held, Vault
from ifc.match import Endpoint, EndpointPattern

SENTINEL = "ifc-sentinel-00112233445566778899aabbccddeeff"
OTHER_SENTINEL = "ifc-sentinel-ffeeddccbbaa99887766554433221100"
FOREIGN = "sk-attacker-4f9a8b7c6d5e4f3a2b1c"
API = Endpoint.parse("https://api.test:443")
ELSEWHERE = Endpoint.parse("https://elsewhere.test:443")
VAULT = Vault([
    Held("API_KEY", SENTINEL.encode(), b"sk-real-value-0123456789", (EndpointPattern.parse("https://api.test"),)),
    Held("OTHER", OTHER_SENTINEL.encode(), b"other-real-value-987654", (EndpointPattern.parse("https://other.test"),)),
    Held("WIDE", b"ifc-sentinel-wide", b"wide-real-value-1234567", (EndpointPattern.parse("https://*.test"),)),
])
API_KEY_HEADERS = ["X-Api-Key", "api-key", "x-goog-api-key", "Private-Token", "X-Auth-Token", "x-amz-security-token",
                   "Ocp-Apim-Subscription-Key", "X-Access-Token", "apikey", "X-Vault-Token"]
CREDENTIAL_PARAMS = ["key", "api_key", "apiKey", "token", "access_token", "auth", "client_secret", "password",
                     "X-Amz-Signature", "private_token", "refresh_token", "session", "sessionid", "session_token",
                     "x-session-id-token"]
BENIGN_NAMES = ["page", "per_page", "pageToken", "next_token", "q", "sort", "max_tokens", "idempotency-key",
                "sec-websocket-key", "x-csrf-token", "token_type", "user-agent", "accept", "x-request-id", "author",
                "model", "messages", "sort_key",
                # Claude Code's per-session trace id, sent with every request to its (bound) API
                "x-claude-code-session-id", "x-session-id",
                # Gemini's signature over its own reasoning, which Gemini CLI sends back with each function call
                "thoughtSignature"]


def find(target="/v1/x", headers=(), body=b"", endpoint=API, **kw) -> list[Finding]:
    return foreign_credentials(VAULT, endpoint, target, list(headers), body, **kw)


# ------------------------------------------------------------------------------------------ names

@pytest.mark.parametrize("name", API_KEY_HEADERS + CREDENTIAL_PARAMS)
def test_credential_names(name):
    assert credential_name(name)


@pytest.mark.parametrize("name", [*BENIGN_NAMES, "content-type", "x-github-api-version", "openai-organization"])
def test_names_that_are_not_credentials(name):
    assert not credential_name(name)


# ------------------------------------------------------------------------------------------ each place

@pytest.mark.parametrize(("value", "named"), [
    (f"Bearer {FOREIGN}", "Bearer"),
    (f"token {FOREIGN}", "token"),
    (f"Digest username=\"u\", response=\"{FOREIGN}\"", "Digest"),
    (f"AWS4-HMAC-SHA256 Credential=AKIA/x, Signature={FOREIGN}", "AWS4-HMAC-SHA256"),
    (FOREIGN, "(no scheme)"),
    ("Basic " + base64.b64encode(f"x-access-token:{FOREIGN}".encode()).decode(), "Basic"),
    ("Basic " + base64.b64encode(f"{FOREIGN}:".encode()).decode(), "Basic"),  # a key as the user (Stripe)
    ("Basic " + base64.b64encode(f"{SENTINEL}:{FOREIGN}".encode()).decode(), "Basic"),
    ("Basic not-base64!!", "Basic"),
    (f"Bearer {OTHER_SENTINEL}", "Bearer"),  # a sentinel of a secret bound elsewhere is no pass here
])
def test_a_foreign_authorization_is_found_and_named_without_its_value(value, named):
    findings = find(headers=[("Authorization", value)])
    assert findings == [Finding("authorization", named)]
    assert FOREIGN not in str(findings[0]) and FOREIGN not in repr(findings)


@pytest.mark.parametrize("value", [
    f"Bearer {SENTINEL}", f"token {SENTINEL}", SENTINEL, "Bearer", "",
    "Basic " + base64.b64encode(f"x-access-token:{SENTINEL}".encode()).decode(),
    "Basic " + base64.b64encode(f"{SENTINEL}:".encode()).decode(),
])
def test_the_bound_sentinel_or_nothing_in_authorization_passes(value):
    assert find(headers=[("Authorization", value)]) == []


@pytest.mark.parametrize("name", API_KEY_HEADERS)
def test_a_foreign_api_key_header_is_found(name):
    assert find(headers=[(name, FOREIGN)]) == [Finding("header", name.lower())]
    assert find(headers=[(name, SENTINEL)]) == []
    assert find(headers=[(name.encode(), FOREIGN.encode())]) == [Finding("header", name.lower())]  # bytes (h11)


def test_proxy_authorization_is_the_hooks_own_and_not_looked_at():
    assert find(headers=[("Proxy-Authorization", f"Bearer {FOREIGN}")]) == []


def test_cookies_are_credentials_unless_the_host_set_them_in_this_run():
    cookie = [("Cookie", f"logged_in=no; _session={FOREIGN}; theme=\"dark\"")]
    assert find(headers=cookie) == [Finding("cookie", "_session")]
    assert find(headers=[("Cookie", f"_session={SENTINEL}")]) == []
    issued = Issued()
    issued.record(ELSEWHERE, [("Set-Cookie", f"_session={FOREIGN}; Path=/; HttpOnly")])
    assert find(headers=cookie, issued=issued) == [Finding("cookie", "_session")]  # set by another host
    issued.record(API, [(b"set-cookie", f"_session={FOREIGN}; Secure".encode()), ("Content-Type", "x")])
    assert find(headers=cookie, issued=issued) == []
    assert find(headers=[("Cookie", "_session=another-value-123456")], issued=issued) == [Finding("cookie", "_session")]


def test_the_cookie_ledger_is_bounded_and_then_accepts_nothing_new():
    issued = Issued(limit=2)
    for i in range(3):
        issued.record(API, [("Set-Cookie", f"c{i}=value-number-{i}")])
    assert find(headers=[("Cookie", "c0=value-number-0; c1=value-number-1")], issued=issued) == []
    assert find(headers=[("Cookie", "c2=value-number-2")], issued=issued) == [Finding("cookie", "c2")]


@pytest.mark.parametrize("name", CREDENTIAL_PARAMS)
def test_a_foreign_query_parameter_is_found(name):
    assert find(target=f"/v1/x?page=2&{name}={quote(FOREIGN)}") == [Finding("query", name)]
    assert find(target=f"https://api.test/v1/x?{name}={FOREIGN}") == [Finding("query", name)]  # absolute form
    assert find(target=f"/v1/x?{name}={SENTINEL}&page=2") == []


def test_userinfo_in_an_absolute_target_is_a_credential():
    assert find(target=f"https://me:{FOREIGN}@api.test/x") == [Finding("userinfo", "password")]
    assert find(target=f"https://me:{SENTINEL}@api.test/x") == []


def test_a_target_that_does_not_parse_is_refused_not_raised():
    assert find(target="http://[::1/x?key=1") == [Finding("target", "(unparsable)")]


def test_short_flags_are_not_credentials_but_short_passwords_are():
    assert find(target="/x?auth=false&token=1") == []
    assert find(target="/x?password=hunter2") == [Finding("query", "password")]


def test_a_foreign_form_field_is_found():
    form = [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")]
    body = urlencode({"grant_type": "password", "username": "me", "password": FOREIGN, "page": "2"}).encode()
    assert find(headers=form, body=body) == [Finding("form", "password")]
    assert find(headers=form, body=urlencode({"client_secret": SENTINEL, "q": FOREIGN}).encode()) == []


def test_a_foreign_multipart_field_is_found_but_an_uploaded_file_is_content():
    boundary = "b0undary"
    parts = [("api_key", None, FOREIGN), ("token", "token.txt", FOREIGN), ("note", None, "hello")]
    body = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{n}\""
                   + (f"; filename=\"{f}\"" if f else "") + f"\r\nContent-Type: text/plain\r\n\r\n{v}\r\n"
                   for n, f, v in parts) + f"--{boundary}--\r\n"
    headers = [("Content-Type", f"multipart/form-data; boundary={boundary}")]
    assert find(headers=headers, body=body.encode()) == [Finding("multipart", "api_key")]


def test_a_foreign_json_field_is_found_at_any_depth():
    body = json.dumps({"model": "m", "max_tokens": 1024, "auth": {"apiKey": FOREIGN},
                       "messages": [{"content": json.dumps({"token": FOREIGN})}]}).encode()
    assert find(headers=[("Content-Type", "application/json")], body=body) == [Finding("json", "apiKey")]
    assert find(body=body) == [Finding("json", "apiKey")]  # JSON without saying so
    assert find(body=json.dumps({"token": SENTINEL, "password": ""}).encode()) == []


def test_json_keys_escaped_or_buried_deep_are_found():
    assert find(body=b'{"\\u0074oken": "' + FOREIGN.encode() + b'"}') == [Finding("json", "token")]
    deep = b'{"a": ' + b"[" * 50_000 + b'{"api_key": "' + FOREIGN.encode() + b'"}'  # past json's recursion
    assert find(body=deep) == [Finding("json", "api_key")]
    truncated = json.dumps({"messages": ["x" * 100], "secret": FOREIGN, "more": "y" * 100}).encode()[:-20]
    assert find(body=truncated) == [Finding("json", "secret")]  # a body's first bytes: found by pattern


def test_nothing_is_looked_for_on_hosts_no_secret_is_bound_to():
    headers = [("Authorization", f"Bearer {FOREIGN}"), ("X-Api-Key", FOREIGN)]
    assert find(endpoint=ELSEWHERE, headers=headers, target=f"/x?key={FOREIGN}") == []
    # a binding to a wildcard zone is never honoured, so it makes no host a bound one either
    assert VAULT.bound_to(ELSEWHERE) == []
    assert [h.name for h in VAULT.bound_to(API)] == ["API_KEY"]


def test_every_place_at_once_each_named_once():
    found = find(target=f"/x?key={FOREIGN}",
                 headers=[("Authorization", f"Bearer {FOREIGN}"), ("X-Api-Key", FOREIGN),
                          ("Cookie", f"sid={FOREIGN}"), ("Content-Type", "application/json")],
                 body=json.dumps({"secret": FOREIGN}).encode())
    assert sorted(map(str, found)) == ["authorization `Bearer`", "cookie `sid`", "header `x-api-key`",
                                       "json `secret`", "query `key`"]


# ------------------------------------------------------------------------------------------ properties

values = st.text(st.characters(codec="ascii", exclude_characters="\r\n\x00"), max_size=40)
benign = st.tuples(st.sampled_from(BENIGN_NAMES), st.text("abcdefghijklmnop0123456789-_.", max_size=60))


@st.composite
def sentinel_requests(draw):
    """A request whose only credential-like values are the bound sentinel (in any of the places it may be)."""
    headers = [(name, value.strip() or "x") for name, value in draw(st.lists(benign, max_size=5))]
    if draw(st.booleans()):
        headers.append(("Authorization", draw(st.sampled_from([f"Bearer {SENTINEL}", f"token {SENTINEL}", SENTINEL,
            "Basic " + base64.b64encode(f"{draw(st.text('abcxyz-', max_size=12))}:{SENTINEL}".encode()).decode()]))))
    for name in draw(st.lists(st.sampled_from(API_KEY_HEADERS), max_size=3)):
        headers.append((name, SENTINEL))
    cookies = draw(st.lists(st.sampled_from(["sid", "_session", "auth"]), max_size=2))
    if cookies:
        headers.append(("Cookie", "; ".join(f"{c}={SENTINEL}" for c in cookies)))
    params = draw(st.lists(st.sampled_from(CREDENTIAL_PARAMS), max_size=3))
    query = [(p, SENTINEL) for p in params] + draw(st.lists(benign, max_size=3))
    target = "/v1/x" + ("?" + urlencode(query) if query else "")
    kind = draw(st.sampled_from(["none", "form", "json"]))
    fields = {name: SENTINEL for name in draw(st.lists(st.sampled_from(CREDENTIAL_PARAMS), max_size=3))}
    fields.update(draw(st.dictionaries(st.sampled_from(BENIGN_NAMES), values, max_size=3)))
    body = b""
    if kind == "form":
        headers.append(("Content-Type", "application/x-www-form-urlencoded"))
        body = urlencode(fields).encode()
    elif kind == "json":
        headers.append(("Content-Type", "application/json"))
        body = json.dumps({"outer": fields, "list": [fields]}).encode()
    order = draw(st.permutations(range(len(headers))))
    return target, [headers[i] for i in order], body


@settings(max_examples=300, deadline=None)
@given(sentinel_requests())
def test_a_request_whose_only_credentials_are_the_bound_sentinel_passes(request):
    target, headers, body = request
    assert find(target=target, headers=headers, body=body) == []


@settings(max_examples=300, deadline=None)
@given(sentinel_requests(), st.data())
def test_any_one_sentinel_replaced_by_another_credential_is_found(request, data):
    target, headers, body = request
    places = [("target", None)] if SENTINEL in target else []
    places += [("header", i) for i, (_, v) in enumerate(headers) if SENTINEL in v]
    places += [("body", None)] if SENTINEL.encode() in body else []
    if not places:
        return
    where, index = data.draw(st.sampled_from(places))
    other = data.draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", min_size=16,
                              max_size=40))
    if where == "target":
        target = target.replace(SENTINEL, other, 1)
    elif where == "header":
        name, value = headers[index]
        if value.startswith("Basic "):
            user, _, _ = base64.b64decode(value[6:]).decode().partition(":")
            value = "Basic " + base64.b64encode(f"{user}:{other}".encode()).decode()
        headers = [*headers[:index], (name, value.replace(SENTINEL, other, 1)), *headers[index + 1:]]
    else:
        body = body.replace(SENTINEL.encode(), other.encode(), 1)
    assert find(target=target, headers=headers, body=body) != []
