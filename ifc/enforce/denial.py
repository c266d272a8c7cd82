"""What the hook tells a refused client: a 403 an agent (and the person reading its transcript) can act on.

The first line is the monitor's reason, as before (`ifc: ...`); a flow denial adds what the run read that
raised its taint, the path from that read to this sink, whether this is the agent's own model (then the
model stays out of reach for the rest of the run, since a run's taint never goes down), and the steps a
reviewer can take for a later run — each one a command or policy change that exists and works: lowering a
label a write floated up (`ifc labels ... --lower`), the policy rule, a token with a declassification. The
monitor computes all of it (`Decision.cutoff`, `Decision.fix`); this module only renders it as text.
"""

from __future__ import annotations

from ifc.monitor.cutoff import what_was_read
from ifc.monitor.monitor import Decision
from ifc.report.summary import iso


def denial_lines(reason: str, decision: Decision | None) -> list[str]:
    """The body of a 403, one fact per line; the first line is also the `X-Ifc-Denied` header."""
    lines = [f"ifc: {reason}"]
    if decision is None or decision.allowed:
        return lines
    if decision.rule:
        where = f" at {decision.rule_span}" if decision.rule_span else ""
        lines.append(f"rule: {decision.rule}{where}")
    if decision.message:
        lines.append(f"policy says: {decision.message}")
    if decision.path:
        read = what_was_read(decision.cutoff.reads) if decision.cutoff is not None else \
            ", ".join(f"`{obj}` (`{part}`)" for part, obj in decision.tainted_by)
        lines.append(f"the run read: {read}")
        lines.append(f"path: {decision.explanation}")
    if decision.cutoff is not None:
        lines.append(f"this is the agent's model (`as model`): out of reach since {iso(decision.cutoff.since)} and "
                     "for the rest of this run, since a run's taint never goes down; stop, and tell the user what "
                     "was read and that a reviewer can allow it for a later run")
    fix = decision.fix or {}
    steps = list(fix.get("lower", ()))
    if fix.get("policy"):
        steps.append(f"policy: {fix['policy']}")
    if fix.get("mint"):
        steps.append(f"token for a later run: {fix['mint']}")
    named = [f"({n}: only a policy change lowers that)" for n in fix.get("named", ())]
    if decision.path and (steps or named):
        lines.append("a reviewer can allow this for a later run (this run's taint stays):")
        lines += [f"  {s}" for s in steps + named]
    if decision.event is not None:
        lines.append(f"event: {decision.event} in the run's log (`ifc report RUN_DIR`)")
    return lines
