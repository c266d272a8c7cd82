"""The report as one self-contained HTML page: inline CSS, inline SVG, no script, no network.

Every string from the log is escaped (`ifc.report.svg.escape`); a Content-Security-Policy meta tag
forbids scripts and every fetch as a second line of defence. Anchors link the summary to each denial,
so the page needs no JavaScript; the print stylesheet keeps colours and avoids splitting a denial.
"""

from __future__ import annotations

from ifc.report.load import Denial, Run
from ifc.report.summary import Summary, iso, meta_value, shortened, summarize
from ifc.report.svg import escape, path_svg

MAX_ALLOW_ROWS = 200

CSS = """
:root { --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --soft: #f6f8fa; --deny: #c0161b;
        --deny-soft: #fff0f0; --ok: #1a7f37; --code: #eef1f4; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.45;
       font: 15px/1.5 "DejaVu Sans", -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main, header { max-width: 1040px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 24px; border-bottom: 1px solid var(--line); padding-bottom: 12px; }
h1 { font-size: 26px; margin: 0 0 8px; }
h2 { font-size: 20px; margin: 32px 0 12px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
h4 { font-size: 13px; margin: 16px 0 6px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); }
code, pre { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; }
code { background: var(--code); border-radius: 4px; padding: 1px 5px; overflow-wrap: anywhere; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
      margin: 4px 0 10px; white-space: pre-wrap; overflow-wrap: anywhere; }
pre code { background: none; padding: 0; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 12px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td code { overflow-wrap: normal; }
td.wrap code, td.wrap { overflow-wrap: anywhere; }
td.t { white-space: nowrap; font-size: 13px; font-variant-numeric: tabular-nums; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; font-size: 14px; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0 16px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px; min-width: 110px;
        background: var(--soft); }
.card b { display: block; font-size: 24px; line-height: 1.2; }
.card span { color: var(--muted); font-size: 13px; }
.card.deny { border-color: var(--deny); background: var(--deny-soft); }
.card.deny b { color: var(--deny); }
.badge { display: inline-block; font-size: 11px; font-weight: 700; letter-spacing: .05em; padding: 1px 7px;
         border-radius: 10px; color: #fff; background: var(--muted); vertical-align: 2px; }
.badge.deny { background: var(--deny); }
.badge.label { background: #1f4fb8; }
.badge.declassify, .badge.endorse { background: #6b21a8; }
tr.deny td { background: var(--deny-soft); }
article.denial { border: 1px solid var(--line); border-left: 5px solid var(--deny); border-radius: 8px;
                 padding: 4px 18px 10px; margin: 18px 0; }
article.denial h3 { margin-top: 12px; }
article.denial h3 .num { color: var(--muted); font-weight: 400; }
dl.facts { display: grid; grid-template-columns: 9.5em 1fr; gap: 4px 14px; margin: 8px 0; }
dl.facts dt { color: var(--muted); font-weight: 600; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
blockquote { margin: 0; padding: 2px 10px; border-left: 3px solid var(--deny); background: var(--deny-soft); }
figure.graph { margin: 6px 0; padding: 10px; border: 1px solid var(--line); border-radius: 6px; overflow-x: auto; }
figure.graph svg { max-width: 100%; height: auto; display: block; }
figure.graph figcaption { margin-top: 6px; font-size: 13px; color: var(--muted); }
.fix p { margin: 6px 0 2px; font-weight: 600; }
.fix pre code { user-select: all; }
.none { color: var(--muted); font-style: italic; }
footer { max-width: 1040px; margin: 40px auto 24px; padding: 8px 24px; color: var(--muted); font-size: 12px;
         border-top: 1px solid var(--line); }
@media print {
  body { font-size: 11pt; }
  main, header, footer { max-width: none; padding: 0; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  article.denial, figure.graph, tr { break-inside: avoid; }
  h2, h3 { break-after: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def render_html(run: Run, summary: Summary | None = None) -> str:
    s = summary or summarize(run)
    title = f"ifc report: {run.name}"
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           '<meta name="referrer" content="no-referrer">',
           f"<title>{escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>"]
    out += _header(run, s)
    out.append("<main>")
    out += _cutoffs(run)
    out += _summary(run, s)
    out += _denials(run)
    out += _hostcfg(run)
    out += _declassifications(run)
    out += _tokens(run)
    out += _others(run)
    out += _allows(run)
    out.append("</main>")
    out.append("<footer>Generated by <code>ifc report</code> from the run's event log. Times are UTC.</footer>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def _c(value: object) -> str:
    return f"<code>{escape(value)}</code>"


def _prose(value: object) -> str:
    """Text from the log, with its `backticked` parts shown as code."""
    parts = str(value).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: show it as it is
        return escape(value)
    return "".join(_c(p) if i % 2 else escape(p) for i, p in enumerate(parts))


def _opt(value: str | None) -> str:
    return _c(value) if value else '<span class="none">not logged</span>'


def _header(run: Run, s: Summary) -> list[str]:
    meta = run.meta
    rows = [("run directory", _c(run.path))]
    if meta.get("policy"):
        digest = meta.get("policy_digest")
        rows.append(("policy", _c(meta["policy"]) + (f" <span title=\"sha256 {escape(digest)}\">sha256 "
                                                       f"{_c(digest[:16] + '…')}</span>" if digest else "")))
    if "agent" in meta:
        rows.append(("agent", _c(meta["agent"]) if meta["agent"] else '<span class="none">none (flows only)</span>'))
    if meta.get("source"):
        rows.append(("source", _c(meta["source"])))
    for key in sorted(set(meta) - {"policy", "policy_digest", "agent", "source"}):
        rows.append((key, _c(meta_value(key, meta[key]))))
    rows.append(("time span", f"{escape(iso(s.first_ts))} to {escape(iso(s.last_ts))}" if s.first_ts is not None
                 else '<span class="none">no events</span>'))
    out = ["<header>", f"<h1>ifc report: {_c(run.name)}</h1>", '<dl class="meta">']
    out += [f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in rows]
    out += ["</dl>", "</header>"]
    return out


def _summary(run: Run, s: Summary) -> list[str]:
    out = ['<section id="summary">', "<h2>Summary</h2>", '<div class="cards">']
    for kind, count in s.kind_counts:
        cls = " deny" if kind == "deny" and count else ""
        out.append(f'<div class="card{cls}"><b>{count}</b><span>{escape(kind)}</span></div>')
    out.append(f'<div class="card"><b>{s.allows_total}</b><span>allowed ({s.allows_distinct} distinct)</span></div>')
    out.append("</div>")
    out.append("<h3>Top denied targets</h3>")
    if s.top_denied:
        out.append('<table class="top"><thead><tr><th>target</th><th class="n">denials</th></tr></thead><tbody>')
        out += [f'<tr><td class="wrap">{_c(t)}</td><td class="n">{n}</td></tr>' for t, n in s.top_denied]
        out.append("</tbody></table>")
    else:
        out.append('<p class="none">No denials.</p>')
    out.append("<h3>Taint timeline</h3>")
    if s.timeline:
        out.append('<table class="timeline"><thead><tr><th class="n">#</th><th>time</th><th>subject</th><th>event</th>'
                   "<th>label</th><th>run taint</th></tr></thead><tbody>")
        denial_numbers = {d.id: i for i, d in enumerate(run.denials, 1)}
        for e in s.timeline:
            if e.kind == "deny":
                what = (f'<span class="badge deny">DENY</span> {_c(e.op)} {_c(e.target)} '
                        f'<a href="#denial-{e.id}">details #{denial_numbers.get(e.id, "")}</a>')
            elif e.kind == "label":
                what = f'<span class="badge label">LABEL</span> {_c(e.target)} raised by {_c(e.op)}'
            else:
                what = (f'<span class="badge {escape(e.kind)}">{escape(e.kind.upper())}</span> {_c(e.op)} '
                        f"{_c(e.target)}: {_prose(e.text)}")
            cls = ' class="deny"' if e.kind == "deny" else ""
            out.append(f'<tr{cls}><td class="n">{e.id}</td><td class="t">{escape(iso(e.ts))}</td>'
                       f'<td>{_c(e.subject)}</td><td class="wrap">{what}</td><td>{_opt(e.label)}</td>'
                       f"<td>{_opt(e.taint)}</td></tr>")
        out.append("</tbody></table>")
    else:
        out.append('<p class="none">No label changes, declassifications or denials.</p>')
    out.append("</section>")
    return out


def _denials(run: Run) -> list[str]:
    out = ['<section id="denials">', f"<h2>Denials ({len(run.denials)})</h2>"]
    if not run.denials:
        out += ['<p class="none">Nothing was denied in this run.</p>', "</section>"]
        return out
    for number, d in enumerate(run.denials, 1):
        out += _denial(number, d)
    out.append("</section>")
    return out


def _denial(number: int, d: Denial) -> list[str]:
    facts = [
        ("when", f"{escape(iso(d.ts))} <span class=\"none\">(event {d.id})</span>"),
        ("process", _process(d.pid, d.cmdline) + (f' <span class="none">(held the connection the hook saw from '
                                                   f'{_c(d.relayed_from)})</span>' if d.relayed_from else "")),
        *([("guest command", _c(d.guest[0]) + ' <span class="none">(matched by time'
            + (f"; also running: {', '.join(_c(shortened(g)) for g in d.guest[1:])}" if d.guest[1:] else "")
            + ")</span>")]
          if d.guest else []),
        ("what", f"subject {_c(d.subject)} asked to {_c(d.op)} {_c(d.target)}"),
        ("why", _prose(d.reason)),
    ]
    if d.rule:
        rule = _c(d.rule) + (f" at {_c(d.rule_span)}" if d.rule_span else "")
        if d.rule_source and d.rule_source != d.rule:
            rule += f"<br>policy line: {_c(d.rule_source)}"
        facts.append(("rule", rule))
    else:
        facts.append(("rule", '<span class="none">none named</span>'))
    if d.message:
        facts.append(("policy says", f"<blockquote>{escape(d.message)}</blockquote>"))
    facts.append(("object label", _opt(d.object_label)))
    facts.append(("run taint", _opt(d.taint)))
    if d.token_id or d.token_block is not None:
        token = _c(d.token_id) if d.token_id else '<span class="none">unknown token</span>'
        if d.token_block is not None:
            token += f", block {d.token_block}"
        facts.append(("token", token))
    out = [f'<article class="denial" id="denial-{d.id}">',
           f'<h3><span class="num">#{number}</span> <span class="badge deny">DENY</span> {_c(d.op)} {_c(d.target)}'
           f" by {_c(d.subject)}</h3>", '<dl class="facts">']
    out += [f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in facts]
    out.append("</dl>")
    out.append("<h4>Provenance path</h4>")
    if d.path:
        out += ['<figure class="graph">', path_svg(d.path),
                f"<figcaption>{_c(d.explanation)}</figcaption>", "</figure>"]
    else:
        out.append('<p class="none">None recorded: this denial is about authority (a grant or token), '
                   "not a flow of data.</p>")
    out.append('<h4>Minimal fix</h4><div class="fix">')
    if d.fix_policy:
        out.append(f"<p>Policy</p><pre><code>{escape(d.fix_policy)}</code></pre>")
    if d.fix_mint:
        out.append(f"<p>Or a scoped, expiring token</p><pre><code>{escape(d.fix_mint)}</code></pre>")
    out += _lowering(d.fix_lower, d.fix_named)
    if not d.fix_policy and not d.fix_mint and not d.fix_lower:
        out.append('<p class="none">None suggested.</p>')
    out += ["</div>", "</article>"]
    return out


def _lowering(lower: tuple[str, ...], named: tuple[str, ...]) -> list[str]:
    out = []
    if lower:
        out.append("<p>Or, where a write floated the label up, a reviewer lowers it (in force from the next run)</p>"
                   f"<pre><code>{escape(chr(10).join(lower))}</code></pre>")
    if named:
        out.append(f"<p>By the policy (only a policy change lowers these): {'; '.join(_prose(n) for n in named)}</p>")
    return out


def _cutoffs(run: Run) -> list[str]:
    """First thing in the report: after this the agent could not reach its model."""
    if not run.cutoffs:
        return []
    out = ['<section id="cutoff">', "<h2>The agent lost its model</h2>"]
    for c in run.cutoffs:
        out.append(f'<p class="deny"><strong>{escape(iso(c.ts))}</strong>: {_c(c.endpoint)} out of reach for the '
                   f"rest of the run (event {c.id}) because {_prose(c.reason)}</p>")
        if c.path:
            out += ['<figure class="graph">', path_svg(c.path), f"<figcaption>{_c(c.explanation)}</figcaption>",
                    "</figure>"]
        out += _lowering(c.fix_lower, c.fix_named)
    out.append("</section>")
    return out


def _process(pid: int | None, cmdline: str | None) -> str:
    if pid is None and not cmdline:
        return '<span class="none">unknown</span>'
    who = f"pid {pid}" if pid is not None else '<span class="none">pid unknown</span>'
    return f"{who}, {_c(cmdline)}" if cmdline else who


_COLUMN_CLASS = {"#": "n", "count": "n", "time": "t", "first": "t", "last": "t", "target": "wrap", "object": "wrap",
                 "via": "wrap", "policy says": "wrap", "reason": "wrap", "token": "wrap", "process": "wrap",
                 "guest command": "wrap"}


def _table(title: str, anchor: str, headers: list[str], rows: list[list[str]], note: str = "") -> list[str]:
    classes = [f' class="{_COLUMN_CLASS[h]}"' if h in _COLUMN_CLASS else "" for h in headers]
    out = [f'<section id="{anchor}">', f"<h2>{escape(title)}</h2>", "<table><thead><tr>"]
    out += [f"<th{cls}>{escape(h)}</th>" for h, cls in zip(headers, classes, strict=True)]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td{cls}>{cell}</td>" for cls, cell in zip(classes, row, strict=True)) + "</tr>")
    out.append("</tbody></table>")
    if note:
        out.append(f'<p class="none">{escape(note)}</p>')
    out.append("</section>")
    return out


def _declassifications(run: Run) -> list[str]:
    if not run.declassifications:
        return []
    rows = [[str(e.id), escape(iso(e.ts)), escape(e.kind), _c(e.subject), _c(e.op), _c(e.target), escape(e.reason),
             escape(e.message or "")] for e in run.declassifications]
    return _table(f"Declassifications and endorsements ({len(rows)})", "declassifications",
                  ["#", "time", "kind", "subject", "op", "target", "via", "policy says"], rows)


def _hostcfg(run: Run) -> list[str]:
    if not run.hostcfg:
        return []
    rows = [[str(e.id), escape(iso(e.ts)), "allowed" if e.allowed else "<strong>denied</strong>", _c(e.subject),
             _c(e.op), _c(e.target), escape(e.message or e.reason), escape(e.taint or "not logged")]
            for e in run.hostcfg]
    return _table(f"Changes to host-executed configuration ({len(rows)})", "hostcfg",
                  ["#", "time", "decision", "subject", "op", "target", "why", "run taint"], rows)


def _tokens(run: Run) -> list[str]:
    if not run.tokens:
        return []
    rows = [[str(t.id), escape(iso(t.ts)), _c(t.subject), _c(t.token_id), _process(t.pid, t.cmdline)]
            for t in run.tokens]
    return _table(f"Token uses ({len(rows)})", "tokens", ["#", "time", "subject", "token", "process"], rows)


def _others(run: Run) -> list[str]:
    if not run.others:
        return []
    rows = [[str(e.id), escape(iso(e.ts)), _c(e.kind), _c(e.subject), _c(e.op), _c(e.target), escape(e.reason)]
            for e in run.others]
    return _table(f"Other events ({len(rows)})", "others", ["#", "time", "kind", "subject", "op", "target", "reason"],
                  rows)


def _allows(run: Run) -> list[str]:
    if not run.allows:
        return ['<section id="allows">', "<h2>Allowed operations</h2>", '<p class="none">None logged.</p>',
                "</section>"]
    ordered = sorted(run.allows, key=lambda a: (-a.count, a.first_ts))
    rows = [[_c(a.subject), _c(a.op), _c(a.object), str(a.count), escape(iso(a.first_ts)), escape(iso(a.last_ts))]
            for a in ordered[:MAX_ALLOW_ROWS]]
    hidden = len(ordered) - len(rows)
    return _table(f"Allowed operations ({len(ordered)} distinct)", "allows",
                  ["subject", "op", "object", "count", "first", "last"], rows,
                  note=f"{hidden} more in --format json." if hidden > 0 else "")
