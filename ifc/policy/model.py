"""The compiled policy: immutable, hashable, with matchers ready to answer queries.

Precedence is one rule everywhere a list of patterns labels something: the last matching rule wins
(like .gitignore), and `except` removes paths from a rule so they fall through to earlier rules. Flow
rules have no order at all: a `deny` always beats an `allow`, so their order never changes an answer.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

from ifc.diagnostics import Span
from ifc.lang.lower import encode_string
from ifc.match import METHODS_WORD, Endpoint, EndpointPattern, Glob
from ifc.policy.labels import Label, LabelPattern, Lattice

FILE_OPS = ("read", "write", "create", "delete", "exec")
OPS = (*FILE_OPS, "connect")


@dataclass(frozen=True)
class FileRule:
    index: int
    globs: tuple[Glob, ...]
    excepts: tuple[Glob, ...]
    label: Label
    label_text: str
    writes_require: int | None
    span: Span = field(compare=False)

    @cached_property
    def _any(self):
        return _union(self.globs)

    @cached_property
    def _excluded(self):
        return _union(self.excepts)

    def matches(self, path: str) -> bool:
        # one regex per rule (its globs joined) instead of one per glob: labelling is on the hot path
        return self._any.match(path) is not None and (self._excluded is None or self._excluded.match(path) is None)

    @cached_property
    def globs_text(self) -> str:
        """The globs as written, quoted, for messages: formatted once, cited by every write decision."""
        return ", ".join(encode_string(g.text) for g in self.globs)


def _union(globs: tuple[Glob, ...]):
    if not globs:
        return None
    return re.compile("|".join(f"(?:{g.regex})" for g in globs), re.DOTALL)


def written(pattern: str) -> str:
    """An endpoint pattern's text as the language writes it: `"https://host/path" methods GET, POST`."""
    url, word, methods = pattern.partition(METHODS_WORD)
    return encode_string(url) + (f" methods {methods.replace(',', ', ')}" if word else "")


@dataclass(frozen=True)
class EndpointRule:
    index: int
    patterns: tuple[EndpointPattern, ...]
    excepts: tuple[EndpointPattern, ...]
    clearance: frozenset[str]
    requires: int
    returns: int
    groups: frozenset[str]
    span: Span = field(compare=False)

    def matches(self, endpoint: Endpoint) -> bool:
        return any(p.matches(endpoint) for p in self.patterns) and not any(p.matches(endpoint) for p in self.excepts)

    def reach(self, connection: Endpoint) -> str | None:
        """How this rule meets a connection (no path yet): None, "all" (it decides every request on it) or
        "some" (a path, a method, or an `except` naming paths or methods splits its requests)."""
        hits = [p for p in self.patterns if p.matches_connection(connection)]
        if not hits or any(not x.restricted and x.matches_connection(connection) for x in self.excepts):
            return None
        if all(p.restricted for p in hits) or any(x.matches_connection(connection) for x in self.excepts):
            return "some"
        return "all"

    @property
    def restricted(self) -> bool:
        return any(p.restricted for p in (*self.patterns, *self.excepts))


@dataclass(frozen=True)
class Sink:
    """Where a flow rule or capability applies: endpoints (patterns or a group) or file writes (globs)."""

    kind: str  # endpoint | group | file
    endpoints: tuple[EndpointPattern, ...] = ()
    group: str | None = None
    globs: tuple[Glob, ...] = ()
    text: str = ""

    def matches_endpoint(self, endpoint: Endpoint, rule: EndpointRule | None) -> bool:
        if self.kind == "endpoint":
            return any(p.matches(endpoint) for p in self.endpoints)
        if self.kind == "group":
            return rule is not None and self.group in rule.groups
        return False

    def matches_file(self, path: str) -> bool:
        return self.kind == "file" and any(g.matches(path) for g in self.globs)


@dataclass(frozen=True)
class FlowRule:
    effect: str  # deny | allow
    source: LabelPattern
    source_text: str
    sink: Sink
    message: str | None
    span: Span = field(compare=False)

    def describe(self) -> str:
        msg = f' "{self.message}"' if self.message else ""
        return f"{self.effect} {self.source_text} -> {self.sink.text}{msg}"


@dataclass(frozen=True)
class Capability:
    """A named declassification or endorsement; only a token right naming it lets a subject use it."""

    kind: str  # declassify | endorse
    name: str
    source: LabelPattern
    source_text: str
    sink: Sink
    message: str | None
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Grant:
    op: str
    pattern: str


@dataclass(frozen=True)
class Agent:
    name: str
    grants: tuple[Grant, ...]
    delegable: tuple[Grant, ...]
    holds: tuple[str, ...]
    declassifications: tuple[tuple[str, str], ...]  # (tag, endpoint pattern) pairs for tokens
    span: Span = field(compare=False)

    def patterns(self, op: str) -> tuple[str, ...]:
        return tuple(g.pattern for g in self.grants if g.op == op)

    @cached_property
    def _matchers(self) -> dict[str, tuple]:
        """Per operation: connect → its endpoint patterns; a path operation → one regex of all its globs
        (one match per question, as for file rules, instead of a generator over globs)."""
        out: dict[str, list] = {}
        for g in self.grants:
            out.setdefault(g.op, []).append(EndpointPattern.parse(g.pattern) if g.op == "connect"
                                            else Glob.compile(g.pattern))
        return {op: tuple(ms) if op == "connect" else (_union(tuple(ms)),) for op, ms in out.items()}

    def allows(self, op: str, obj: str | Endpoint) -> bool:
        """Do this agent's grants cover `op` on `obj` (a normalised path, or an Endpoint for connect)?"""
        matchers = self._matchers.get(op, ())
        if op == "connect":
            return any(m.matches(obj) for m in matchers)
        return bool(matchers) and matchers[0].match(obj) is not None


SENTINEL_TAG = "secret"  # a file labelled with it, of a recognised format, is served with sentinels


@dataclass(frozen=True)
class Secret:
    """`secret NAME from env|file|command "REF" [key "K"] to ...`. A `file` REF that is relative is a workspace
    file (its value is served to the sandbox as a sentinel inside the file itself, see `ifc.secretfiles`); one
    starting with `~/` or `/` is a host file, whose value the sandbox sees only as `$NAME`."""

    name: str
    source: str  # env | file | command
    ref: str
    endpoints: tuple[EndpointPattern, ...]
    span: Span = field(compare=False)
    key: str | None = None  # one value of the file (a key path, `ifc.secretfiles.items.join_key`)

    @property
    def workspace_file(self) -> bool:
        return self.source == "file" and is_workspace_ref(self.ref)


def is_workspace_ref(ref: str) -> bool:
    """A `from file` reference names a workspace file unless it starts with `~/` (or is `~`) or `/`."""
    return not (ref.startswith("/") or ref == "~" or ref.startswith("~/"))


@dataclass(frozen=True, slots=True)
class FileMatch:  # slots: one object per labelled path in the lookup cache, not two
    label: Label
    rule: FileRule | None


@dataclass(frozen=True)
class Policy:
    lattice: Lattice
    file_rules: tuple[FileRule, ...]
    endpoint_rules: tuple[EndpointRule, ...]
    flow_rules: tuple[FlowRule, ...]
    capabilities_: tuple[Capability, ...]
    agents_: tuple[Agent, ...]
    secrets_: tuple[Secret, ...]
    sources: tuple[str, ...] = field(compare=False, default=())

    # --- lookups --------------------------------------------------------------------------------
    @cached_property
    def agents(self) -> dict[str, Agent]:
        return {a.name: a for a in self.agents_}

    def agent_for(self, name: str | None) -> Agent | None:
        """Whose grants apply: the agent `name`, the first agent when None, no agent (flows only) for `none`.
        KeyError for a name the policy does not declare."""
        if name == "none":
            return None
        if name is None:
            return self.agents_[0] if self.agents_ else None
        return self.agents[name]

    @cached_property
    def capabilities(self) -> dict[str, Capability]:
        return {c.name: c for c in self.capabilities_}

    @cached_property
    def secrets(self) -> dict[str, Secret]:
        return {s.name: s for s in self.secrets_}

    @cached_property
    def _file_lookup(self):
        rules = tuple(reversed(self.file_rules))
        bottom = self.lattice.bottom
        # Every rule's globs as one alternative of one regex, last rule first: a single match finds the
        # last rule whose globs match (the engine tries alternatives in order), where calling each rule's
        # matcher in turn cost a Python call per rule. Its `except` globs are then tested, and only if they
        # exclude the path does the scan go on, rule by rule, below it.
        first = re.compile("|".join(f"(?P<r{i}>{rule._any.pattern})" for i, rule in enumerate(rules) if rule.globs),
                           re.DOTALL) if rules else None

        @lru_cache(maxsize=65536)
        def lookup(path: str) -> FileMatch:
            found = first.match(path) if first is not None else None
            if found is not None:
                start = int(found.lastgroup[1:])
                for rule in rules[start:]:
                    if rule.matches(path):
                        return FileMatch(rule.label, rule)
            return FileMatch(bottom, None)

        return lookup

    def file_label(self, path: str) -> FileMatch:
        """The label of a workspace path: the last matching file rule, or public+trusted when none."""
        return self._file_lookup(path)

    def sentinel_file(self, path: str) -> bool:
        """Is `path` served with sentinels in place of its values (when its content parses)? When its policy
        label carries the tag `SENTINEL_TAG` and its name is of a recognised format (`ifc.secretfiles`)."""
        from ifc.secretfiles import format_of

        return SENTINEL_TAG in self.file_label(path).label.secrecy and format_of(path) is not None

    def served_label(self, path: str) -> Label:
        """The policy label of what the sandbox sees of a sentinelised file: its label without `SENTINEL_TAG`
        (with the shipped chain `public < internal < secret`, `internal`). Its keys, comments' places and layout
        are data like the rest of the project; its values are sentinels, worth nothing outside the run."""
        label = self.file_label(path).label
        return Label(label.secrecy - {SENTINEL_TAG}, label.integrity)

    @cached_property
    def deny_rules(self) -> tuple[FlowRule, ...]:
        """The `deny` flow rules in source order. Any matching one refuses whatever the order; the first in
        the source is the one named. Sorted once here, not on every flow check."""
        return tuple(sorted((f for f in self.flow_rules if f.effect == "deny"),
                            key=lambda f: (f.span.file, f.span.line, f.span.column)))

    @cached_property
    def allow_rules(self) -> tuple[FlowRule, ...]:
        return tuple(f for f in self.flow_rules if f.effect == "allow")

    @cached_property
    def _guarded(self) -> tuple[FileRule, ...]:
        return tuple(r for r in self.file_rules if r.writes_require is not None)

    def write_requirement(self, path: str) -> tuple[int, FileRule | None]:
        """The integrity a write to `path` needs: the highest `writes require` of *every* matching rule.

        Labels follow "last match wins"; requirements are restrictions, so they add up instead and
        no later rule can silently drop one.
        """
        best: tuple[int, FileRule | None] = (0, None)
        for rule in self._guarded:
            if rule.writes_require > best[0] and rule.matches(path):
                best = (rule.writes_require, rule)
        return best

    @cached_property
    def _endpoint_lookup(self):
        rules = tuple(reversed(self.endpoint_rules))

        @lru_cache(maxsize=16384)
        def lookup(endpoint: Endpoint) -> EndpointRule | None:
            if endpoint.path is None:
                candidates = self.connection_rules(endpoint)
                return candidates[0] if candidates else None
            return next((rule for rule in rules if rule.matches(endpoint)), None)

        return lookup

    def endpoint_rule(self, endpoint: Endpoint) -> EndpointRule | None:
        """The last endpoint rule matching; None means the policy does not know it (connects are denied).
        For a connection (no path), the last rule that reaches it (see `connection_rules`).

        Memoised like `file_label`: the flow check and the monitor both ask it on every connect."""
        return self._endpoint_lookup(endpoint)

    def connection_rules(self, connection: Endpoint) -> tuple[EndpointRule, ...]:
        """Every rule that could decide some request on `connection`, last first: the rules that reach it, down
        to the first that decides all of its requests (it hides every earlier one). One rule that reaches
        "all" means the connection is decided as before paths existed; more, or one reaching "some", means its
        requests are decided one by one (`EndpointRule.reach`)."""
        out = []
        for rule in reversed(self.endpoint_rules):
            reach = rule.reach(connection)
            if reach is None:
                continue
            out.append(rule)
            if reach == "all":
                break
        return tuple(out)

    @cached_property
    def routed_hosts(self) -> tuple[EndpointPattern, ...]:
        """Patterns naming paths or methods for exact hosts (in endpoint rules, their excepts, connect grants):
        the hosts whose TLS the hook terminates so that each request can be decided. A wildcard host is never
        among them (the run CA's name constraints stay a list of names), so its requests cannot be checked."""
        patterns = [p for r in self.endpoint_rules for p in (*r.patterns, *r.excepts)]
        patterns += [EndpointPattern.parse(g.pattern) for a in self.agents_ for g in (*a.grants, *a.delegable)
                     if g.op == "connect"]
        return tuple(p for p in patterns if p.restricted and p.names_hosts and p.scheme == "https")

    # --- identity -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain data for run snapshots and `--format json`; patterns as their source text."""
        lat = self.lattice
        return {
            "labels": {
                "secrecy": [list(c) for c in lat.chains],
                "integrity": list(lat.integrity_levels),
                "named": {n: _label_dict(lat, lbl) for n, lbl in lat.named},
            },
            "files": [
                {"globs": [g.text for g in r.globs], "except": [g.text for g in r.excepts],
                 "label": _label_dict(lat, r.label),
                 "writes_require": None if r.writes_require is None else lat.integrity_levels[r.writes_require]}
                for r in self.file_rules
            ],
            "endpoints": [
                {"patterns": [p.text for p in r.patterns], "except": [p.text for p in r.excepts],
                 "clearance": sorted(r.clearance), "requires": lat.integrity_levels[r.requires],
                 "returns": lat.integrity_levels[r.returns], "groups": sorted(r.groups)}
                for r in self.endpoint_rules
            ],
            "flows": [{"effect": f.effect, "source": f.source_text, "sink": f.sink.text, "message": f.message}
                      for f in self.flow_rules],
            "capabilities": [{"kind": c.kind, "name": c.name, "source": c.source_text, "sink": c.sink.text,
                              "message": c.message} for c in self.capabilities_],
            "agents": {a.name: {"grants": [[g.op, g.pattern] for g in a.grants],
                                "delegable": [[g.op, g.pattern] for g in a.delegable], "holds": list(a.holds)}
                       for a in self.agents_},
            "secrets": {s.name: {"from": s.source, "ref": s.ref, "to": [p.text for p in s.endpoints],
                                 **({"key": s.key} if s.key is not None else {})}
                        for s in self.secrets_},
        }

    @cached_property
    def digest(self) -> str:
        """A content hash: two policies with the same meaning-bearing rules share it."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


def _label_dict(lattice: Lattice, label: Label) -> dict:
    return {"secrecy": sorted(label.secrecy), "integrity": lattice.integrity_levels[label.integrity]}
