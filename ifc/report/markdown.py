"""The report as Markdown: readable raw in a terminal, and safe when a forge renders it.

Strings from the log go into code spans and fenced blocks whose fences are longer than any backtick
run inside them, so nothing in a path or host name can become a link, an HTML tag or a new block;
prose fields (reasons, messages) are flattened to one line with `<`, `\\`, entity-like `&` and a `]`
that would close a link backslash-escaped.
"""

from __future__ import annotations

import re

from ifc.monitor.provenance import node_name
from ifc.report.load import Denial, Run
from ifc.report.summary import Summary, iso, meta_value, process, shortened, summarize
from ifc.report.svg import clean

MAX_ALLOW_ROWS = 50
_ENTITY = re.compile(r"&(?=#?\w+;)")


def render_markdown(run: Run, summary: Summary | None = None) -> str:
    s = summary or summarize(run)
    out: list[str] = [f"# ifc report: {code(run.name)}", ""]
    out += _meta(run, s)
    out += _cutoffs(run)
    out += ["", "## Summary", "", "| kind | events |", "| --- | ---: |"]
    out += [f"| {kind} | {count} |" for kind, count in s.kind_counts]
    out.append(f"| allow (aggregated) | {s.allows_total} decisions over {s.allows_distinct} "
               "(subject, op, object) |")
    out += ["", "### Top denied targets", ""]
    if s.top_denied:
        out += ["| target | denials |", "| --- | ---: |"]
        out += [f"| {cell_code(target)} | {n} |" for target, n in s.top_denied]
    else:
        out.append("No denials.")
    out += ["", "### Taint timeline", ""]
    if s.timeline:
        out += ["| # | time | subject | event | label | run taint |", "| ---: | --- | --- | --- | --- | --- |"]
        for e in s.timeline:
            if e.kind == "deny":
                what = f"**deny** {cell_code(e.op)} {cell_code(e.target)}"
            elif e.kind == "label":
                what = f"label of {cell_code(e.target)} raised by {cell_code(e.op)}"
            else:
                what = f"{e.kind} {cell_code(e.op)} {cell_code(e.target)}: {cell_text(e.text)}"
            out.append(f"| {e.id} | {iso(e.ts)} | {cell_code(e.subject)} | {what} | {_opt(e.label, cell=True)} "
                       f"| {_opt(e.taint, cell=True)} |")
    else:
        out.append("No label changes, declassifications or denials.")
    out += ["", f"## Denials ({len(run.denials)})", ""]
    if not run.denials:
        out.append("Nothing was denied in this run.")
    for number, denial in enumerate(run.denials, 1):
        out += _denial(number, denial)
    while out and out[-1] == "":
        out.pop()
    out += _hostcfg(run)
    out += _declassifications(run)
    out += _tokens(run)
    out += _others(run)
    out += _allows(run)
    return "\n".join(out).rstrip("\n") + "\n"


def _meta(run: Run, s: Summary) -> list[str]:
    meta = run.meta
    lines = [f"- **run directory:** {code(run.path)}"]
    policy = meta.get("policy")
    if policy:
        digest = meta.get("policy_digest")
        lines.append(f"- **policy:** {code(policy)}" + (f" (sha256 {code(digest[:16])}…)" if digest else ""))
    if "agent" in meta:
        lines.append(f"- **agent:** {code(meta['agent']) if meta['agent'] else 'none (flows only)'}")
    if meta.get("source"):
        lines.append(f"- **source:** {code(meta['source'])}")
    for key in sorted(set(meta) - {"policy", "policy_digest", "agent", "source"}):
        lines.append(f"- **{text(key)}:** {code(meta_value(key, meta[key]))}")
    lines.append(f"- **time span:** {iso(s.first_ts)} to {iso(s.last_ts)}" if s.first_ts is not None
                 else "- **time span:** no events")
    return lines


def _denial(number: int, d: Denial) -> list[str]:
    out = [f"### {number}. {code(d.subject)} {code(d.op)} {code(d.target)}: denied", ""]
    out.append(f"- **when:** {iso(d.ts)} (event {d.id})")
    out.append(f"- **process:** {_process(d.pid, d.cmdline)}"
               + (f" (held the connection the hook saw from {code(d.relayed_from)})" if d.relayed_from else ""))
    if d.guest:
        also = f"; also running: {', '.join(code(shortened(g)) for g in d.guest[1:])}" if d.guest[1:] else ""
        out.append(f"- **guest command:** {code(d.guest[0])} (matched by time{also})")
    out.append(f"- **what:** subject {code(d.subject)} asked to {code(d.op)} {code(d.target)}")
    out.append(f"- **why:** {text(d.reason)}")
    if d.rule:
        rule = f"- **rule:** {code(d.rule)}" + (f" at {code(d.rule_span)}" if d.rule_span else "")
        out.append(rule)
        if d.rule_source and d.rule_source != d.rule:
            out.append(f"  - policy line: {code(d.rule_source)}")
    else:
        out.append("- **rule:** none named")
    if d.message:
        out.append(f"- **policy says:** \u201c{text(d.message)}\u201d")
    out.append(f"- **object label:** {_opt(d.object_label)}")
    out.append(f"- **run taint:** {_opt(d.taint)}")
    if d.token_id or d.token_block is not None:
        block = f", block {d.token_block}" if d.token_block is not None else ""
        out.append(f"- **token:** {code(d.token_id) if d.token_id else 'unknown'}{block}")
    out += ["", "**Provenance path**", ""]
    if d.path:
        out += fenced(d.explanation if len(d.explanation) <= 100 else _hop_lines(d), "text")
    else:
        out.append("None recorded: this denial is about authority (a grant or token), not a flow of data.")
    out += ["", "**Minimal fix**", ""]
    if d.fix_policy:
        out += ["Policy:", "", *fenced(d.fix_policy, "text"), ""]
    if d.fix_mint:
        out += ["Or a scoped, expiring token:", "", *fenced(d.fix_mint, "sh"), ""]
    out += _lowering(d.fix_lower, d.fix_named)
    if not d.fix_policy and not d.fix_mint and not d.fix_lower:
        out += ["None suggested.", ""]
    return out


def _lowering(lower: tuple[str, ...], named: tuple[str, ...]) -> list[str]:
    out = []
    if lower:
        out += ["Or, where a write floated the label up, a reviewer lowers it (in force from the next run):", "",
                *fenced("\n".join(lower), "sh"), ""]
    if named:
        out += [f"By the policy (only a policy change lowers these): {'; '.join(text(n) for n in named)}", ""]
    return out


def _cutoffs(run: Run) -> list[str]:
    """First thing after the header: the agent could not think any more after this."""
    if not run.cutoffs:
        return []
    out = ["", "## The agent lost its model", ""]
    for c in run.cutoffs:
        out.append(f"- **{iso(c.ts)}**: {code(c.endpoint)} out of reach for the rest of the run (event {c.id}) "
                   f"because {text(c.reason)}")
        if c.path:
            out += ["", *fenced(c.explanation, "text"), ""]
        out += _lowering(c.fix_lower, c.fix_named)
    while out[-1] == "":
        out.pop()
    return out


def _hop_lines(d: Denial) -> str:
    """A long path, one hop per line."""
    lines = [node_name(d.path[0].source)]
    last = d.path[0].source
    for hop in d.path:
        if hop.source != last:
            lines.append(f"  ... {node_name(hop.source)}")
        lines.append(f"  --{hop.op}--> {node_name(hop.target)}")
        last = hop.target
    return "\n".join(lines)


def _section(title: str, headers: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    """A titled table (nothing when there are no rows); the first column, `#`, is right-aligned."""
    if not rows:
        return []
    rule = ["---:"] + ["---"] * (len(headers) - 1)
    return ["", f"## {title} ({len(rows)})", "", f"| {' | '.join(headers)} |", f"| {' | '.join(rule)} |",
            *(f"| {' | '.join(row)} |" for row in rows)]


def _declassifications(run: Run) -> list[str]:
    return _section("Declassifications and endorsements",
                    ("#", "time", "kind", "subject", "op", "target", "via", "policy says"),
                    [[str(e.id), iso(e.ts), e.kind, cell_code(e.subject), cell_code(e.op), cell_code(e.target),
                      cell_text(e.reason), cell_text(e.message or "")] for e in run.declassifications])


def _hostcfg(run: Run) -> list[str]:
    return _section("Changes to host-executed configuration",
                    ("#", "time", "decision", "subject", "op", "target", "why", "run taint"),
                    [[str(e.id), iso(e.ts), "allowed" if e.allowed else "**denied**", cell_code(e.subject),
                      cell_code(e.op), cell_code(e.target), cell_text(e.message or e.reason), _opt(e.taint, cell=True)]
                     for e in run.hostcfg])


def _tokens(run: Run) -> list[str]:
    return _section("Token uses", ("#", "time", "subject", "token", "process"),
                    [[str(t.id), iso(t.ts), cell_code(t.subject), cell_code(t.token_id),
                      cell_text(process(t.pid, t.cmdline))] for t in run.tokens])


def _others(run: Run) -> list[str]:
    return _section("Other events", ("#", "time", "kind", "subject", "op", "target", "reason"),
                    [[str(e.id), iso(e.ts), cell_code(e.kind), cell_code(e.subject), cell_code(e.op),
                      cell_code(e.target), cell_text(e.reason)] for e in run.others])


def _allows(run: Run) -> list[str]:
    out = ["", f"## Allowed operations ({len(run.allows)} distinct)", ""]
    if not run.allows:
        return [*out, "None logged."]
    out += ["| subject | op | object | count | first | last |", "| --- | --- | --- | ---: | --- | --- |"]
    rows = sorted(run.allows, key=lambda a: (-a.count, a.first_ts))
    for a in rows[:MAX_ALLOW_ROWS]:
        out.append(f"| {cell_code(a.subject)} | {cell_code(a.op)} | {cell_code(a.object)} | {a.count} | "
                   f"{iso(a.first_ts)} | {iso(a.last_ts)} |")
    if len(rows) > MAX_ALLOW_ROWS:
        out += ["", f"{len(rows) - MAX_ALLOW_ROWS} more in `--format json`."]
    return out


# ------------------------------------------------------------------------------------------- escaping


def _opt(value: str | None, *, cell: bool = False) -> str:
    if not value:
        return "not logged"
    return cell_code(value) if cell else code(value)


def _process(pid: int | None, cmdline: str | None) -> str:
    if pid is None and not cmdline:
        return "unknown"
    who = f"pid {pid}" if pid is not None else "pid unknown"
    return f"{who}, {code(cmdline)}" if cmdline else who


def _flat(value: object) -> str:
    return " ".join(clean(value).split())


def code(value: object) -> str:
    """An inline code span that shows `value` literally, whatever backticks it holds."""
    body = _flat(value)
    if not body:
        return "` `"
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if body.startswith("`") or body.endswith("`") or longest else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def cell_code(value: object) -> str:
    return code(value).replace("|", "\\|")


def text(value: object) -> str:
    """Prose from the log on one line, with what could start a tag, link or entity escaped."""
    body = _flat(value).replace("\\", "\\\\")
    body = _ENTITY.sub("\\&", body)
    body = body.replace("<", "\\<")
    return re.sub(r"\](?=[(\[])", r"\\]", body)  # `[a](b)` and `[a][b]` stay text


def cell_text(value: object) -> str:
    return text(value).replace("|", "\\|")


def fenced(value: object, info: str = "") -> list[str]:
    body = clean(value).replace("\r\n", "\n").replace("\r", "\n")
    longest = max((len(run) for run in re.findall(r"`{3,}", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{info}", *body.split("\n"), fence]
