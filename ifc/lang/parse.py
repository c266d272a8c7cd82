"""Step one: text → parse tree → AST, collecting every syntax error in one pass.

On a syntax error the text is cut into top-level statements (each starts with a keyword at brace depth 0)
and each is parsed on its own, so a file with three broken statements reports three errors and the good
statements still reach the compiler (which can then report meaning errors in the same run).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from functools import lru_cache

from lark import Lark, Token
from lark import __version__ as lark_version
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ifc.diagnostics import Diagnostic, Span, error
from ifc.lang import ast
from ifc.lang.lower import DuplicateOptionError, Lower, StringEscapeError
from ifc.lang.syntax_errors import EXAMPLES

KEYWORDS = ("include", "labels", "files", "endpoints", "secret", "agent", "deny", "allow", "declassify", "endorse")
MAX_SYNTAX_ERRORS = 50
MAX_POLICY_BYTES = 4 * 1024 * 1024


def _cache_path() -> str | bool:
    """Building the LALR tables (with strict collision checks) costs ~1 s; lark caches them by grammar
    hash. Per-user cache directory; any problem with it falls back to lark's own temp-dir cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = os.path.join(base, "ifc-sandbox")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError:
        return True
    return os.path.join(directory, f"flow-grammar-lark{lark_version}.cache")


@lru_cache(maxsize=1)
def parser() -> Lark:
    return Lark.open_from_package("ifc.lang", "flow.lark", parser="lalr", strict=True,
                                  propagate_positions=True, maybe_placeholders=True, cache=_cache_path())


@dataclass(frozen=True)
class ParseResult:
    file: ast.PolicyFile
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return not self.diagnostics


def parse_text(text: str, filename: str = "<policy>") -> ParseResult:
    if len(text) > MAX_POLICY_BYTES:
        return ParseResult(ast.PolicyFile(filename, ()), (
            error("policy-too-large", f"policy is larger than {MAX_POLICY_BYTES // 1024 // 1024} MiB",
                  Span(filename, 1, 1)),))
    comments = tuple(
        ast.Comment(m.group(0), text.count("\n", 0, m.start()) + 1, m.start() - text.rfind("\n", 0, m.start()))
        for m in _comment_positions(text)
    )
    items, diagnostics = _parse_piece(text, filename)
    if diagnostics:
        items, diagnostics = [], []
        for start, piece in _statements(text):
            line = text.count("\n", 0, start)
            col = start - (text.rfind("\n", 0, start) + 1)
            padded = "\n" * line + " " * col + piece
            piece_items, piece_diags = _parse_piece(padded, filename)
            items.extend(piece_items)
            diagnostics.extend(piece_diags)
            if len(diagnostics) >= MAX_SYNTAX_ERRORS:
                break
    return ParseResult(ast.PolicyFile(filename, tuple(items), comments), tuple(diagnostics))


def _parse_piece(text: str, filename: str) -> tuple[list, list[Diagnostic]]:
    try:
        tree = parser().parse(text)
    except UnexpectedInput as exc:
        return [], [_syntax_diagnostic(exc, text, filename)]
    except LarkError as exc:  # defensive: any other lark failure is still a located error
        return [], [error("syntax", f"cannot parse: {exc}".splitlines()[0].lower(), Span(filename, 1, 1))]
    try:
        return list(Lower(filename).transform(tree)), []
    except Exception as exc:  # lark wraps transformer errors in VisitError
        inner = getattr(exc, "orig_exc", exc)
        if isinstance(inner, StringEscapeError):
            return [], [error("syntax", str(inner), inner.span,
                              help='escapes are `\\"`, `\\\\`, `\\n`, `\\t` and `\\u{hex}`')]
        if isinstance(inner, DuplicateOptionError):
            value = inner.value[0] if isinstance(inner.value, tuple) else inner.value
            return [], [error("syntax", f"option `{_option_word(inner.key)}` given twice", value.span,
                              help="keep one of them")]
        raise


def _option_word(key: str) -> str:
    return {"excepts": "except", "writes_require": "writes require", "groups": "as"}.get(key, key)


_TOKEN_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"?|#[^\n]*|[{}]|[A-Za-z_][A-Za-z0-9_-]*|\s+|.', re.DOTALL)


def _comment_positions(text: str):
    return (m for m in _TOKEN_RE.finditer(text) if m.group(0).startswith("#"))


def _statements(text: str) -> list[tuple[int, str]]:
    """Cut text where a line starts with a statement keyword (or a near miss of one) at brace depth 0.

    A keyword that opens a block also restarts at depth 0 when it begins a line, so one unclosed block
    does not swallow the rest of the file.
    """
    starts, depth, line_start = [], 0, True
    for m in _TOKEN_RE.finditer(text):
        tok = m.group(0)
        if tok.isspace() or tok.startswith("#"):
            line_start = line_start or "\n" in tok
            continue
        first_on_line, line_start = line_start, False
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth = max(0, depth - 1)
        elif first_on_line and _starts_statement(tok, depth):
            depth = 0
            starts.append(m.start())
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    bounds = [*starts, len(text)]
    pieces = [(bounds[i], text[bounds[i]:bounds[i + 1]]) for i in range(len(starts))]
    return [(start, piece) for start, piece in pieces if piece.strip()]


def _starts_statement(word: str, depth: int) -> bool:
    if depth == 0:
        return word in KEYWORDS or bool(difflib.get_close_matches(word, KEYWORDS, n=1, cutoff=0.75))
    return word in ("labels", "files", "endpoints", "agent")


def _syntax_diagnostic(exc: UnexpectedInput, text: str, filename: str) -> Diagnostic:
    line, column = exc.line, exc.column
    if isinstance(exc, UnexpectedEOF) or line in (None, -1):
        line = text.count("\n") + 1
        column = len(text) - (text.rfind("\n") + 1) + 1
    span = Span(filename, line, column, line, column + 1)
    found = _describe_found(exc)
    message, help = _match_example(exc)
    if message is None:
        message = f"unexpected {found}"
    elif found:
        message = f"{message} (found {found})"
    token = getattr(exc, "token", None)
    if isinstance(token, Token) and token.type == "NAME" and _expects_keyword(exc):
        guess = difflib.get_close_matches(str(token), _keywords_expected(exc), n=1, cutoff=0.6)
        if guess:
            help = f"did you mean `{guess[0]}`?"
    if isinstance(token, Token) and token.end_column:
        span = Span(filename, line, column, token.end_line or line, token.end_column)
    return error("syntax", message, span, help)


def _describe_found(exc: UnexpectedInput) -> str:
    if isinstance(exc, UnexpectedEOF):
        return "end of file"
    if isinstance(exc, UnexpectedToken):
        if exc.token.type == "$END":
            return "end of file"
        value = str(exc.token)
        return f"`{value[:40]}`" if value else "end of file"
    if isinstance(exc, UnexpectedCharacters):
        return f"`{exc.char}`" if exc.char.isprintable() else f"character U+{ord(exc.char):04X}"
    return ""


@lru_cache(maxsize=1)
def _example_states() -> dict[tuple, tuple[str, str]]:
    """Map (LALR state, kind of failure) of each example in the table to its message.

    Matching on the state alone, not lark's whole parser stack, lets one example cover the same
    mistake at any nesting depth (the third rule in a block as well as the first).
    """
    table: dict[tuple, tuple[str, str]] = {}
    for message, hint, cases in EXAMPLES:
        for case in cases:
            try:
                parser().parse(case)
            except UnexpectedInput as exc:
                table.setdefault(_state_key(exc), (message, hint))
    return table


def _state_key(exc: UnexpectedInput) -> tuple:
    """LALR merges states across contexts; the set of tokens the parser would accept tells them apart."""
    state = getattr(exc, "state", None)
    position = getattr(state, "position", -1) if state is not None else -1
    accepts = getattr(exc, "accepts", None) or getattr(exc, "allowed", None) or ()
    token = getattr(exc, "token", None)
    at_end = isinstance(exc, UnexpectedEOF) or getattr(token, "type", None) == "$END"
    return position, frozenset(accepts), at_end


def _match_example(exc: UnexpectedInput) -> tuple[str | None, str | None]:
    return _example_states().get(_state_key(exc), (None, None))


_OPS = ("read", "write", "create", "delete", "exec", "connect")


def _keywords_expected(exc) -> list[str]:
    expected = {e.strip('"_').lower() for e in getattr(exc, "expected", ()) or ()}
    words = [*KEYWORDS, *_OPS, "delegate", "holds", "secrecy", "integrity", "label", "clearance", "requires",
             "returns", "as", "except", "writes", "require", "from", "to", "file", "env", "command"]
    if "op" in expected:
        expected |= set(_OPS)
    return [w for w in words if w in expected or w.upper() in {e.upper() for e in expected}]


def _expects_keyword(exc) -> bool:
    return bool(_keywords_expected(exc))
