"""The report as JSON, for tools: everything the other formats show, with raw timestamps kept.

`"report": 1` is the document's version; fields are only ever added under it.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from ifc.report.load import Run
from ifc.report.summary import Summary, iso, summarize

VERSION = 1


def report_dict(run: Run, summary: Summary | None = None) -> dict:
    s = summary or summarize(run)
    return {
        "report": VERSION,
        "run": {"path": run.path, "name": run.name, "meta": dict(run.meta)},
        "summary": {
            "counts": dict(s.kind_counts),
            "allows": {"total": s.allows_total, "distinct": s.allows_distinct},
            "top_denied_targets": [{"target": t, "denials": n} for t, n in s.top_denied],
            "first": iso(s.first_ts) if s.first_ts is not None else None,
            "last": iso(s.last_ts) if s.last_ts is not None else None,
            "timeline": [_timed(asdict(e)) for e in s.timeline],
        },
        "denials": [_denial(d) for d in run.denials],
        "label_changes": [_timed(asdict(e)) for e in run.labels],
        "declassifications": [_timed(asdict(e)) for e in run.declassifications],
        "token_uses": [_timed(asdict(e)) for e in run.tokens],
        "host_config_changes": [_timed(asdict(e)) for e in run.hostcfg],
        "model_cutoffs": [{**_timed(asdict(c)), "path": [[h.source, h.op, h.target] for h in c.path],
                           "explanation": c.explanation} for c in run.cutoffs],
        "other_events": [_timed(asdict(e)) for e in run.others],
        "allows": [{**asdict(a), "first": iso(a.first_ts), "last": iso(a.last_ts)} for a in run.allows],
    }


def render_json(run: Run, summary: Summary | None = None) -> str:
    return json.dumps(report_dict(run, summary), indent=2) + "\n"


def _timed(values: dict) -> dict:
    return {"id": values.pop("id"), "time": iso(values["ts"]), **values}


def _denial(d) -> dict:
    return {
        "id": d.id,
        "time": iso(d.ts),
        "ts": d.ts,
        "process": {"pid": d.pid, "cmdline": d.cmdline},
        "relayed_from": d.relayed_from,
        "guest_commands": list(d.guest),
        "subject": d.subject,
        "op": d.op,
        "target": d.target,
        "reason": d.reason,
        "rule": d.rule,
        "rule_span": d.rule_span,
        "rule_source": d.rule_source,
        "message": d.message,
        "object_label": d.object_label,
        "taint": d.taint,
        "token": None if d.token_id is None and d.token_block is None else {"id": d.token_id,
                                                                             "block": d.token_block},
        "path": [[h.source, h.op, h.target] for h in d.path],
        "explanation": d.explanation,
        "fix": {k: v for k, v in (("policy", d.fix_policy), ("mint", d.fix_mint), ("lower", list(d.fix_lower) or None),
                                  ("named", list(d.fix_named) or None)) if v is not None},
    }
