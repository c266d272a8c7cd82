"""`ifc check --workspace DIR`: label every file under a directory and flag secrets the policy misses.

Each path is labelled exactly as the monitor will label it (`Policy.file_label`), so the per-label table is
what an agent will see. A file that *looks* secret (by its name, or by a token-shaped string in its first
64 KiB) but whose label lacks the top of the policy's first secrecy chain gets an `unlabelled-secret`
warning that says which rule labelled it and where to add it instead.

The walk is iterative `os.scandir`, never follows a symlink (a link that leaves the tree is recorded in
`skipped`), labels but never reads anything under `.git/`, opens files with `O_NOFOLLOW | O_NONBLOCK`, and
turns every I/O error into a `skipped` entry. No matched secret is ever put into a message: at most a known,
non-secret prefix such as `AKIA…`.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ifc.check.sentinels import SentinelFile, sentinel_file
from ifc.diagnostics import Diagnostic, Related, Span, display, sort_diagnostics, warning
from ifc.lang.lower import encode_string
from ifc.policy.labels import Label
from ifc.policy.model import FileRule, Policy

CODE = "unlabelled-secret"
READ_LIMIT = 64 * 1024  # bytes of each file that are scanned for token-shaped strings
SIZE_LIMIT = 1024 * 1024  # files this large or larger are labelled but not read
BINARY_PROBE = 8192  # a NUL byte in this prefix marks a file as binary (as git does)
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_CLOEXEC", 0))


# ------------------------------------------------------------------------------------ the tables


@dataclass(frozen=True)
class SecretPattern:
    """A token-shaped string, found by `regex` (bytes, case-sensitive, no named groups).

    Every regex starts with a literal byte: patterns that share it are scanned together in one pass, which
    is what keeps a 10,000-file audit within a second. When the rarest part of a token is not its first
    byte, start the regex there, assert what comes before with a lookbehind, and set `lead` to the number
    of bytes of the token in front of the match (`J(?<=eyJ)` with `lead=2`). Group 1, when there is one,
    is the secret itself and is what the diagnostic points at. `preview` says whether the first four bytes
    are a public prefix (`AKIA`, `ghp_`) that a message may show; `validate` rejects look-alikes. A
    `fallback` pattern (a generic `password = …`) is reported only when no specific one matches the file.
    """

    name: str
    what: str
    regex: re.Pattern[bytes]
    lead: int = 0
    preview: bool = True
    validate: Callable[[re.Match[bytes], bytes], bool] | None = None
    fallback: bool = False


def _entropy(value: bytes) -> float:
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


_PLACEHOLDERS = (b"example", b"xxxx", b"your", b"placeholder", b"changeme", b"dummy", b"redacted", b"sample",
                 b"fake")


def _looks_random(value: bytes) -> bool:
    """High-entropy, mixed letters and digits, and not a placeholder such as `your-api-key-here`."""
    if not (any(48 <= b <= 57 for b in value) and any(65 <= b <= 90 or 97 <= b <= 122 for b in value)):
        return False
    low = value.lower()
    if any(p in low for p in _PLACEHOLDERS):
        return False
    return _entropy(value) >= (3.5 if len(value) >= 20 else 3.3)


_SECRET_WORDS = {"secret", "secrets", "token", "password", "passwd", "pwd", "credential", "credentials",
                 "apikey", "secretkey", "accesskey", "privatekey", "authtoken", "passphrase"}
_KEY_QUALIFIERS = {"api", "access", "private", "secret", "signing", "encryption", "master", "auth", "client"}
_NAME_BEFORE = re.compile(rb"([A-Za-z0-9_.-]+)[\"']?[ \t]*$")
_WORD_SPLIT = re.compile(r"[_.\-]+|(?<=[a-z0-9])(?=[A-Z])")


def _credential_assignment(match: re.Match[bytes], data: bytes) -> bool:
    """`api_key = "…"`: the name before the operator must be about a credential (not `tokenizer`, not
    `sort_key`) and the value must look random."""
    start = match.start()
    name = _NAME_BEFORE.search(data, max(0, start - 64), start)
    if name is None:
        return False
    words = {w.lower() for w in _WORD_SPLIT.split(name.group(1).decode("ascii")) if w}
    if not (words & _SECRET_WORDS or ("key" in words and words & _KEY_QUALIFIERS)):
        return False
    return _looks_random(match.group(1))


def _real_url_password(match: re.Match[bytes], data: bytes) -> bool:
    password = match.group(1)
    return not (password.lower() in (b"password", b"pass", b"passwd", b"secret", b"changeme", b"pwd")
                or password[:1] in b"$<{%*" or set(password) <= set(b"*x"))


def _has_digit(match: re.Match[bytes], data: bytes) -> bool:
    return any(48 <= b <= 57 for b in match.group(0))


_VALUE = rb"[ \t]*[\"']?([A-Za-z0-9/+_-]{16,}={0,2})"

SECRET_PATTERNS: tuple[SecretPattern, ...] = (
    SecretPattern("private-key", "a private key",
                  re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"), preview=False),
    SecretPattern("aws-access-key-id", "an AWS access key id",
                  re.compile(rb"A(?:KIA|SIA)(?<![A-Za-z0-9]....)[0-9A-Z]{16}(?![A-Za-z0-9])")),
    SecretPattern("github-token", "a GitHub token",
                  re.compile(rb"gh[pousr]_(?<![A-Za-z0-9_]gh._)[A-Za-z0-9]{36,}")),
    SecretPattern("github-pat", "a GitHub fine-grained token",
                  re.compile(rb"github_pat_(?<![A-Za-z0-9_]github_pat_)[A-Za-z0-9_]{22,}")),
    SecretPattern("slack-token", "a Slack token",
                  re.compile(rb"-(?<=xox[baprs]-)[A-Za-z0-9-]{10,}"), lead=4),
    SecretPattern("anthropic-key", "an Anthropic API key",
                  re.compile(rb"-(?<=sk-)(?<![A-Za-z0-9_-]sk-)ant-[A-Za-z0-9_-]{20,}"), lead=2),
    SecretPattern("openai-key", "an OpenAI-style API key",
                  re.compile(rb"-(?<=sk-)(?<![A-Za-z0-9_-]sk-)(?!ant-)[A-Za-z0-9_-]{20,}"), lead=2,
                  validate=_has_digit),
    SecretPattern("google-api-key", "a Google API key",
                  re.compile(rb"AIza(?<![A-Za-z0-9_-]AIza)[0-9A-Za-z_-]{35}")),
    SecretPattern("stripe-key", "a Stripe live key",
                  re.compile(rb"k_live_(?<=[sr]k_live_)(?<![A-Za-z0-9].k_live_)[0-9A-Za-z]{10,}"), lead=1),
    SecretPattern("jwt", "a JSON web token",
                  re.compile(rb"J(?<=eyJ)[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), lead=2),
    SecretPattern("url-password", "a password in a URL",
                  re.compile(rb"://[^\s:/@'\"]{1,64}:([^\s:/@'\"]{3,128})@"), preview=False,
                  validate=_real_url_password),
    SecretPattern("credential-assignment", "a hard-coded credential", re.compile(rb"=>?" + _VALUE),
                  preview=False, validate=_credential_assignment, fallback=True),
    SecretPattern("credential-field", "a hard-coded credential", re.compile(rb":=?" + _VALUE),
                  preview=False, validate=_credential_assignment, fallback=True),
)


def _scanners(
    patterns: tuple[SecretPattern, ...],
) -> tuple[tuple[re.Pattern[bytes], tuple[SecretPattern, ...]], ...]:
    """One locator regex per leading byte: `-(?:rest1|rest2)` finds candidates for all its patterns."""
    groups: dict[bytes, list[SecretPattern]] = {}
    for pattern in patterns:
        first = pattern.regex.pattern[:1]
        if not first or first in b"\\.^$*+?{}[]|()" or pattern.regex.groupindex:
            raise ValueError(f"secret pattern `{pattern.name}` must start with a literal byte and have no "
                             "named groups")
        groups.setdefault(first, []).append(pattern)
    return tuple(
        (re.compile(re.escape(first) + b"(?:" + b"|".join(b"(?:" + p.regex.pattern[1:] + b")" for p in group)
                    + b")"), tuple(group))
        for first, group in groups.items()
    )


_TIERS = (_scanners(tuple(p for p in SECRET_PATTERNS if not p.fallback)),
          _scanners(tuple(p for p in SECRET_PATTERNS if p.fallback)))
_MAX_LEAD = max(p.lead for p in SECRET_PATTERNS)


@dataclass(frozen=True)
class NameRule:
    """A file that is a secret by what it is called: its lowercased name is one of `names`, or ends with
    one of `suffixes`, or starts with one of `prefixes` (and is not in `unless`); `parent`, when set, is
    the directory it must sit in; `content`, when set, must also match the file's first bytes."""

    what: str
    names: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    parent: str | None = None
    content: re.Pattern[bytes] | None = None

    def matches(self, name: str, parent: str) -> bool:
        return ((name in self.names or name.endswith(self.suffixes) or name.startswith(self.prefixes))
                and name not in self.unless and (self.parent is None or parent == self.parent))


NAME_RULES: tuple[NameRule, ...] = (
    NameRule("an environment file", names=(".env",), suffixes=(".env",), prefixes=(".env.",),
             unless=(".env.example", ".env.sample", ".env.template")),
    NameRule("an SSH private key", names=("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ecdsa_sk",
                                          "id_ed25519_sk")),
    NameRule("a PEM file", suffixes=(".pem",)),
    NameRule("a private key file", suffixes=(".key",)),
    NameRule("a PKCS #12 key store", suffixes=(".p12", ".pfx")),
    NameRule("a KeePass database", suffixes=(".kdbx",)),
    NameRule("a .netrc credentials file", names=(".netrc", "_netrc")),
    NameRule("a .pypirc credentials file", names=(".pypirc",)),
    NameRule("a git credentials file", names=(".git-credentials",)),
    NameRule("an npm auth token", names=(".npmrc",), content=re.compile(rb"_authToken\s*=")),
    NameRule("an AWS credentials file", names=("credentials",), parent=".aws"),
    NameRule("a kubeconfig", names=("config",), parent=".kube"),
    NameRule("a kubeconfig", names=("kubeconfig",), suffixes=(".kubeconfig",)),
    NameRule("a Google service-account key", suffixes=(".json",), content=re.compile(rb'"private_key"\s*:')),
)

# A name that passes none of these cannot match any rule: one set lookup and two C-level string tests.
_ANY_NAME = frozenset(n for r in NAME_RULES for n in r.names)
_ANY_SUFFIX = tuple(sorted({x for r in NAME_RULES for x in r.suffixes}))
_ANY_PREFIX = tuple(sorted({x for r in NAME_RULES for x in r.prefixes}))


# ------------------------------------------------------------------------------------------- audit


@dataclass(frozen=True)
class WorkspaceAudit:
    counts: tuple[tuple[str, int], ...]  # (label text, number of files), most files first
    files: tuple[tuple[str, str], ...]  # (workspace path, label text), sorted; empty unless want_files
    diagnostics: tuple[Diagnostic, ...]  # `unlabelled-secret` warnings, sorted
    total: int  # files labelled (everything that is not a directory, symlinks included)
    skipped: tuple[tuple[str, str], ...]  # (workspace path, reason): unreadable, or symlinks leaving the tree
    suspects: tuple[str, ...] = ()  # the flagged files, each as a glob for exactly that path (`ifc init` adds them)
    sentinels: tuple[SentinelFile, ...] = ()  # files the mount serves with sentinels (or would, but cannot)


@dataclass(frozen=True)
class _Hit:
    what: str
    line: int
    column: int
    end_column: int
    preview: str | None


def audit_workspace(policy: Policy, root: Path, *, want_files: bool = False) -> WorkspaceAudit:
    """Label every file under `root` with `policy`; flag files that look secret but are not labelled so."""
    return _Auditor(policy, root).run(want_files)


class _Auditor:
    def __init__(self, policy: Policy, root: Path):
        self.policy = policy
        self.lattice = policy.lattice
        self.root = os.fspath(root)
        self.root_real = os.path.realpath(self.root)
        self.top, self.required = _secret_requirement(policy)
        self.texts: dict[Label, str] = {}
        self.secret_cache: dict[Label, bool] = {}
        self.diagnostics: list[Diagnostic] = []
        self.suspects: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self.sentinels: list[SentinelFile] = []

    # --- the walk -------------------------------------------------------------------------------
    def run(self, want_files: bool) -> WorkspaceAudit:
        counts: Counter[str] = Counter()
        files: list[tuple[str, str]] = []
        label_of = self.policy.file_label
        stack: list[tuple[str, str, bool]] = [("", self.root, False)]  # (rel dir, os path, inside .git)
        while stack:
            rel_dir, dir_path, in_git = stack.pop()
            try:
                with os.scandir(dir_path) as it:
                    for entry in it:
                        name = entry.name
                        rel = f"{rel_dir}/{name}" if rel_dir else name
                        try:
                            is_link = entry.is_symlink()
                            if not is_link and entry.is_dir(follow_symlinks=False):
                                stack.append((rel, entry.path, in_git or name == ".git"))
                                continue
                            is_file = not is_link and entry.is_file(follow_symlinks=False)
                        except OSError as exc:
                            self.skipped.append((rel, _reason("cannot stat", exc)))
                            continue
                        match = label_of(rel)
                        label = match.label
                        text = self.texts.get(label)
                        if text is None:
                            text = self.texts[label] = self.lattice.describe(label)
                        counts[text] += 1
                        if want_files:
                            files.append((rel, text))
                        if is_link:
                            self._symlink(rel, entry.path)
                        if is_file and not in_git and (found := sentinel_file(self.policy, rel, entry.path)):
                            self.sentinels.append(found)
                        if in_git or self._is_secret(label):
                            continue
                        self._inspect(rel, name, rel_dir, entry.path, is_file, label, match.rule)
            except OSError as exc:
                self.skipped.append((rel_dir or ".", _reason("cannot list", exc)))
        total = sum(counts.values())
        return WorkspaceAudit(
            counts=tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
            files=tuple(sorted(files)),
            diagnostics=tuple(sort_diagnostics(self.diagnostics)),
            total=total,
            skipped=tuple(sorted(set(self.skipped))),
            suspects=tuple(sorted(self.suspects)),
            sentinels=tuple(sorted(self.sentinels, key=lambda s: s.path)),
        )

    def _symlink(self, rel: str, path: str) -> None:
        try:
            target = os.path.realpath(path)
        except (OSError, ValueError) as exc:
            self.skipped.append((rel, _reason("cannot resolve symlink", exc)))
            return
        if target != self.root_real and not target.startswith(self.root_real.rstrip(os.sep) + os.sep):
            self.skipped.append((rel, "symlink points outside the workspace, not followed"))

    def _is_secret(self, label: Label) -> bool:
        known = self.secret_cache.get(label)
        if known is None:
            known = self.secret_cache[label] = (self.required <= label.secrecy if self.required is not None
                                                else bool(label.secrecy))
        return known

    # --- one file ---------------------------------------------------------------------------------
    def _inspect(self, rel: str, name: str, rel_dir: str, path: str, is_file: bool, label: Label,
                 rule: FileRule | None) -> None:
        lname = name.lower()
        by_name: list[NameRule] = []
        if lname in _ANY_NAME or lname.endswith(_ANY_SUFFIX) or lname.startswith(_ANY_PREFIX):
            parent = rel_dir.rsplit("/", 1)[-1].lower()
            by_name = [r for r in NAME_RULES if r.matches(lname, parent)]
        hit: _Hit | None = None
        if any(r.content is None for r in by_name):
            hit = _Hit(next(r.what for r in by_name if r.content is None), 1, 1, 0, None)
        data = self._read(rel, path) if is_file and hit is None else None
        if data is not None and hit is None:
            for r in by_name:
                found = r.content.search(data) if r.content is not None else None
                if found:
                    hit = _hit_at(data, found.start(), found.end(), r.what, None)
                    break
            if hit is None:
                hit = scan_content(data)
        if hit is not None:
            self.diagnostics.append(self._finding(rel, label, rule, hit))

    def _read(self, rel: str, path: str) -> bytes | None:
        """The first READ_LIMIT bytes of a regular file under SIZE_LIMIT, or None (binary, too large, or
        unreadable, which is recorded). `fstat` is needed only when the read fills the buffer."""
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            self.skipped.append((rel, _reason("cannot read", exc)))
            return None
        try:
            data = os.read(fd, READ_LIMIT)
            if len(data) == READ_LIMIT:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size >= SIZE_LIMIT:
                    return None
        except OSError as exc:
            self.skipped.append((rel, _reason("cannot read", exc)))
            return None
        finally:
            os.close(fd)
        return None if b"\0" in data[:BINARY_PROBE] else data

    # --- the diagnostic -----------------------------------------------------------------------------
    def _finding(self, rel: str, label: Label, rule: FileRule | None, hit: _Hit) -> Diagnostic:
        shown = display(rel)
        what = f"{hit.what} `{hit.preview}`" if hit.preview else hit.what
        labelled = self.lattice.describe(label, with_integrity=False)
        if rule is None:
            message = (f"`{shown}` looks like a secret ({what}) but no file rule labels it "
                       f"(it is `{labelled}`)")
        else:
            message = f"`{shown}` looks like a secret ({what}) but is labelled `{labelled}`"
        related: list[Related] = []
        if rule is not None:
            related.append(Related(rule.span, f"`{shown}` gets `{rule.label_text}` from this rule"))
        target = self._target_rule()
        literal = exact_glob(rel, anchored=False)
        self.suspects.append(exact_glob(rel))
        top = self.top
        if top is None:
            help_ = (f"declare a secrecy chain (`secrecy public < internal < secret`) and add "
                     f"`{display(literal)} secret` to `files {{ }}`")
        elif target is None:
            help_ = f"label it: add `{display(literal)} {top}` to `files {{ }}`"
        elif rule is not None and rule.index > target.index:
            help_ = (f"label it: add `{display(literal)} {top}` at the end of `files {{ }}`: the later "
                     f"`{rule.label_text}` rule would override an earlier `{target.label_text}` rule")
        elif any(g.matches(rel) for g in target.globs):
            help_ = (f"label it: remove the `except` that takes `{shown}` out of the `{target.label_text}` "
                     f"rule in `files {{ }}`")
        else:
            help_ = f"label it: add `{display(literal)}` to the `{target.label_text}` rule in `files {{ }}`"
        if target is not None and target is not rule:
            related.append(Related(target.span, f"the `{target.label_text}` rule"))
        file = os.path.join(self.root, rel) if self.root not in ("", ".") else rel
        end = hit.end_column if hit.end_column > hit.column else 0
        span = Span(display(file), hit.line, hit.column, hit.line if end else 0, end)
        return warning(CODE, message, span, help_, related)

    def _target_rule(self) -> FileRule | None:
        """The last file rule that labels its files secret: where a missing path most naturally goes."""
        for rule in reversed(self.policy.file_rules):
            if self._is_secret(rule.label):
                return rule
        return None


# ----------------------------------------------------------------------------------------- helpers

def exact_glob(rel: str, anchored: bool = True) -> str:
    """A quoted glob for the workspace path `rel`, metacharacters escaped (an undecodable byte, a lone surrogate,
    can only be matched by `?`); `anchored`: that path only, else (a root name) that name at any depth too."""
    return encode_string("/" * anchored + _SURROGATE.sub("?", re.sub(r"([*?\[\]\\])", r"\\\1", rel)))


def scan_content(data: bytes) -> _Hit | None:
    """The earliest token-shaped string in `data` (a file's first bytes), or None; a specific kind (an AWS
    key) is preferred to a generic one (`secret = …`) anywhere in the file."""
    for scanners in _TIERS:
        best = _earliest(data, scanners)
        if best is not None:
            break
    else:
        return None
    start, m, pattern = best
    preview = data[start:start + 4].decode("ascii", "replace") + "…" if pattern.preview else None
    if m.re.groups:
        return _hit_at(data, m.start(1), m.end(1), pattern.what, preview)
    return _hit_at(data, start, m.end(), pattern.what, preview)


def _earliest(data: bytes, scanners) -> tuple[int, re.Match[bytes], SecretPattern] | None:
    best: tuple[int, re.Match[bytes], SecretPattern] | None = None
    for locator, group in scanners:
        found = locator.search(data)
        while found is not None:
            pos = found.start()
            if best is not None and pos - _MAX_LEAD >= best[0]:
                break
            hit = next(((m, p) for p in group
                        if (m := p.regex.match(data, pos)) is not None
                        and (best is None or pos - p.lead < best[0])
                        and (p.validate is None or p.validate(m, data))), None)
            if hit is not None:
                best = (pos - hit[1].lead, *hit)
                break
            found = locator.search(data, pos + 1)
    return best


def _hit_at(data: bytes, start: int, end: int, what: str, preview: str | None) -> _Hit:
    line = data.count(b"\n", 0, start) + 1
    line_start = data.rfind(b"\n", 0, start) + 1
    column = len(data[line_start:start].decode("utf-8", "replace")) + 1
    line_end = data.find(b"\n", start)
    end = min(end, line_end) if line_end >= 0 else end
    end_column = column + len(data[start:end].decode("utf-8", "replace"))
    return _Hit(what, line, column, end_column, preview)


def _secret_requirement(policy: Policy) -> tuple[str | None, frozenset[str] | None]:
    """(name, tags) of the top of the first secrecy chain; with no chain, any secrecy tag counts (None)."""
    lattice = policy.lattice
    for chain in lattice.chains:
        if len(chain) > 1:
            return chain[-1], lattice.tag_closure[chain[-1]]
    if lattice.chains:
        return lattice.chains[0][0], None
    return None, None


_SURROGATE = re.compile("[\udc80-\udcff]")


def _reason(what: str, exc: BaseException) -> str:
    detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"{what}: {detail[:1].lower()}{detail[1:]}"


