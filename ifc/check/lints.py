"""Lint stages: names nobody uses, rules that never decide, patterns that match too much, grants and
secrets that cannot work as written, and rules that contradict each other."""

from __future__ import annotations

from collections.abc import Iterator

from ifc.diagnostics import Diagnostic, Related, Severity, error, warning
from ifc.glob_sets import SearchTooLarge, witness_avoiding
from ifc.lang import ast
from ifc.lang.lower import encode_string as q
from ifc.match import EndpointPattern, Glob, PatternError
from ifc.monitor.cutoff import is_model
from ifc.policy.flows import check_send, check_write
from ifc.policy.hostcfg import HOST_CONFIG
from ifc.policy.labels import Label
from ifc.policy.model import Agent

from . import CheckContext


def _walk(files: tuple[ast.PolicyFile, ...]) -> Iterator[object]:
    for file in files:
        for item in file.items:
            yield item
            if isinstance(item, ast.LabelsBlock):
                yield from item.decls
            elif isinstance(item, ast.FilesBlock | ast.EndpointsBlock):
                yield from item.rules


def _agents(ctx: CheckContext) -> Iterator[tuple[ast.AgentBlock, Agent]]:
    """Each agent block of the checked files with the compiled agent it became (blocks that did not compile are
    reported by the compiler, not here)."""
    for node in _walk(ctx.files):
        if isinstance(node, ast.AgentBlock) and node.name.text in ctx.policy.agents:
            yield node, ctx.policy.agents[node.name.text]


def _label_refs(node) -> list[ast.Name]:
    refs: list[ast.Name] = []
    if isinstance(node, ast.FileRule):
        refs += node.label.terms
        refs += [node.writes_require] if node.writes_require else []
    elif isinstance(node, ast.EndpointRule):
        refs += node.clearance.terms if node.clearance else []
        refs += [n for n in (node.requires, node.returns) if n]
    elif isinstance(node, ast.FlowRule | ast.CapabilityDecl):
        refs += node.source.terms
    elif isinstance(node, ast.NamedLabel):
        refs += node.expr.terms
    return refs


def unused_names(ctx: CheckContext) -> list[Diagnostic]:
    used = {ref.text for node in _walk(ctx.files) for ref in _label_refs(node)}
    held = {n.text for node in _walk(ctx.files) if isinstance(node, ast.AgentBlock)
            for item in node.items if isinstance(item, ast.Holds) for n in item.names}
    out = []
    for node in _walk(ctx.files):
        if isinstance(node, ast.SecrecyDecl) and not any(n.text in used for n in node.chain):
            names = " < ".join(n.text for n in node.chain)
            out.append(warning("unused-label", f"secrecy `{names}` is never used", node.chain[0].span,
                               help="label files or endpoints with it, or remove the declaration"))
        elif isinstance(node, ast.NamedLabel) and node.name.text not in used:
            out.append(warning("unused-label", f"label `{node.name.text}` is never used", node.name.span,
                               help="use it in a file rule or flow rule, or remove it"))
        elif isinstance(node, ast.CapabilityDecl) and node.name.text not in held:
            out.append(Diagnostic("unheld-capability", Severity.NOTE,
                                  f"no agent holds `{node.name.text}`; only a token minted with it can use it",
                                  node.name.span))
    return out


def file_rule_overlaps(ctx: CheckContext) -> list[Diagnostic]:
    """Shadowed rules (a later rule covers every path) and later rules that lower an earlier label.

    Exact: globs compile to automata, so "covers" and "overlaps" are set questions, not guesses.
    """
    policy = ctx.policy
    out = []
    rules = policy.file_rules
    for i, earlier in enumerate(rules):
        for later in rules[i + 1:]:
            if all(g.within(later.globs, later.excepts) for g in earlier.globs):
                out.append(warning(
                    "shadowed-rule", f"this rule never decides: the later rule at line {later.span.line} "
                    "matches every path it does", earlier.span,
                    help="remove it, or move it after the broader rule (the last matching rule wins)",
                    related=[Related(later.span, "this later rule wins")]))
                break
            # Lowering the catch-all default (`"**" internal`, then `"docs/**" public`) is the point of
            # ordering, and a later label that adds a tag is a deliberate refinement; a later rule that
            # only takes tags away from a specific earlier one is how secrets end up public.
            if catch_all(earlier) or not later.label.secrecy < earlier.label.secrecy:
                continue
            witness = _shared_path(earlier, later)
            if witness is not None:
                out.append(warning(
                    "overlapping-globs",
                    f"the later rule at line {later.span.line} relabels some `{earlier.label_text}` files as "
                    f"`{later.label_text}` (e.g. `{witness}`)", later.span,
                    help=f"add `except {q(witness)}` to the later rule, or move the `{earlier.label_text}` rule "
                    "after it (put the most secret rules last)",
                    related=[Related(earlier.span, f"these files are `{earlier.label_text}` here")]))
    return out


def catch_all(rule) -> bool:
    return any(g.matches_everything for g in rule.globs)


def _shared_path(earlier, later) -> str | None:
    for g in earlier.globs:
        for h in later.globs:
            witness = g.overlap(h)
            if witness is not None and earlier.matches(witness) and later.matches(witness):
                return witness
    return None


def broad_endpoints(ctx: CheckContext) -> list[Diagnostic]:
    """Patterns that match everything, and endpoint rules a later rule makes dead (last match wins)."""
    out = []
    rules = ctx.policy.endpoint_rules
    for i, earlier in enumerate(rules):
        for later in rules[i + 1:]:
            if not later.excepts and all(any(lp.covers(p) for lp in later.patterns) for p in earlier.patterns):
                out.append(warning(
                    "shadowed-rule", f"this endpoint rule never decides: the later rule at line {later.span.line} "
                    "matches every endpoint it does", earlier.span,
                    help="remove it, or move it after the broader rule (the last matching rule wins)",
                    related=[Related(later.span, "this later rule wins")]))
                break
    for rule in ctx.policy.endpoint_rules:
        for pattern in rule.patterns:
            if _any_host(pattern):
                out.append(warning("broad-endpoint", f"endpoint pattern `{pattern.text}` matches every host"
                                   + ("" if pattern.host == "*" else " in a top-level domain"), rule.span,
                                   help="name the hosts the agent needs; unknown endpoints are denied anyway"))
    return out


def _any_host(pattern: EndpointPattern) -> bool:
    """Every host, every address, or every host in a top-level domain (`*.com`)."""
    return pattern.host in ("*", "::/0", "0.0.0.0/0") or _tld_wildcard(pattern)


def _tld_wildcard(pattern: EndpointPattern) -> bool:
    return pattern.host.startswith("*") and pattern.host.lstrip("*.").count(".") == 0


def grants(ctx: CheckContext) -> list[Diagnostic]:
    policy = ctx.policy
    out = []
    protected = [r for r in policy.file_rules if r.writes_require is not None]
    for node in _walk(ctx.files):
        if not isinstance(node, ast.AgentBlock):
            continue
        for item in node.items:
            if not isinstance(item, ast.Grant):
                continue
            for pattern in item.patterns:
                out.extend(_grant_findings(policy, node.name.text, item, pattern, protected))
    return out


def _grant_findings(policy, agent: str, item: ast.Grant, pattern: ast.Pattern, protected) -> list[Diagnostic]:
    try:
        if item.op == "connect":
            endpoint = EndpointPattern.parse(pattern.text)
            if _any_host(endpoint):  # and never suggest naming `*` in `endpoints { }` to make it usable
                what = "anywhere" if endpoint.matches_everything else f"to every host `{pattern.text}` covers"
                return [warning("broad-grant", f"agent `{agent}` may connect {what}", pattern.span,
                                help="list the endpoints it needs")]
            if policy.endpoint_rule(endpoint.example().connection) is None:
                return [warning("unusable-grant", f"`connect {q(pattern.text)}` can never be used: no endpoint rule "
                                "names it, so the monitor denies every connection", pattern.span,
                                help=f"add `{q(pattern.text)}` with a clearance to `endpoints {{ }}`, "
                                "or drop the grant")]
            return []
        glob = Glob.compile(pattern.text)
    except PatternError:
        return []  # reported by the compiler
    if item.op in ("write", "create", "delete") and glob.matches_everything:
        hit = [r for r in protected if any(glob.overlap(g) is not None for g in r.globs)]
        where = f", including `{hit[0].globs[0].text}` which requires trusted writes" if hit else ""
        return [warning("broad-grant", f"agent `{agent}` may {item.op} every file{where}", pattern.span,
                        help="grant the directories it works in, e.g. `src/**`, `tests/**`")]
    if item.op == "exec" and glob.matches_everything:
        return [warning("broad-grant", f"agent `{agent}` may execute any file", pattern.span,
                        help='grant the tool directories it needs, e.g. `"/usr/bin/**"`')]
    return []


def secrets(ctx: CheckContext) -> list[Diagnostic]:
    policy = ctx.policy
    out = []
    granted = [(a, EndpointPattern.parse(g.pattern)) for a in policy.agents_ for g in a.grants if g.op == "connect"]
    for secret in policy.secrets_:
        if not secret.endpoints:
            out.append(warning("secret-no-endpoint", f"secret `{secret.name}` may be sent nowhere", secret.span,
                               help=f'bind it: `secret {secret.name} from {secret.source} {q(secret.ref)} '
                               'to "https://api.example.com"`'))
            continue
        for pattern in secret.endpoints:
            if not pattern.names_hosts:
                continue  # `secret_patterns` reports it
            example = pattern.example()
            if policy.endpoint_rule(example) is None:
                out.append(warning("secret-no-endpoint", f"secret `{secret.name}` is bound to `{pattern.text}`, "
                                   "which no endpoint rule names: it can never be sent", secret.span,
                                   help=f"add `{q(pattern.text)}` to `endpoints {{ }}`"))
            elif policy.agents_ and not any(p.matches(example) for _, p in granted):
                out.append(warning("secret-no-endpoint", f"secret `{secret.name}` is bound to `{pattern.text}`, "
                                   "but no agent may connect there", secret.span,
                                   help=f"grant `connect {q(pattern.text)}` to the agent that needs it"))
    return out


def secret_patterns(ctx: CheckContext) -> list[Diagnostic]:
    """A secret bound to a pattern that does not name its hosts one by one is an error (the monitor never
    honours such a binding): `*`, `*.example.com` and `10.0.0.0/8` also cover hosts nobody named."""
    out = []
    for node in _walk(ctx.files):
        if not isinstance(node, ast.SecretDecl):
            continue
        for written in node.to:
            try:
                pattern = EndpointPattern.parse(written.text)
            except PatternError:
                continue  # reported by the compiler
            if pattern.names_hosts:
                continue
            if pattern.host == "*":
                covers = "every host"
            elif pattern.host.startswith("*"):
                covers = f"every host under `{pattern.host.lstrip('*.')}`, including ones nobody named"
            else:
                covers = f"every address in `{pattern.host}`, including ones nobody named"
            out.append(error("secret-pattern", f"secret `{node.name.text}` is bound to `{written.text}`, which "
                             f"covers {covers}: it would be sent to none of them", written.span,
                             help="bind it to the exact hosts that use it, one string each "
                             '(`to "https://api.example.com", "https://uploads.example.com"`)'))
    return out


def routes(ctx: CheckContext) -> list[Diagnostic]:
    """Paths and methods that cannot work as written: under a wildcard host (its requests are never seen), with a
    method nobody sends, or as an `except` (a refusal list a server's own reading of paths can walk around)."""
    from ifc.policy.compile import KNOWN_METHODS

    out = []
    nodes = [n for item in _walk(ctx.files) for n in (item.items if isinstance(item, ast.AgentBlock) else (item,))]
    for node in nodes:
        if isinstance(node, ast.EndpointRule):
            written = [(p, node.methods) for p in node.patterns] + [(p, ()) for p in node.excepts]
            methods = node.methods
        elif isinstance(node, ast.Grant) and node.op == "connect":
            written, methods = [(p, node.methods) for p in node.patterns], node.methods
        else:
            continue
        for method in methods:
            if method.text.upper() not in KNOWN_METHODS:
                out.append(warning("unknown-method", f"`{method.text}` is not a registered HTTP method", method.span,
                                   help="methods are " + ", ".join(KNOWN_METHODS)))
        for pattern, named in written:
            try:
                parsed = EndpointPattern.parse(pattern.text)
            except PatternError:
                continue  # reported by the compiler
            if (parsed.path is not None or named) and parsed.scheme == "https" and not parsed.names_hosts:
                out.append(warning("uninspected-route", f"`{pattern.text}` names paths or methods under a wildcard "
                                   "host: the hook decides requests only inside TLS it terminates, and it terminates "
                                   "only hosts named exactly, so connections it covers are refused", pattern.span,
                                   help="name each host: `https://api.example.com/...`"))
        if isinstance(node, ast.EndpointRule):
            for pattern in node.excepts:
                if "://" in pattern.text and "/" in pattern.text.partition("://")[2]:
                    out.append(warning("path-except", f"`except {q(pattern.text)}` refuses paths by their spelling; "
                                       "a server may read another spelling the same way (`/ACME` for `/acme`)",
                                       pattern.span, help="allow the paths that are needed instead, and leave the "
                                       "rest of the host unnamed"))
    return out


def contradictions(ctx: CheckContext) -> list[Diagnostic]:
    """An explicit permission that a `deny` makes dead is an error: the author meant one of them."""
    policy = ctx.policy
    denies = [f for f in policy.flow_rules if f.effect == "deny"]
    out = []
    permissions = [(f.span, "allow", f.source, f.sink, f"`{f.describe()}`") for f in policy.flow_rules
                   if f.effect == "allow"]
    permissions += [(c.span, c.kind, c.source, c.sink, f"capability `{c.name}`") for c in policy.capabilities_]
    for span, kind, source, sink, what in permissions:
        for deny in denies:
            if _sinks_overlap(policy, sink, deny.sink) and _sources_overlap(kind, source, deny.source):
                out.append(error("allow-denied", f"{what} can never take effect: a deny rule forbids the same flow",
                                 span, help="a deny always wins; narrow the deny rule or remove this permission",
                                 related=[Related(deny.span, "denied here")]))
                break
    for rule in policy.endpoint_rules:
        for deny in denies:
            if deny.source.secrecy and deny.source.secrecy <= rule.clearance and deny.source.integrity is None and \
                    any(_sink_matches_endpoint(policy, deny.sink, p.example()) for p in rule.patterns):
                out.append(error("allow-denied",
                                 f"clearance `{policy.lattice.describe_tags(rule.clearance)}` admits "
                                 f"`{deny.source_text}` data, which a deny rule forbids here", rule.span,
                                 help="lower the clearance so the two agree",
                                 related=[Related(deny.span, "denied here")]))
                break
    return out


def _sources_overlap(kind: str, source, deny_source) -> bool:
    """Is every flow the permission is about also denied? (Then the permission is dead.)"""
    if kind == "endorse" or (source.integrity is not None and not source.secrecy):
        return not deny_source.secrecy and deny_source.integrity is not None and \
            (source.integrity or 0) <= deny_source.integrity
    return bool(deny_source.secrecy) and deny_source.secrecy <= source.secrecy and deny_source.integrity is None


def _sink_matches_endpoint(policy, sink, endpoint) -> bool:
    return sink.matches_endpoint(endpoint, policy.endpoint_rule(endpoint))


def _sinks_overlap(policy, a, b) -> bool:
    if (a.kind == "file") != (b.kind == "file"):
        return False
    if a.kind == "file":
        return any(g.overlap(h) is not None for g in a.globs for h in b.globs)
    if a.kind == "group" and b.kind == "group":
        return a.group == b.group or any({a.group, b.group} <= r.groups for r in policy.endpoint_rules)
    examples = [p.example() for p in a.endpoints] if a.kind == "endpoint" else \
        [p.example() for r in policy.endpoint_rules if a.group in r.groups for p in r.patterns]
    return any(_sink_matches_endpoint(policy, b, e) for e in examples)


def host_config_writes(ctx: CheckContext) -> list[Diagnostic]:
    """An agent that can read untrusted data and may then write host-executed configuration (`ifc.policy.hostcfg`):
    what the session wrote there, a tool on the host runs (the owner's next `git status`, `cd`, editor).

    Exact, per grant: the first path the grant and a host-config glob share that no `writes require` above the
    data's integrity and no matching `deny` rule guards (an automaton search), confirmed by the monitor's own
    `check_write` with the agent's capabilities."""
    policy = ctx.policy
    out = []
    for node, agent in _agents(ctx):
        source = _untrusted_source(policy, agent)
        if source is None:
            continue
        level, what = source
        data = Label(frozenset(), level)
        guards = tuple((g, r.excepts) for r in policy.file_rules
                       if r.writes_require is not None and r.writes_require > level for g in r.globs)
        guards += tuple((g, ()) for f in policy.deny_rules
                        if f.sink.kind == "file" and f.source.matches(data) for g in f.sink.globs)
        for item in node.items:
            if not isinstance(item, ast.Grant) or item.op not in ("write", "create", "delete"):
                continue
            for pattern in item.patterns:
                try:
                    grant = Glob.compile(pattern.text)
                except PatternError:
                    continue  # reported by the compiler
                found = _unguarded_host_config(policy, grant, guards, data, agent.holds)
                if found:
                    listed = ", ".join(f"`{path}` ({kind})" for path, kind, _ in found[:3])
                    listed += f" and {len(found) - 3} more kinds" if len(found) > 3 else ""
                    out.append(warning(
                        "host-config-write",
                        f"agent `{agent.name}` can read untrusted data ({what}) and may then {item.op} "
                        f"host-executed configuration: {listed}; a tool on the host runs what it names",
                        pattern.span,
                        help=f"add `{q(found[0][0])} {'secret' if found[0][2] else 'internal'} writes require trusted` "
                        "to `files { }` (the shipped "
                        "policies guard every path in ifc/policy/hostcfg.py), or narrow the grant"))
    return out


def _untrusted_source(policy, agent) -> tuple[int, str] | None:
    """The least trusted data `agent` can read, and where it comes from: a file rule's label or an endpoint's
    replies (None when everything it can read is fully trusted)."""
    top = policy.lattice.top_integrity
    best: tuple[int, str] | None = None
    reads = [Glob.compile(p) for p in agent.patterns("read") + agent.patterns("exec")]
    for rule in policy.file_rules:
        if rule.label.integrity < top and (best is None or rule.label.integrity < best[0]):
            for glob in rule.globs:
                path = next((w for r in reads if (w := r.overlap(glob)) is not None
                             and policy.file_label(w).rule is rule), None)
                if path is not None:
                    best = (rule.label.integrity, f"`{path}` is `{rule.label_text}`")
                    break
    for rule in policy.endpoint_rules:
        if rule.returns < top and (best is None or rule.returns < best[0]):
            reach = next((e for p in rule.patterns if agent.allows("connect", e := p.example())), None)
            if reach is not None:
                best = (rule.returns, f"replies from `{reach}` are "
                        f"`{policy.lattice.integrity_levels[rule.returns]}`")
    return best


SEARCH_BUDGET = 2_000  # product states for one exact host-config question (the test suite's cases need at most 132)


def _unguarded_host_config(policy, grant: Glob, guards, data: Label, held) -> list[tuple[str, str, bool]]:
    """[(path, kind, whether the kind holds credentials)] for each kind of host-executed configuration the grant
    reaches unguarded."""
    found = []
    for kind in HOST_CONFIG:
        globs, excepts = kind.compiled
        for glob in globs:
            # the common case first: a guard written as the list writes it (the shipped policies) covers it
            if any(g == glob and set(ex) <= set(excepts) for g, ex in guards):
                continue
            path = next((c for c in _readable(grant, glob) if grant.matches(c) and kind.matches(c)
                         and check_write(policy, data, c, held).allowed), None)
            if path is None:  # the exact answer, when no readable example settles it
                # the search prunes on its first automaton, so the host-config glob leads; guards that share no
                # path with it cannot change the answer and are left out of the product
                avoid = tuple((g.tokens, tuple(e.tokens for e in ex)) for g, ex in guards
                              if g.overlap(glob) is not None)
                try:
                    path = witness_avoiding(glob.tokens, (grant.tokens,),
                                            avoid + tuple((e.tokens, ()) for e in excepts), budget=SEARCH_BUDGET)
                except SearchTooLarge:  # undecided: said as a finding, never a hang
                    found.append((glob.text, f"{kind.what}; not proven guarded: too many rules overlap it to check",
                                  kind.secret))
                    break
                if path is not None and not check_write(policy, data, path, held).allowed:
                    path = None
            if path is not None:
                found.append((path, kind.what, kind.secret))
                break
    return found


def _readable(grant: Glob, glob: Glob) -> list[str]:
    """Paths a reader recognises: the host-config glob's own examples, at the root and under the grant's directory."""
    base = (grant.literal_prefix or "").rpartition("/")[0]
    examples = sorted((e for e in glob.examples() if "/./" not in f"/{e}/"), key=len)
    return examples + [f"{base}/{e}" for e in examples if base]


def model_cutoff(ctx: CheckContext) -> list[Diagnostic]:
    """An agent that can read data whose label its own model endpoint (`as model`) may not receive: after one
    such read the run's taint stays above the model's clearance, so every model call of the run is refused and
    a real agent stops working. Exact for the label: the monitor's own `check_send` with the agent's
    capabilities; one finding per (agent, files rule, model), at the files rule, with a path the agent can read
    that the rule labels and the mount serves as it is (not with sentinels)."""
    policy = ctx.policy
    out = []
    for _node, agent in _agents(ctx):
        models = [(rule, reach) for rule in policy.endpoint_rules if is_model(rule)
                  if (reach := next((e for p in rule.patterns if agent.allows("connect", e := p.example())), None))]
        if not models:
            continue
        reads = [Glob.compile(p) for p in agent.patterns("read") + agent.patterns("exec")]
        for rule in policy.file_rules:
            # a path a reader recognises (the rule's own examples, shortest first), else any the grants share
            candidates = sorted((e for g in rule.globs for e in g.examples()), key=len) + \
                [w for r in reads for g in rule.globs if (w := r.overlap(g)) is not None]
            # a file served with sentinels (`.env`) does not cut the agent off: its read carries less
            path = next((c for c in candidates if any(r.matches(c) for r in reads)
                         and policy.file_label(c).rule is rule and not policy.sentinel_file(c)), None)
            if path is None:
                continue
            for model, endpoint in models:
                verdict = check_send(policy, rule.label, endpoint, agent.holds)
                if verdict.allowed:
                    continue
                related = [Related(model.span, "the agent's model endpoint")]
                if verdict.span is not None and verdict.span != model.span:
                    related.append(Related(verdict.span, "this rule refuses that data there"))
                out.append(warning(
                    "model-cutoff",
                    f"agent `{agent.name}` can read {q(path)} (`{rule.label_text}`); after that read every call to "
                    f"its model {q(str(endpoint.connection))} is refused for the rest of the run: {verdict.reason}",
                    rule.span, related=related,
                    help="a real agent stops there (the hook's 403 says what was read and what a reviewer can do): "
                    "leave such files out of the agent's `read` grants, or label them lower if the model may see them"))
    return out


def messages(ctx: CheckContext) -> list[Diagnostic]:
    return [warning("missing-message", "this deny rule has no message for the reviewer who meets its denial",
                    f.span, help=f'end the rule with a quoted reason: `{f.describe()} "why this flow is refused"`')
            for f in ctx.policy.flow_rules if f.effect == "deny" and not f.message]

