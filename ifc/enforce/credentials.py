"""Whose account a request reaches: on a host a secret is bound to, the sandbox's only credential is the sentinel.

An allowed host is a relay when the sandbox uses it with a credential of its own: a key planted in the
workspace can upload the project to the attacker's account at the very API the policy lets the agent use.
The policy decides *which* account the agent reaches on a host by binding a secret to it; so a request to
such a host may carry that secret's sentinel (swapped for the real value on the way out) or no credential
at all. `foreign_credentials` names every other credential-like value it finds (never the value itself), and
the hook refuses the request (403, rule `egress: foreign credential`). Where it looks:

  Authorization   any scheme. Basic is decoded: its password (or, without one, its user: Stripe-style keys)
                  must be a bound sentinel; any other scheme's credentials must be one.
  headers         names like a credential (below): `x-api-key`, `api-key`, `x-goog-api-key`,
                  `private-token`, `x-auth-token`, `x-amz-security-token`, `ocp-apim-subscription-key`, ...
  cookies         every cookie of 8 characters or more, unless this host set it in this run (`Issued`):
                  a cookie is an account's session, and one the host handed out in the run belongs to the
                  account the run reaches
  query           parameters named like a credential: `key`, `api_key`, `token`, `access_token`,
                  `X-Amz-Signature`, ...; userinfo in an absolute target
  body            form (urlencoded, multipart) and JSON fields named like a credential, in the bytes given

A name is *like a credential* when one of its words (split at `-`, `_`, `.` and camelCase) is in `_WORDS`, or
it is `key` or ends in `key` after a qualifier (`api key`, `secret key`, `subscription key`), and no word
says it is something else (`page token`, `csrf token`, `idempotency key`, `sec-websocket-key`, `token type`,
`max tokens`, `thought signature`), or it names a session's id (`x-claude-code-session-id`, `x-session-id`:
a trace id the client makes up; a cookie holding a session is judged as a cookie, and `sessionid`, `session`,
`session-token` are credentials). Values under 8 characters are not credentials (flags like `auth=false`)
except for passwords.
`Proxy-Authorization` is the hook's own (the run's token) and never forwarded, so it is not looked at.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl, urlsplit

from ifc.enforce.secrets import Vault
from ifc.match import Endpoint

MIN_CREDENTIAL = 8
_WORDS = frozenset({"token", "secret", "password", "passwd", "passphrase", "pwd", "credential", "credentials",
                    "apikey", "apitoken", "auth", "jwt", "bearer", "session", "sessionid", "signature", "sig",
                    "accesstoken", "authtoken", "privatetoken", "refreshtoken", "idtoken", "secretkey",
                    "accesskey", "privatekey"})
_KEY_QUALIFIERS = frozenset({"api", "access", "secret", "private", "subscription", "auth", "client", "account",
                             "app", "application", "license", "master", "functions", "developer", "user"})
_NOT_CREDENTIAL = frozenset({"page", "next", "continuation", "sync", "cursor", "csrf", "xsrf", "idempotency",
                             "authenticity", "websocket", "type", "hint", "expires", "expiry", "expiration",
                             "count", "limit", "max", "url", "uri", "public",
                             "thought"})  # Gemini's `thoughtSignature`: the model's own, echoed back to it
_SCHEMES = frozenset({"basic", "bearer", "token", "digest", "negotiate", "ntlm", "hoba", "mutual"})
_PASSWORDS = frozenset({"password", "passwd", "passphrase", "pwd"})
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_JSON_PAIR = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"', re.DOTALL)  # unrolled
_PART = re.compile(r'content-disposition:[^\r\n]*?\bname="([^"]*)"([^\r\n]*)\r\n(?:[^\r\n]+\r\n)*\r\n'
                   r'(.*?)(?:\r\n--|\Z)', re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Finding:
    """Where a credential that is not the bound sentinel was found; `name` is the header, cookie, parameter
    or field name (never the value), so a finding can be logged and shown to the agent."""

    where: str  # authorization | header | cookie | query | userinfo | form | multipart | json
    name: str

    def __str__(self) -> str:
        return f"{self.where} `{self.name}`"


@lru_cache(maxsize=4096)
def credential_name(name: str) -> bool:
    """Is `name` (a header, parameter or field name) the name of a credential? See the module docstring."""
    words = [w.lower() for w in _WORD.findall(name)]
    if not words or _NOT_CREDENTIAL.intersection(words):
        return False
    found = _WORDS.intersection(words)
    if found == {"session"} and "id" in words[words.index("session") + 1:]:
        return False  # a session *identifier* header (`x-claude-code-session-id`): the client's trace id
    if found:
        return True
    return words[-1] == "key" and (len(words) == 1 or words[-2] in _KEY_QUALIFIERS)


class Issued:
    """Cookies each bound host set in this run (`record` every response from one): sending them back reaches
    the account the run already reaches there. Bounded: past `limit` entries, no more are accepted (later
    cookies are then refused, never a planted one let through)."""

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self.cookies: set[tuple[str, str, str]] = set()

    def record(self, endpoint: Endpoint, headers: Sequence[tuple[str | bytes, str | bytes]]) -> None:
        for name, value in headers:
            if _text(name).strip().lower() == "set-cookie" and len(self.cookies) < self.limit:
                cookie, _, value_text = _text(value).partition(";")[0].partition("=")
                self.cookies.add((endpoint.host, cookie.strip(), _unquote(value_text)))

    def allows(self, endpoint: Endpoint, name: str, value: str) -> bool:
        return (endpoint.host, name, value) in self.cookies


def foreign_credentials(vault: Vault, endpoint: Endpoint, target: str,
                        headers: Sequence[tuple[str | bytes, str | bytes]], body_prefix: bytes = b"", *,
                        issued: Issued | None = None) -> list[Finding]:
    """Credentials in a request to `endpoint` that are not the sentinel of a secret bound there; [] for a host
    no secret is bound to (the rule is about whose account a bound host's requests reach). Judge the request
    as the sandbox sent it, before sentinels are swapped; `body_prefix` is the body, or its first bytes when
    it is too large to hold (a field cut at its end is judged as it is)."""
    bound = vault.bound_to(endpoint)
    if not bound:
        return []
    judge = _Judge({h.sentinel.decode("latin-1") for h in bound})
    content_type = ""
    for raw_name, raw_value in headers:
        name, value = _text(raw_name).strip(), _text(raw_value)
        low = name.lower()
        if low == "authorization":
            judge.authorization(value)
        elif low == "cookie":
            for item in value.split(";"):
                cookie, _, cookie_value = item.partition("=")
                cookie_value = _unquote(cookie_value)
                if not (issued is not None and issued.allows(endpoint, cookie.strip(), cookie_value)):
                    judge.value("cookie", cookie.strip(), cookie_value)
        elif low == "content-type":
            content_type = value.lower()
        elif low != "proxy-authorization" and credential_name(name):
            judge.value("header", low, value)
    try:
        split = urlsplit(target)
    except ValueError:  # the codec refuses such a target first; if one gets here, it is refused all the same
        return [*judge.findings, Finding("target", "(unparsable)")]
    if split.username is not None or split.password is not None:
        judge.value("userinfo", "password" if split.password else "user", split.password or split.username or "",
                    password=True)
    judge.pairs("query", parse_qsl(split.query, keep_blank_values=True))
    if body_prefix:
        judge.body(content_type, body_prefix.decode("latin-1"))
    return judge.findings


class _Judge:
    def __init__(self, sentinels: set[str]):
        self.sentinels = sentinels
        self.findings: list[Finding] = []

    def sentinel(self, value: str) -> bool:
        """A bound sentinel, alone or after one scheme word (`Bearer SENTINEL`, `token SENTINEL`)."""
        value = value.strip()
        if value in self.sentinels:
            return True
        word, space, rest = value.partition(" ")
        return bool(space) and word.isalnum() and rest.strip() in self.sentinels

    def value(self, where: str, name: str, value: str, password: bool = False) -> None:
        value = value.strip()
        short = len(value) < MIN_CREDENTIAL and not (password or _PASSWORDS.intersection(
            w.lower() for w in _WORD.findall(name)))
        if value and not short and not self.sentinel(value):
            self.findings.append(Finding(where, name))

    def authorization(self, value: str) -> None:
        scheme, _, rest = value.strip().partition(" ")
        rest = rest.strip()
        if scheme.lower() == "basic" and rest:
            try:
                user, _, password = base64.b64decode(rest, validate=True).decode("latin-1").partition(":")
            except (binascii.Error, ValueError):
                user, password = "", rest  # not Basic as RFC 7617 has it: all of it is the credential
            if password or user:
                credential = password or user
                if not self.sentinel(credential):
                    self.findings.append(Finding("authorization", "Basic"))
            return
        # a bare token with no scheme is a credential too; a lone scheme name (`Bearer`) is none
        credential = rest or ("" if scheme.lower() in _SCHEMES else scheme)
        if credential and not self.sentinel(credential):
            self.findings.append(Finding("authorization", scheme if rest else "(no scheme)"))

    def pairs(self, where: str, pairs: Iterable[tuple[str, str]]) -> None:
        for name, value in pairs:
            if credential_name(name):
                self.value(where, name, value)

    def body(self, content_type: str, text: str) -> None:
        if "application/x-www-form-urlencoded" in content_type:
            self.pairs("form", parse_qsl(text, keep_blank_values=True))
        elif "multipart/form-data" in content_type:
            self.pairs("multipart", [(m[1], m[3]) for m in _PART.finditer(text) if "filename=" not in m[2]])
        elif "json" in content_type or text.lstrip()[:1] in ("{", "["):
            self.pairs("json", _json_pairs(text))


def _json_pairs(text: str) -> Iterator[tuple[str, str]]:
    """(key, string value) at any depth: parsed when the text is whole JSON (20 ms a MiB, escapes as the
    server will read them), else — a body's first bytes, or not JSON after all — found by pattern."""
    try:
        stack = [json.loads(text)]
    except (ValueError, RecursionError):
        for key, value in _JSON_PAIR.findall(text):
            key = _json_string(key) if "\\" in key else key
            if credential_name(key):
                yield key, _json_string(value)
        return
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            if isinstance(value, str) and isinstance(key, str):
                yield key, value
            elif isinstance(value, dict | list):
                stack.append(value)


def _json_string(raw: str) -> str:
    try:
        return json.loads(f'"{raw}"')
    except ValueError:
        return raw


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _unquote(value: str) -> str:
    value = value.strip()
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
