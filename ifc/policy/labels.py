"""The label lattice: secrecy is a set of tags (join = union), integrity a chain of levels (join = min).

A secrecy chain `public < internal < secret` is encoded in the tag-set lattice: each element stands for
itself and every element below it except the bottom, so `secret` = {internal, secret} and `public` = {}.
Union then yields the chain's maximum, and independent tags (`customer`) combine freely with chains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property


@dataclass(frozen=True, order=True)
class Label:
    secrecy: frozenset[str]
    integrity: int  # rank in the integrity chain, 0 = least trusted

    def join(self, other: Label) -> Label:
        """The least upper bound. `self` itself when `other` adds nothing: a subject re-reading what it
        already knows keeps the very taint object its cached decisions are keyed by (an identity match)."""
        if other.secrecy <= self.secrecy and other.integrity >= self.integrity:
            return self
        return Label(self.secrecy | other.secrecy, min(self.integrity, other.integrity))

    def flows_to(self, other: Label) -> bool:
        """May data labelled `self` flow into something labelled `other` (up the lattice)?"""
        return self.secrecy <= other.secrecy and self.integrity >= other.integrity


@dataclass(frozen=True)
class LabelPattern:
    """The left side of a flow rule: which data a rule is about.

    Data matches when it carries every tag in `secrecy` and, if `integrity` is set, is no more trusted
    than that level (`deny untrusted -> ...` is about untrusted data).
    """

    secrecy: frozenset[str]
    integrity: int | None

    def matches(self, label: Label) -> bool:
        if not self.secrecy <= label.secrecy:
            return False
        return self.integrity is None or label.integrity <= self.integrity


@dataclass(frozen=True)
class Lattice:
    chains: tuple[tuple[str, ...], ...]  # secrecy chains, bottom first; a lone tag is a chain of one
    integrity_levels: tuple[str, ...]  # least trusted first
    named: tuple[tuple[str, Label], ...] = field(default=())

    @cached_property
    def tag_closure(self) -> dict[str, frozenset[str]]:
        """Name of a secrecy element → the tags it stands for."""
        out: dict[str, frozenset[str]] = {}
        for chain in self.chains:
            if len(chain) == 1:
                out[chain[0]] = frozenset(chain)
                continue
            for index, name in enumerate(chain):
                out[name] = frozenset(chain[1:index + 1])
        return out

    @cached_property
    def integrity_rank(self) -> dict[str, int]:
        return {name: rank for rank, name in enumerate(self.integrity_levels)}

    @cached_property
    def named_labels(self) -> dict[str, Label]:
        return dict(self.named)

    @property
    def top_integrity(self) -> int:
        return len(self.integrity_levels) - 1

    @cached_property
    def bottom(self) -> Label:
        """Public, fully trusted: what a fresh session and an unlabelled file carry. Made once: every
        write decision asks for it."""
        return Label(frozenset(), self.top_integrity)

    def kind_of(self, name: str) -> str | None:
        if name in self.tag_closure:
            return "secrecy"
        if name in self.integrity_rank:
            return "integrity"
        if name in self.named_labels:
            return "label"
        return None

    def all_names(self) -> list[str]:
        return [*self.tag_closure, *self.integrity_rank, *self.named_labels]

    @cached_property
    def _described(self) -> dict[tuple[frozenset[str], int, bool], str]:
        return {}

    def describe(self, label: Label, with_integrity: bool = True) -> str:
        """Render a label as the shortest expression a user would write: `secret + customer, untrusted`."""
        # keyed by the label's parts: a frozenset caches its hash, a Label (a dataclass) hashes in Python
        key = (label.secrecy, label.integrity, with_integrity)
        text = self._described.get(key)
        if text is None:
            if len(self._described) > 4096:
                self._described.clear()
            text = self._described[key] = self._describe(label, with_integrity)
        return text

    def _describe(self, label: Label, with_integrity: bool) -> str:
        names: list[str] = []
        remaining = set(label.secrecy)
        for chain in self.chains:
            for name in reversed(chain):
                closure = self.tag_closure[name]
                if closure and closure <= label.secrecy and closure & remaining:
                    names.append(name)
                    remaining -= closure
                    break
        names.extend(sorted(remaining))
        text = " + ".join(names) if names else self.chains_bottom_name()
        if with_integrity and self.integrity_levels:
            text += ", " + self.integrity_levels[label.integrity]
        return text

    def describe_tags(self, tags: frozenset[str]) -> str:
        return self.describe(Label(tags, 0), with_integrity=False)

    def chains_bottom_name(self) -> str:
        for chain in self.chains:
            if len(chain) > 1:
                return chain[0]
        return "public"
