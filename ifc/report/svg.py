"""Draw a provenance path as an inline SVG graph.

A path is a list of hops `source --op--> target` whose nodes are `kind:name` (`file:.env`,
`subject:session`, `endpoint:smtp://smtp.gmail.com:587`). Nodes become labelled boxes coloured by kind,
hops become arrows labelled with the operation, laid out left to right and wrapped onto a new row when
the next box would pass `max_width`; the last hop — the operation that was denied — is drawn red and
dashed. Every string is escaped (the names come from the workload, i.e. from whoever wrote the files
and URLs the agent touched); nothing external is referenced, so the SVG can sit inside a standalone
HTML page or be saved on its own.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Sequence

from ifc.monitor.provenance import node_kind, node_name

# A box: a small caption with the node's kind over its name in a monospace font.
NAME_PX = 13
CHAR_W = 7.9  # advance of a 13 px monospace glyph (DejaVu Sans Mono: 0.602 em), rounded up
OP_CHAR_W = 7.2  # 12 px sans-serif, generous
BOX_H = 48
BOX_PAD = 14
MIN_BOX_W = 80
MAX_BOX_W = 330
MIN_GAP = 64
ROW_GAP = 64  # vertical room between rows for the wrapped arrow and its label
MARGIN = 10

COLOURS = {  # kind: (fill, stroke, caption)
    "file": ("#e8f0fe", "#1f4fb8", "#1f4fb8"),
    "subject": ("#fff3dc", "#a45a00", "#8a4b00"),
    "endpoint": ("#f3e8fd", "#6b21a8", "#6b21a8"),
    "other": ("#f1f3f5", "#555e68", "#444c55"),
}
EDGE = "#3d4650"
SANS = "DejaVu Sans, Helvetica, Arial, sans-serif"
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
DENIED = "#c0161b"
DENIED_NOTE = "\u2717 denied"  # under the last arrow

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean(text: object) -> str:
    """The text with what XML cannot carry made visible: a byte that was not UTF-8 in a name (a
    `surrogateescape` surrogate, see `ifc.monitor.events`) as `\\xNN`, any other lone surrogate as
    `\\uXXXX`, other characters XML forbids as U+FFFD. A name `b"caf\\xe9"` reads `caf\\xe9`, not `caf?`."""
    return _NOT_XML.sub("\ufffd", _SURROGATE.sub(_escaped, str(text)))


def _escaped(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def escape(text: object) -> str:
    """Escape for element content and quoted attributes, in HTML and XML alike."""
    return html.escape(clean(text), quote=True)


def one_line(text: object) -> str:
    return " ".join(str(text).split()) if any(c in str(text) for c in "\r\n\t") else str(text)


def text_width(text: str, char_w: float) -> float:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text) * char_w


def fit(text: str, max_px: float, char_w: float) -> str:
    """Shorten `text` in the middle with an ellipsis until it fits `max_px`."""
    if text_width(text, char_w) <= max_px:
        return text
    keep = max(int(max_px / char_w) - 1, 2)
    head = (keep + 1) // 2
    tail = keep - head
    return text[:head] + "\u2026" + (text[-tail:] if tail else "")


def _hop_tuple(hop) -> tuple[str, str, str]:
    if isinstance(hop, list | tuple):
        source, op, target = hop[:3]
    else:
        source, op, target = hop.source, hop.op, hop.target
    return str(source), str(op), str(target)


def path_svg(hops: Sequence, *, max_width: int = 920, denied_last: bool = True, title: str | None = None) -> str:
    """The SVG markup for `hops`, or "" for an empty path."""
    hops = [_hop_tuple(h) for h in hops]
    if not hops:
        return ""
    # The chain of nodes; `links[i]` joins node i-1 to node i: an op, or None where the path jumps.
    nodes: list[str] = []
    links: list[str | None] = []
    for source, op, target in hops:
        if not nodes or nodes[-1] != source:
            links.append(None)
            nodes.append(source)
        links.append(op)
        nodes.append(target)
    last_link = len(nodes) - 1

    # Lay the boxes out in rows.
    labels = [fit(one_line(node_name(n)), MAX_BOX_W - 2 * BOX_PAD, CHAR_W) for n in nodes]
    widths = [min(max(text_width(label, CHAR_W) + 2 * BOX_PAD, MIN_BOX_W), MAX_BOX_W) for label in labels]
    ops = [None if op is None else fit(one_line(op), 180, OP_CHAR_W) for op in links]
    boxes: list[tuple[float, int]] = []  # (x, row)
    x, row, right = float(MARGIN), 0, 0.0
    for i, w in enumerate(widths):
        if i:
            op = ops[i]
            if op is None:
                gap = 40.0
            else:
                below = DENIED_NOTE if denied_last and i == last_link else ""
                gap = max(MIN_GAP, text_width(op, OP_CHAR_W) + 30, text_width(below, OP_CHAR_W) + 30)
            if x + gap + w > max_width - MARGIN:
                row += 1
                x = float(MARGIN)
            else:
                x += gap
        boxes.append((x, row))
        x += w
        right = max(right, x)
    rows = row + 1
    width = right + MARGIN
    height = 2 * MARGIN + rows * BOX_H + (rows - 1) * ROW_GAP

    def top(r: int) -> float:
        return MARGIN + r * (BOX_H + ROW_GAP)

    text_path = " ".join([node_name(nodes[0])] + [f"--{op}--> {node_name(n)}" if op else f"... {node_name(n)}"
                                                  for op, n in zip(links[1:], nodes[1:], strict=True)])
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="ifc-path" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" font-family="{SANS}">',
           f"<title>{escape(title or 'provenance path: ' + text_path)}</title>"]

    # Edges first, so boxes sit on top of their ends.
    for i in range(1, len(nodes)):
        op = ops[i]
        (x0, r0), (x1, r1) = boxes[i - 1], boxes[i]
        denied = denied_last and i == last_link and op is not None
        colour = DENIED if denied else EDGE
        dash = ' stroke-dasharray="6 4"' if denied else ""
        if op is None:  # the path jumps: a dotted joint, no arrow
            if r0 == r1:
                y = top(r0) + BOX_H / 2
                out.append(f'<line x1="{x0 + widths[i - 1]:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" '
                           f'stroke="#9aa3ad" stroke-width="1.5" stroke-dasharray="2 4"/>')
            continue
        weight = "700" if denied else "600"
        if r0 == r1:
            y = top(r0) + BOX_H / 2
            start, end = x0 + widths[i - 1], x1 - 1
            out.append(f'<line x1="{start:.1f}" y1="{y:.1f}" x2="{end - 8:.1f}" y2="{y:.1f}" stroke="{colour}" '
                       f'stroke-width="2"{dash}/>')
            out.append(_arrowhead(end, y, "right", colour))
            out.append(f'<text x="{(start + end) / 2:.1f}" y="{y - 8:.1f}" text-anchor="middle" font-size="12" '
                       f'font-weight="{weight}" fill="{colour}">{escape(op)}</text>')
            if denied:
                out.append(f'<text x="{(start + end) / 2:.1f}" y="{y + 17:.1f}" text-anchor="middle" font-size="11" '
                           f'font-weight="700" fill="{colour}">{escape(DENIED_NOTE)}</text>')
        else:  # wrapped: down from the box, back along the gap between rows, down into the next box
            sx, sy = x0 + widths[i - 1] / 2, top(r0) + BOX_H
            ex, ey = x1 + widths[i] / 2, top(r1) - 1
            my = sy + ROW_GAP / 2
            points = f"{sx:.1f},{sy:.1f} {sx:.1f},{my:.1f} {ex:.1f},{my:.1f} {ex:.1f},{ey - 8:.1f}"
            out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
            out.append(_arrowhead(ex, ey, "down", colour))
            lx = (sx + ex) / 2
            shown = op + (" " + DENIED_NOTE if denied else "")
            lw = text_width(shown, OP_CHAR_W) + 12
            out.append(f'<rect x="{lx - lw / 2:.1f}" y="{my - 10:.1f}" width="{lw:.1f}" height="18" fill="#ffffff"/>')
            out.append(f'<text x="{lx:.1f}" y="{my + 4:.1f}" text-anchor="middle" font-size="12" '
                       f'font-weight="{weight}" fill="{colour}">{escape(shown)}</text>')

    for i, node in enumerate(nodes):
        x, r = boxes[i]
        y = top(r)
        kind = node_kind(node)
        fill, stroke, caption = COLOURS[kind]
        sink = denied_last and i == last_link
        out.append(f'<g class="node node-{kind}">')
        out.append(f"<title>{escape(kind + ': ' + node_name(node))}</title>")
        out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{widths[i]:.1f}" height="{BOX_H}" rx="7" fill="{fill}" '
                   f'stroke="{DENIED if sink else stroke}" stroke-width="{2.5 if sink else 1.5}"/>')
        out.append(f'<text x="{x + BOX_PAD:.1f}" y="{y + 16:.1f}" font-size="10" font-weight="700" '
                   f'letter-spacing="0.06em" fill="{caption}">{escape(kind.upper())}</text>')
        out.append(f'<text x="{x + BOX_PAD:.1f}" y="{y + 36:.1f}" font-size="{NAME_PX}" '
                   f'font-family="{MONO}" fill="#111">{escape(labels[i])}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def _arrowhead(x: float, y: float, direction: str, colour: str) -> str:
    if direction == "right":
        points = f"{x:.1f},{y:.1f} {x - 9:.1f},{y - 5:.1f} {x - 9:.1f},{y + 5:.1f}"
    else:
        points = f"{x:.1f},{y:.1f} {x - 5:.1f},{y - 9:.1f} {x + 5:.1f},{y - 9:.1f}"
    return f'<polygon points="{points}" fill="{colour}"/>'
