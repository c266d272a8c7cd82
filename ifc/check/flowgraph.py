"""Static flow analysis: where could labelled data go, before anything runs?

A graph (networkx) of sources (labelled file rules, endpoints whose replies are untrusted), subjects
(agents, and the sub-processes they may delegate to), shared writable regions (one agent writes, another
reads) and sinks (endpoints, protected files). For every source that can reach a sink, the flow is asked
of the same `ifc.policy.flows` code the runtime monitor uses:

  - refused by an explicit `deny` rule: the author's intent, nothing to report;
  - permitted by a declared declassify/endorse capability: the author named who may approve it;
  - refused only by a clearance or integrity requirement: a warning, because the reviewer who meets
    that denial at run time gets no message — the fix is a `deny` rule that says why, or a narrower grant.
"""

from __future__ import annotations

import itertools

import networkx as nx

from ifc.diagnostics import Diagnostic, Related, warning
from ifc.lang.lower import encode_string as q
from ifc.match import EndpointPattern, Glob, PatternError
from ifc.policy.flows import check_send, check_write
from ifc.policy.labels import Label
from ifc.policy.model import Agent, Grant, Policy

from . import CheckContext


def build_graph(policy: Policy) -> nx.DiGraph:
    graph = nx.DiGraph()
    lattice = policy.lattice
    subjects: list[tuple[str, Agent, tuple[Grant, ...], tuple[str, ...]]] = []
    for agent in policy.agents_:
        subjects.append((f"agent {agent.name}", agent, agent.grants, agent.holds))
        if agent.delegable:
            sub = f"sub-process of {agent.name}"
            subjects.append((sub, agent, agent.delegable, ()))
            graph.add_edge(f"agent {agent.name}", sub, op="delegate")
    for node, _agent, grants, holds in subjects:
        graph.add_node(node, kind="subject", holds=holds)
        reads = _globs(g.pattern for g in grants if g.op in ("read", "exec"))
        writes = _globs(g.pattern for g in grants if g.op in ("write", "create"))
        connects = _endpoints(g.pattern for g in grants if g.op == "connect")
        for rule in policy.file_rules:
            if rule.label == lattice.bottom:
                continue
            if _globs_meet(reads, rule.globs):
                graph.add_node(("file", rule.index), kind="source", label=rule.label, span=rule.span,
                               text=f"{', '.join(q(g.text) for g in rule.globs)} ({rule.label_text})")
                graph.add_edge(("file", rule.index), node, op="read")
            if rule.writes_require is not None and _globs_meet(writes, rule.globs):
                graph.add_node(("write", rule.index), kind="file-sink", span=rule.span,
                               path=_first_example(rule.globs, writes),
                               text=", ".join(q(g.text) for g in rule.globs))
                graph.add_edge(node, ("write", rule.index), op="write")
        for flow in policy.flow_rules:
            if flow.sink.kind == "file" and _globs_meet(writes, flow.sink.globs):
                key = ("write-rule", flow.span)
                graph.add_node(key, kind="file-sink", span=flow.span, path=_first_example(flow.sink.globs, writes),
                               text=flow.sink.text.removeprefix("file "))
                graph.add_edge(node, key, op="write")
        for rule in policy.endpoint_rules:
            examples = [p.example() for p in rule.patterns]
            reach = [e for e in examples if any(c.matches(e) for c in connects)] or \
                [c.example() for c in connects if rule.matches(c.example())]
            if not reach:
                continue
            graph.add_node(("endpoint", rule.index), kind="sink", endpoint=reach[0], span=rule.span,
                           text=f"{', '.join(q(p.text) for p in rule.patterns)}")
            graph.add_edge(node, ("endpoint", rule.index), op="connect")
            if rule.returns < lattice.top_integrity:
                reply = ("reply", rule.index)
                graph.add_node(reply, kind="source", label=Label(frozenset(), rule.returns), span=rule.span,
                               text=f"replies from {', '.join(q(p.text) for p in rule.patterns)} "
                               f"({lattice.integrity_levels[rule.returns]})")
                graph.add_edge(reply, node, op="reply")
        # shared regions: what this subject writes, another may read
        for other, _a, other_grants, _h in subjects:
            if other != node and _globs_meet(writes, _globs(g.pattern for g in other_grants if g.op == "read")):
                region = ("region", node, other)
                graph.add_node(region, kind="region", text="files " + node.split(" ", 1)[-1] + " writes")
                graph.add_edge(node, region, op="write")
                graph.add_edge(region, other, op="read")
    return graph


def flow_paths(ctx: CheckContext) -> list[Diagnostic]:
    policy = ctx.policy
    lattice = policy.lattice
    graph = build_graph(policy)
    sources = [n for n, d in graph.nodes(data=True) if d.get("kind") == "source"]
    sinks = [n for n, d in graph.nodes(data=True) if d.get("kind") in ("sink", "file-sink")]
    findings: dict[tuple, tuple[Diagnostic, list]] = {}
    for source in sources:
        data = graph.nodes[source]["label"]
        reachable = nx.descendants(graph, source)
        for sink in sinks:
            if sink not in reachable:
                continue
            path = nx.shortest_path(graph, source, sink)
            subject = path[-2]
            held = graph.nodes[subject].get("holds", ())
            sink_data = graph.nodes[sink]
            if sink_data["kind"] == "sink":
                verdict = check_send(policy, Label(data.secrecy, data.integrity), sink_data["endpoint"], held)
            else:
                verdict = check_write(policy, Label(frozenset(), data.integrity), sink_data["path"], held)
            if verdict.allowed or verdict.message is not None or (verdict.rule and verdict.rule.startswith("deny")):
                continue
            if _capability_explains(policy, data, sink_data):
                continue  # the author declared who may approve this flow; the capability carries the message
            what = (f"`{lattice.describe_tags(verdict.blocked_tags)}` data" if verdict.blocked_tags
                    else f"`{lattice.integrity_levels[data.integrity]}` data")
            key = (sink, what)
            if key in findings:
                continue
            drawn = _draw(graph, path)
            sink_name = sink_data["text"]
            suggestion = (f"deny {lattice.describe_tags(verdict.blocked_tags)}" if verdict.blocked_tags
                          else f"deny {lattice.integrity_levels[data.integrity]}")
            target = sink_name if sink_data["kind"] == "sink" else f"file {sink_name}"
            check_kind = "clearance" if verdict.blocked_tags else "integrity"
            diag = warning(
                "unexplained-flow",
                f"{what} can reach {sink_name}; only the monitor's {check_kind} check stops it, with no message "
                f"for the reviewer: {drawn}",
                sink_data["span"],
                help=f'say why with `{suggestion} -> {target} "..."`, or narrow the grant that opens the path',
                related=[Related(graph.nodes[source]["span"], f"the data comes from {graph.nodes[source]['text']}")])
            findings[key] = (diag, path)
    return [d for d, _ in findings.values()]


def _capability_explains(policy: Policy, data: Label, sink_data: dict) -> bool:
    """Would some declared capability (held by an agent or only mintable into a token) permit the flow?"""
    every = tuple(policy.capabilities)
    if not every:
        return False
    if sink_data["kind"] == "sink":
        return check_send(policy, data, sink_data["endpoint"], every).allowed
    return check_write(policy, Label(frozenset(), data.integrity), sink_data["path"], every).allowed


def _draw(graph: nx.DiGraph, path: list) -> str:
    parts = [_node_text(graph, path[0])]
    for a, b in itertools.pairwise(path):
        parts.append(f"--{graph.edges[a, b]['op']}--> {_node_text(graph, b)}")
    return " ".join(parts)


def _node_text(graph: nx.DiGraph, node) -> str:
    return node if isinstance(node, str) else graph.nodes[node]["text"]


def _globs(patterns) -> list[Glob]:
    out = []
    for p in patterns:
        try:
            out.append(Glob.compile(p))
        except PatternError:
            continue
    return out


def _endpoints(patterns) -> list[EndpointPattern]:
    out = []
    for p in patterns:
        try:
            out.append(EndpointPattern.parse(p))
        except PatternError:
            continue
    return out


def _globs_meet(a: list[Glob], b) -> bool:
    return any(x.overlap(y) is not None for x in a for y in b)


def _first_example(globs, grants: list[Glob]) -> str:
    for g in globs:
        for x in grants:
            witness = g.overlap(x)
            if witness is not None:
                return witness
    return globs[0].examples()[0]
