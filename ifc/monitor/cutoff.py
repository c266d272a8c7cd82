"""When the run's taint cuts the agent off from its own model, and what a reviewer can do about it.

An agent's model is its mind: once a read raises the run's taint past what the `as model` endpoint is
cleared for, every later model call of the run is refused (the taint never goes down), and a real agent
stops working. A bare "403" then reads like a network fault. So a flow denial carries, as data, what the
agent and its reviewer need: which reads raised the taint (`what_was_read`), since when the model has been
out of reach (`Cutoff.since`), and the exact steps that would allow the flow in a *later* run
(`lowering_commands`: `ifc labels WORKSPACE --lower ...` for labels writes floated up; the policy and token
fixes come from the monitor's `_flow_fix`). Nothing here approves anything for the running run: no channel
exists that lowers a live run's taint, and none is offered.

Pure functions over a policy, a label store and the run's taint sources; the monitor calls them and logs
the result (event kind `cutoff`, once per model endpoint rule and run).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from ifc.policy.labels import Label
from ifc.policy.model import EndpointRule, Policy

MODEL_GROUP = "model"  # the endpoints block's role for the agent's own model provider (`as model`)


@dataclass(frozen=True)
class Cutoff:
    """The agent lost its model: which endpoint, since when (the arrival of the first blocking part of the
    taint), and what brought that part in, as (label part, object) pairs (`secret`, `.env`)."""

    endpoint: str
    since: float
    reads: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict:
        return {"endpoint": self.endpoint, "since": self.since, "reads": [list(r) for r in self.reads]}


def is_model(rule: EndpointRule | None) -> bool:
    return rule is not None and MODEL_GROUP in rule.groups


def what_was_read(reads: tuple[tuple[str, str], ...]) -> str:
    """`.env` (`secret`), a reply from `https://x:443` (`untrusted`): the sources as a reviewer names them.
    Objects are provenance nodes (`file:.env`, `endpoint:https://...`, `secret:NAME via ...`)."""
    out = []
    for part, obj in reads:
        kind, _, name = obj.partition(":")
        if kind == "file":
            out.append(f"`{name}` (`{part}`)")
        elif kind == "endpoint":
            out.append(f"a reply from `{name}` (`{part}`)")
        else:
            out.append(f"{name or obj} (`{part}`)")
    return ", ".join(out) or "data the log does not name"


def lowering_commands(policy: Policy, stored: dict[str, Label | None], culprits: list[str],
                      sources: dict[str, str], workspace: str | None) -> list[str]:
    """`ifc labels WORKSPACE --lower PATH --to LABEL --reason ...` for each culprit file whose blocking part a
    write floated onto it (not the policy's label for it by name, which only a policy change lowers): lowered
    to what the policy gives it by name, in force from the next run. `stored`: the label store's label of each
    culprit file."""
    lattice = policy.lattice
    out = []
    seen = set()
    for part in culprits:
        kind, _, path = sources.get(part, "").partition(":")
        if kind != "file" or path in seen:
            continue
        floated = stored.get(path)
        base = policy.file_label(path).label
        if floated is None or not _floated_part(lattice, part, floated, base):
            continue
        seen.add(path)
        # below the floated label (what `ifc labels --lower` accepts) and, joined with the policy's, the policy's
        to = Label(floated.secrecy & base.secrecy, max(floated.integrity, base.integrity))
        # without an integrity level `--to` keeps the current one: named only when it changes
        text = lattice.describe(to) if to.integrity != floated.integrity else lattice.describe_tags(to.secrecy)
        # `--from` the label this denial saw: a raise after it is not lowered unseen by a copied command
        out.append(f"ifc labels {shlex.quote(workspace or 'WORKSPACE')} --lower {shlex.quote(path)} "
                   f"--from {shlex.quote(lattice.describe(floated))} --to {shlex.quote(text)} "
                   "--reason 'WHY THIS DATA MAY GO THERE'")
    return out


def _floated_part(lattice, part: str, floated: Label, base: Label) -> bool:
    if part in lattice.tag_closure:
        return part in floated.secrecy and part not in base.secrecy
    return floated.integrity < base.integrity  # an integrity level: the write made the file less trusted


def policy_named(policy: Policy, culprits: list[str], sources: dict[str, str]) -> list[str]:
    """`.env` is `secret` by the files rule at FILE:LINE:COL: culprit files whose blocking part the policy gives
    them by name (no label command lowers that; a policy change does)."""
    out = []
    tags = policy.lattice.tag_closure
    for part in culprits:
        kind, _, path = sources.get(part, "").partition(":")
        if kind != "file":
            continue
        match = policy.file_label(path)
        if part in match.label.secrecy or (part not in tags and match.label.integrity < policy.lattice.top_integrity):
            where = f" by the files rule at {match.rule.span}" if match.rule is not None else ""
            line = f"`{path}` is `{policy.lattice.describe(match.label, with_integrity=part not in tags)}`{where}"
            if line not in out:
                out.append(line)
    return out
