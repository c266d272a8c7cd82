"""Step two: parse tree → AST. Structure only; no meaning is checked here."""

from __future__ import annotations

from lark import Token, v_args
from lark.visitors import Transformer_NonRecursive

from ifc.diagnostics import Span
from ifc.lang import ast

ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


class EscapeError(ValueError):
    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


def decode_string(literal: str) -> str:
    """Decode a quoted literal; `offset` on errors counts from the opening quote."""
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt in ESCAPES:
            out.append(ESCAPES[nxt])
            i += 2
        elif nxt == "u" and body[i + 2:i + 3] == "{":
            end = body.find("}", i + 3)
            digits = body[i + 3:end] if end > 0 else ""
            if not digits or len(digits) > 6 or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise EscapeError("bad unicode escape, expected `\\u{hex}`", i + 1)
            code = int(digits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise EscapeError("unicode escape out of range", i + 1)
            out.append(chr(code))
            i = end + 1
        else:
            raise EscapeError(f"unknown escape `\\{nxt}`", i + 1)
    return "".join(out)


def encode_string(text: str) -> str:
    """Inverse of `decode_string`: the canonical literal `ifc fmt` prints."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


@v_args(meta=True)
class Lower(Transformer_NonRecursive):
    """Turns lark's tree into `ast` nodes; string escapes become `EscapeError`s the parser reports.

    Non-recursive: a rule with thousands of comma-separated patterns nests that deep in the tree.
    """

    def __init__(self, filename: str):
        super().__init__(visit_tokens=True)
        self.filename = filename

    def _span(self, meta) -> Span:
        return Span.of_meta(self.filename, meta)

    # tokens -------------------------------------------------------------------------------------
    def NAME(self, token: Token) -> ast.Name:
        return ast.Name(str(token), Span.of_token(self.filename, token))

    def STRING(self, token: Token) -> ast.Pattern:
        span = Span.of_token(self.filename, token)
        try:
            return ast.Pattern(decode_string(str(token)), span)
        except EscapeError as exc:
            raise StringEscapeError(str(exc), Span(self.filename, token.line, token.column + exc.offset)) from None

    # structure ----------------------------------------------------------------------------------
    def start(self, meta, items):
        return tuple(items)

    def include(self, meta, children):
        return ast.Include(children[0].text, self._span(meta))

    def labels_block(self, meta, decls):
        return ast.LabelsBlock(tuple(decls), self._span(meta))

    def secrecy_decl(self, meta, names):
        return ast.SecrecyDecl(tuple(names), self._span(meta))

    def integrity_decl(self, meta, names):
        return ast.IntegrityDecl(tuple(names), self._span(meta))

    def named_label(self, meta, children):
        return ast.NamedLabel(children[0], children[1], self._span(meta))

    def label_expr(self, meta, names):
        return ast.LabelExpr(tuple(names), self._span(meta))

    def patterns(self, meta, items):
        return tuple(items)

    def file_patterns(self, meta, items):
        return (*items[0], items[1]) if len(items) == 2 else tuple(items)

    def except_opt(self, meta, children):
        return ("excepts", children[0])

    def writes_opt(self, meta, children):
        return ("writes_require", children[0])

    def files_block(self, meta, rules):
        return ast.FilesBlock(tuple(rules), self._span(meta))

    def file_rule(self, meta, children):
        patterns, label, *opts = children
        return ast.FileRule(patterns, label, span=self._span(meta), **_options(opts))

    def clearance_opt(self, meta, children):
        return ("clearance", children[0])

    def requires_opt(self, meta, children):
        return ("requires", children[0])

    def returns_opt(self, meta, children):
        return ("returns", children[0])

    def groups_opt(self, meta, children):
        return ("groups", tuple(children))

    def methods_opt(self, meta, children):
        return ("methods", tuple(children))

    def endpoints_block(self, meta, rules):
        return ast.EndpointsBlock(tuple(rules), self._span(meta))

    def endpoint_rule(self, meta, children):
        patterns, *opts = children
        return ast.EndpointRule(patterns, span=self._span(meta), **_options(opts))

    def secret_decl(self, meta, children):
        name, kind, ref, key, to = children
        return ast.SecretDecl(name, str(kind), ref, to or (), self._span(meta), key)

    def key_opt(self, meta, children):
        return children[0]

    def to_opt(self, meta, children):
        return children[0]

    def agent_block(self, meta, children):
        return ast.AgentBlock(children[0], tuple(children[1:]), self._span(meta))

    def grant(self, meta, children):
        return ast.Grant(str(children[0]), children[1], False, self._span(meta), _methods(children[2]))

    def delegate(self, meta, children):
        return ast.Grant(str(children[0]), children[1], True, self._span(meta), _methods(children[2]))

    def holds(self, meta, names):
        return ast.Holds(tuple(names), self._span(meta))

    def endpoint_sink(self, meta, children):
        return ast.Sink("endpoint", patterns=children[0], span=self._span(meta))

    def group_sink(self, meta, children):
        return ast.Sink("group", group=children[0], span=self._span(meta))

    def file_sink(self, meta, children):
        return ast.Sink("file", patterns=children[0], span=self._span(meta))

    def flow_rule(self, meta, children):
        effect, source, sink, message = children
        return ast.FlowRule(str(effect), source, sink, message.text if message else None, self._span(meta))

    def capability_decl(self, meta, children):
        kind, name, source, sink, message = children
        return ast.CapabilityDecl(str(kind), name, source, sink, message.text if message else None,
                                  self._span(meta))

    # keyword-like terminals stay plain strings
    def OP(self, token):
        return str(token)

    EFFECT = CAP_KIND = SOURCE_KIND = OP


class StringEscapeError(ValueError):
    def __init__(self, message: str, span: Span):
        super().__init__(message)
        self.span = span


def _methods(opt) -> tuple[ast.Name, ...]:
    return () if opt is None else opt[1]


def _options(opts) -> dict:
    out: dict = {}
    for key, value in opts:
        if key in out:
            raise DuplicateOptionError(key, value)
        out[key] = value
    return out


class DuplicateOptionError(ValueError):
    def __init__(self, key: str, value):
        super().__init__(key)
        self.key = key
        self.value = value
