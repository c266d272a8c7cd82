"""`ifc fmt`: one canonical layout for a policy, with every comment kept where its reader expects it.

Layout
  * Blocks (`labels`, `files`, `endpoints`, `agent`) open on their keyword's line, hold one rule per line
    indented by two spaces, and close with `}` alone; an empty block is `files {}`.
  * In `files {}` and `endpoints {}` the label/options column is aligned: pattern lists are padded to the
    widest list in the block that is at most `ALIGN_CAP` characters wide; a wider list does not move the
    column, it overhangs it (followed by two spaces).
  * Options are printed in one fixed order (the grammar's): `except` then `writes require` for files;
    `clearance`, `requires`, `returns`, `as`, `except` for endpoints. Their order never had a meaning.
  * Top-level statements of different kinds are separated by one blank line, and every block by one
    blank line from its neighbours; consecutive statements of one kind (flow rules, includes, secrets,
    capabilities) are not. Strings are printed with `encode_string`, the canonical escapes.

Comments (from `PolicyFile.comments`, attached to nodes by their line numbers)
  * A comment on its own line stays above the node that follows it (or at the end of its block / the
    file when nothing follows); a comment inside an otherwise empty block stays inside.
  * A comment after a node's last token stays at the end of that node's line; after a block's `{` it
    stays after `{`, after its `}` after `}`.
  * A comment in the middle of a statement written over several lines moves to its own line above that
    statement, which the formatter puts on one line.
  * The only blank lines kept from the source are single ones next to comments (a comment paragraph
    stays separated from what it is not about); everything else follows the rules above.

The result is a fixed point: `format_policy(parse(format_policy(f)))` is `format_policy(f)`.
"""

from __future__ import annotations

import bisect
import unicodedata
from dataclasses import dataclass, field

from ifc.lang import ast
from ifc.lang.lower import encode_string

INDENT = "  "
ALIGN_CAP = 40  # pattern lists wider than this do not push a block's label/options column further
COMMENT_GAP = "  "  # between code and a trailing comment
COLUMN_GAP = "  "  # between the pattern column and the label/options column

_BLOCKS = (ast.LabelsBlock, ast.FilesBlock, ast.EndpointsBlock, ast.AgentBlock)


def format_policy(file: ast.PolicyFile) -> str:
    """The canonical text of a parsed policy (its items and comments); `""` for an empty file."""
    comments = sorted(file.comments, key=lambda c: (c.line, c.column))
    lines = _render_seq(_attach(file.items, comments), top=True)
    return "\n".join(lines) + "\n" if lines else ""


# ------------------------------------------------------------------------------------------ attaching
@dataclass
class _Entry:
    """A node with the comments that belong to it."""

    node: object
    leading: list[ast.Comment] = field(default_factory=list)  # own-line comments above it
    inner: list[ast.Comment] = field(default_factory=list)  # comments from inside a multi-line statement
    trailing: ast.Comment | None = None  # after its last token (a block's `}`)
    header: ast.Comment | None = None  # blocks: after `{`
    body: _Seq | None = None  # blocks: the rules inside


@dataclass
class _Seq:
    entries: list[_Entry]
    dangling: list[ast.Comment]  # own-line comments after the last node (before `}` or end of file)


def _children(node) -> tuple:
    if isinstance(node, ast.LabelsBlock):
        return node.decls
    if isinstance(node, ast.FilesBlock | ast.EndpointsBlock):
        return node.rules
    if isinstance(node, ast.AgentBlock):
        return node.items
    return ()


def _attach(nodes, comments: list[ast.Comment]) -> _Seq:
    """Give each comment of this region to a node of `nodes` (which do not overlap and are in order)."""
    entries = [_Entry(n) for n in nodes]
    starts = [n.span.line for n in nodes]
    block_comments: dict[int, list[ast.Comment]] = {}
    dangling: list[ast.Comment] = []
    for c in comments:
        i = bisect.bisect_right(starts, c.line) - 1  # the last node starting on or before the comment
        if i >= 0 and c.line <= nodes[i].span.end_line:  # the comment is on one of the node's lines
            if isinstance(nodes[i], _BLOCKS):
                block_comments.setdefault(i, []).append(c)
            elif c.line == nodes[i].span.end_line and entries[i].trailing is None:
                entries[i].trailing = c
            else:
                entries[i].inner.append(c)
        elif i + 1 < len(nodes):
            entries[i + 1].leading.append(c)
        else:
            dangling.append(c)
    for i, entry in enumerate(entries):
        if isinstance(entry.node, _BLOCKS):
            _attach_block(entry, block_comments.get(i, []))
    return _Seq(entries, dangling)


def _attach_block(entry: _Entry, comments: list[ast.Comment]) -> None:
    node, children = entry.node, _children(entry.node)
    child_lines = {line for child in children for line in range(child.span.line, child.span.end_line + 1)}
    inside = []
    for c in comments:
        if c.line == node.span.end_line and entry.trailing is None:  # after `}`: nothing can follow a `#`
            entry.trailing = c
        elif c.line == node.span.line and c.line not in child_lines and entry.header is None:
            entry.header = c
        else:
            inside.append(c)
    entry.body = _attach(children, inside)


# ------------------------------------------------------------------------------------------ rendering
def _render_seq(seq: _Seq, top: bool) -> list[str]:
    out: list[str] = []

    def emit(line: str, blank_before: bool) -> None:
        if blank_before and out and out[-1] != "":
            out.append("")
        out.append(line)

    prev = None
    width = _column_width(seq)
    for entry in seq.entries:
        node = entry.node
        separate = prev is not None and top and _separate(prev.node, node)
        last_line = prev.node.span.end_line if prev is not None else None
        for c in entry.leading:
            gap = last_line is not None and c.line - last_line > 1
            emit(_comment(c), separate or gap)
            separate, last_line = False, c.line
        gap = bool(entry.leading) and node.span.line - entry.leading[-1].line > 1
        for c in entry.inner:
            emit(_comment(c), separate or gap)
            separate = gap = False
        lines = _render_block(entry) if isinstance(node, _BLOCKS) else [_statement(node, width)]
        if entry.trailing is not None:
            lines[-1] += COMMENT_GAP + _comment(entry.trailing)
        emit(lines[0], separate or gap)
        out.extend(lines[1:])
        prev = entry
    last_line = prev.node.span.end_line if prev is not None else None
    for c in seq.dangling:
        emit(_comment(c), last_line is not None and c.line - last_line > 1)
        last_line = c.line
    return out


def _render_block(entry: _Entry) -> list[str]:
    node = entry.node
    word = f"agent {node.name.text}" if isinstance(node, ast.AgentBlock) else _BLOCK_WORDS[type(node)]
    head = word + " {"
    body = _render_seq(entry.body, top=False)
    if not body and entry.header is None:
        return [head + "}"]
    if entry.header is not None:
        head += COMMENT_GAP + _comment(entry.header)
    return [head, *(INDENT + line if line else "" for line in body), "}"]


_BLOCK_WORDS = {ast.LabelsBlock: "labels", ast.FilesBlock: "files", ast.EndpointsBlock: "endpoints"}


def _separate(prev, node) -> bool:
    """A blank line between two top-level statements: different kinds, or either one a block."""
    return type(prev) is not type(node) or isinstance(prev, _BLOCKS) or isinstance(node, _BLOCKS)


def _comment(c: ast.Comment) -> str:
    return c.text.rstrip()


def _column_width(seq: _Seq) -> int:
    """Where the label/options column starts in a `files {}` / `endpoints {}` body."""
    widths = [_width(_patterns(e.node.patterns) + _methods(getattr(e.node, "methods", ()))) for e in seq.entries
              if isinstance(e.node, ast.FileRule | ast.EndpointRule)]
    return max((w for w in widths if w <= ALIGN_CAP), default=0)


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


# ------------------------------------------------------------------------------------------ statements
def _statement(node, width: int = 0) -> str:
    match node:
        case ast.Include():
            return f"include {encode_string(node.path)}"
        case ast.SecrecyDecl():
            return "secrecy " + " < ".join(n.text for n in node.chain)
        case ast.IntegrityDecl():
            return "integrity " + " < ".join(n.text for n in node.chain)
        case ast.NamedLabel():
            return f"label {node.name.text} = {_label(node.expr)}"
        case ast.FileRule():
            options = [_label(node.label)]
            if node.excepts:
                options.append(f"except {_patterns(node.excepts)}")
            if node.writes_require is not None:
                options.append(f"writes require {node.writes_require.text}")
            return _aligned(_patterns(node.patterns), options, width)
        case ast.EndpointRule():
            options = []
            if node.clearance is not None:
                options.append(f"clearance {_label(node.clearance)}")
            if node.requires is not None:
                options.append(f"requires {node.requires.text}")
            if node.returns is not None:
                options.append(f"returns {node.returns.text}")
            if node.groups:
                options.append("as " + ", ".join(n.text for n in node.groups))
            if node.excepts:
                options.append(f"except {_patterns(node.excepts)}")
            return _aligned(_patterns(node.patterns) + _methods(node.methods), options, width)
        case ast.SecretDecl():
            to = f" to {_patterns(node.to)}" if node.to else ""
            key = f" key {encode_string(node.key.text)}" if node.key is not None else ""
            return f"secret {node.name.text} from {node.source} {encode_string(node.ref.text)}{key}{to}"
        case ast.Grant():
            return (("delegate " if node.delegate else "") + f"{node.op} {_patterns(node.patterns)}"
                    + _methods(node.methods))
        case ast.Holds():
            return "holds " + ", ".join(n.text for n in node.names)
        case ast.FlowRule():
            return f"{node.effect} {_label(node.source)} -> {_sink(node.sink)}{_message(node.message)}"
        case ast.CapabilityDecl():
            return (f"{node.kind} {node.name.text}: {_label(node.source)} -> {_sink(node.sink)}"
                    f"{_message(node.message)}")
    raise TypeError(f"cannot format {type(node).__name__}")


def _aligned(patterns: str, options: list[str], width: int) -> str:
    if not options:
        return patterns
    pad = " " * max(0, width - _width(patterns))
    return patterns + pad + COLUMN_GAP + " ".join(options)


def _methods(methods: tuple[ast.Name, ...]) -> str:
    """Methods follow the patterns they narrow (in the patterns' column: they are part of what is matched)."""
    return " methods " + ", ".join(m.text for m in methods) if methods else ""


def _label(expr: ast.LabelExpr) -> str:
    return " + ".join(t.text for t in expr.terms)


def _patterns(patterns) -> str:
    return ", ".join(encode_string(p.text) for p in patterns)


def _sink(sink: ast.Sink) -> str:
    if sink.kind == "group":
        return sink.group.text
    prefix = "file " if sink.kind == "file" else ""
    return prefix + _patterns(sink.patterns)


def _message(message: str | None) -> str:
    return "" if message is None else " " + encode_string(message)
