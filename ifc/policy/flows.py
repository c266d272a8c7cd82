"""May this data go there? Pure answers from a compiled policy, shared by the checker and the monitor.

Order of the questions, each one final:
  1. the sink must be known (an endpoint no rule names is denied: default deny);
  2. a matching `deny` rule always wins — no allow rule or capability overrides it;
  3. secrecy: every tag of the data must be within the sink's clearance, widened by matching `allow`
     rules and by declassification capabilities the subject holds;
  4. integrity: the data must be at least as trusted as the sink requires, lowered only by matching
     `allow` rules and endorsement capabilities the subject holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from ifc.diagnostics import Span
from ifc.match import Endpoint
from ifc.policy import hostcfg
from ifc.policy.labels import Label
from ifc.policy.model import Capability, EndpointRule, Policy, Sink, written


@dataclass(frozen=True)
class FlowVerdict:
    allowed: bool
    reason: str
    rule: str | None = None  # the rule that decided, as the user wrote it
    span: Span | None = None  # where that rule is
    message: str | None = None  # the policy author's words for the reviewer
    blocked_tags: frozenset[str] = frozenset()
    integrity_short: bool = False
    capabilities_used: tuple[str, ...] = field(default=())


def check_send(policy: Policy, data: Label, endpoint: Endpoint, held: Iterable[str] = (),
               may_declassify: Callable[[str], bool] | None = None) -> FlowVerdict:
    """`may_declassify(tag)` answers for a token's `declassify TAG to ENDPOINT` rights.

    A request (method and path) is decided by the last rule matching it. A connection (no path yet) whose
    requests different rules decide (`Policy.connection_rules`) is allowed only if the hook decides each of its
    requests again (`Endpoint.inspected`), and then if any of those rules would let the data go: each request
    is held to its own rule."""
    if endpoint.path is None:
        rules = policy.connection_rules(endpoint)
        if len(rules) > 1 or (rules and rules[0].reach(endpoint) == "some"):
            split = next(r for r in rules if r.restricted)
            if not endpoint.inspected:
                return FlowVerdict(False, f"requests to {endpoint} are decided by method and path "
                                   f"({endpoint_rule_text(policy, split)}), and this connection is not inspected: "
                                   "the hook decides requests only where it terminates TLS, for hosts a pattern "
                                   "with a path or methods names exactly", rule=endpoint_rule_text(policy, split),
                                   span=split.span, blocked_tags=data.secrecy)
            verdicts = [_send_by(policy, data, endpoint, rule, held, may_declassify) for rule in rules]
            return next((v for v in verdicts if v.allowed), verdicts[0])
    rule = policy.endpoint_rule(endpoint)
    if rule is None:
        return FlowVerdict(False, f"no endpoint rule names {endpoint}: unknown endpoints are denied",
                           rule="endpoints (no match)", blocked_tags=data.secrecy)
    return _send_by(policy, data, endpoint, rule, held, may_declassify)


def _send_by(policy: Policy, data: Label, endpoint: Endpoint, rule: EndpointRule, held: Iterable[str],
             may_declassify: Callable[[str], bool] | None) -> FlowVerdict:
    where = f"{endpoint}" + (f" [{', '.join(sorted(rule.groups))}]" if rule.groups else "")

    def on_sink(sink: Sink) -> bool:
        return sink.matches_endpoint(endpoint, rule)

    return _decide(policy, data, held, on_sink, where, rule.clearance, rule.requires,
                   endpoint_rule_text(policy, rule), rule.span, check_secrecy=True, may_declassify=may_declassify)


def check_write(policy: Policy, data: Label, path: str, held: Iterable[str] = ()) -> FlowVerdict:
    """Writes never lower a file's secrecy (its label floats up), so only deny rules and the file's
    integrity requirement can refuse them."""
    required, guard = policy.write_requirement(path)
    rule = guard or policy.file_label(path).rule
    rule_text = f"files: {rule.globs_text} {rule.label_text}" if rule else None
    if guard is not None:
        rule_text += f" writes require {policy.lattice.integrity_levels[required]}"
    verdict = _decide(policy, data, held, lambda sink: sink.matches_file(path), path, frozenset(), required,
                      rule_text, rule.span if rule else None, check_secrecy=False)
    if not verdict.allowed and verdict.message is None and guard is not None and verdict.integrity_short:
        kind = hostcfg.kind_of(path)  # host-executed configuration says who would run it, policy message or not
        if kind is not None:
            return replace(verdict, message=kind.message)
    if verdict.allowed and guard is not None:
        level = policy.lattice.integrity_levels[required]
        return FlowVerdict(True, f"writes to {path} require {level}; the data is "
                           f"{policy.lattice.integrity_levels[data.integrity]}", rule_text, guard.span,
                           capabilities_used=verdict.capabilities_used)
    return verdict


def _decide(policy: Policy, data: Label, held: Iterable[str], on_sink, where: str, clearance: frozenset[str],
            required: int, rule_text: str | None, rule_span: Span | None, check_secrecy: bool,
            may_declassify: Callable[[str], bool] | None = None) -> FlowVerdict:
    lattice = policy.lattice
    for flow in policy.deny_rules:
        # the data test first: it is a set comparison, the sink test may be a glob match
        if flow.source.matches(data) and on_sink(flow.sink):
            return FlowVerdict(False, f"`{flow.source_text}` data may not go to {where}", flow.describe(),
                               flow.span, flow.message, blocked_tags=flow.source.secrecy & data.secrecy,
                               integrity_short=flow.source.integrity is not None)
    allowed_tags = set(clearance)
    floor = required
    for flow in policy.allow_rules:
        if not on_sink(flow.sink):
            continue
        allowed_tags |= flow.source.secrecy
        if flow.source.integrity is not None:
            floor = min(floor, flow.source.integrity)
    used: list[str] = []
    caps: list[Capability] = [policy.capabilities[n] for n in sorted(set(held)) if n in policy.capabilities] \
        if held else []
    if check_secrecy:
        excess = set(data.secrecy - allowed_tags)
        for cap in caps:
            if cap.kind == "declassify" and excess & cap.source.secrecy and on_sink(cap.sink):
                excess -= cap.source.secrecy
                used.append(cap.name)
        if may_declassify is not None:
            for tag in sorted(excess):
                if may_declassify(tag):
                    excess.discard(tag)
                    used.append(f"token: declassify {tag}")
        if excess:
            return FlowVerdict(False, f"`{lattice.describe_tags(frozenset(excess))}` exceeds the clearance of "
                               f"{where} (`{lattice.describe_tags(clearance)}`)", rule_text, rule_span,
                               blocked_tags=frozenset(excess))
    if data.integrity < floor:
        for cap in caps:
            if cap.kind == "endorse" and on_sink(cap.sink) and cap.source.integrity is not None \
                    and data.integrity >= cap.source.integrity:
                used.append(cap.name)
                break
        else:
            return FlowVerdict(False, f"{where} requires `{lattice.integrity_levels[floor]}` data; this is "
                               f"`{lattice.integrity_levels[data.integrity]}`", rule_text, rule_span,
                               integrity_short=True)
    via = f" (declassified by `{'`, `'.join(used)}`)" if used else ""
    return FlowVerdict(True, f"`{lattice.describe(data)}` may go to {where}{via}", rule_text, rule_span,
                       capabilities_used=tuple(used))


def endpoint_rule_text(policy: Policy, rule: EndpointRule) -> str:
    lattice = policy.lattice
    parts = [", ".join(written(p.text) for p in rule.patterns),
             f"clearance {lattice.describe_tags(rule.clearance)}"]
    if rule.requires:
        parts.append(f"requires {lattice.integrity_levels[rule.requires]}")
    parts.append(f"returns {lattice.integrity_levels[rule.returns]}")
    return "endpoints: " + " ".join(parts)
