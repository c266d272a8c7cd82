"""The policy AST: frozen dataclasses, every node with the span it came from.

The AST says what was written, not what it means: names are unresolved strings and patterns are raw
text. Meaning (the lattice, compiled matchers) is `ifc.policy`'s job, so `ifc fmt` can print exactly what
the user wrote and errors can point at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ifc.diagnostics import Span


@dataclass(frozen=True)
class Name:
    text: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Pattern:
    """A string literal that holds a glob or an endpoint pattern (escapes already decoded)."""

    text: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class LabelExpr:
    """`internal + customer + untrusted`: a join of tags, integrity levels and named labels."""

    terms: tuple[Name, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Include:
    path: str
    span: Span = field(compare=False)


@dataclass(frozen=True)
class SecrecyDecl:
    """`secrecy public < internal < secret` (a chain) or `secrecy customer` (one independent tag)."""

    chain: tuple[Name, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class IntegrityDecl:
    chain: tuple[Name, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class NamedLabel:
    name: Name
    expr: LabelExpr
    span: Span = field(compare=False)


@dataclass(frozen=True)
class LabelsBlock:
    decls: tuple[SecrecyDecl | IntegrityDecl | NamedLabel, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class FileRule:
    patterns: tuple[Pattern, ...]
    label: LabelExpr
    excepts: tuple[Pattern, ...] = ()
    writes_require: Name | None = None
    span: Span = field(compare=False, default=None)


@dataclass(frozen=True)
class FilesBlock:
    rules: tuple[FileRule, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class EndpointRule:
    patterns: tuple[Pattern, ...]
    clearance: LabelExpr | None = None
    requires: Name | None = None
    returns: Name | None = None
    groups: tuple[Name, ...] = ()
    excepts: tuple[Pattern, ...] = ()
    methods: tuple[Name, ...] = ()  # HTTP methods the rule's patterns are about (none written: every method)
    span: Span = field(compare=False, default=None)


@dataclass(frozen=True)
class EndpointsBlock:
    rules: tuple[EndpointRule, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class SecretDecl:
    name: Name
    source: str  # env | file | command
    ref: Pattern
    to: tuple[Pattern, ...]
    span: Span = field(compare=False)
    key: Pattern | None = None  # `key "STRIPE_KEY"`: one value of the file, not its whole content


@dataclass(frozen=True)
class Grant:
    """`read "src/**"` in an agent block; `delegate` marks what may be handed to sub-processes."""

    op: str
    patterns: tuple[Pattern, ...]
    delegate: bool
    span: Span = field(compare=False)
    methods: tuple[Name, ...] = ()  # `connect "https://host/path" methods GET`


@dataclass(frozen=True)
class Holds:
    names: tuple[Name, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class AgentBlock:
    name: Name
    items: tuple[Grant | Holds, ...]
    span: Span = field(compare=False)


@dataclass(frozen=True)
class Sink:
    """Where data goes: endpoint patterns, an endpoint group name, or file globs (writes)."""

    kind: str  # endpoint | group | file
    patterns: tuple[Pattern, ...] = ()
    group: Name | None = None
    span: Span = field(compare=False, default=None)


@dataclass(frozen=True)
class FlowRule:
    effect: str  # deny | allow
    source: LabelExpr
    sink: Sink
    message: str | None
    span: Span = field(compare=False)


@dataclass(frozen=True)
class CapabilityDecl:
    """`declassify NAME: tags -> sink` or `endorse NAME: level -> sink`: a right a token can carry."""

    kind: str  # declassify | endorse
    name: Name
    source: LabelExpr
    sink: Sink
    message: str | None
    span: Span = field(compare=False)


Item = (
    Include | LabelsBlock | FilesBlock | EndpointsBlock | SecretDecl | AgentBlock | FlowRule | CapabilityDecl
)


@dataclass(frozen=True)
class Comment:
    text: str
    line: int
    column: int


@dataclass(frozen=True)
class PolicyFile:
    path: str
    items: tuple[Item, ...]
    comments: tuple[Comment, ...] = field(default=(), compare=False)
