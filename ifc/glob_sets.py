"""Exact set questions about globs: do two overlap, does one cover another?

The checker must not guess whether a later `"*.txt" public` rule relabels part of an earlier
`".env*" secret` rule (it does: `.env.txt`). Globs are regular languages, so both questions are
answered exactly by searching the product of small automata built from `ifc.match` glob tokens, with
subset construction done lazily along the search. Only the characters the globs mention matter; every
other character behaves alike, so one stand-in symbol represents them all and the search stays small.
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache

OTHER = None  # the stand-in for "any character no glob in the question mentions"

# An NFA: (start, accept, edges, eps) where edges[state] = [(predicate, next)], eps[state] = [next].
# A predicate is ("lit", c) | ("set", chars, negated) | ("any",) | ("noslash",)


@lru_cache(maxsize=4096)
def _nfa(tokens: tuple[tuple, ...]):
    edges: dict[int, list] = {}
    eps: dict[int, list] = {}
    count = 0

    def new() -> int:
        nonlocal count
        count += 1
        return count - 1

    def edge(a, pred, b):
        edges.setdefault(a, []).append((pred, b))

    def link(a, b):
        eps.setdefault(a, []).append(b)

    start = cur = new()
    for token in tokens:
        kind = token[0]
        nxt = new()
        if kind in ("lit", "set"):
            edge(cur, token, nxt)
        elif kind == "star":
            edge(cur, ("noslash",), cur)
            link(cur, nxt)
        elif kind == "all":
            edge(cur, ("any",), cur)
            link(cur, nxt)
        elif kind == "dirs":
            mid = new()
            link(cur, nxt)
            edge(cur, ("noslash",), mid)
            edge(mid, ("noslash",), mid)
            edge(mid, ("lit", "/"), cur)
        elif kind == "desc":
            below = new()
            link(cur, nxt)
            edge(cur, ("lit", "/"), below)
            edge(below, ("any",), below)
            link(below, nxt)
        cur = nxt
    return start, cur, edges, eps


def _closure(nfa, states) -> frozenset[int]:
    _, _, _, eps = nfa
    seen = set(states)
    stack = list(states)
    while stack:
        for nxt in eps.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return frozenset(seen)


def _accepts(pred, symbol) -> bool:
    kind = pred[0]
    if kind == "any":
        return True
    if kind == "noslash":
        return symbol != "/"
    if kind == "lit":
        return symbol == pred[1]
    _, chars, negated = pred  # "set"; classes never contain `/`
    if negated:
        return symbol != "/" and symbol not in chars
    return symbol is not OTHER and symbol in chars


def _step(nfa, states: frozenset[int], symbol) -> frozenset[int]:
    edges = nfa[2]
    return _closure(nfa, [b for s in states for pred, b in edges.get(s, ()) if _accepts(pred, symbol)])


def _alphabet(token_lists) -> list:
    chars = {"/"}
    for tokens in token_lists:
        for token in tokens:
            if token[0] == "lit":
                chars.add(token[1])
            elif token[0] == "set":
                chars.update(token[1])
    return [*sorted(chars), OTHER]


class SearchTooLarge(Exception):
    """The product of the automata grew past the search's budget: the question is left undecided (a product of
    many globs can have exponentially many states; a lint must answer in bounded time, never hang `ifc check`)."""


def _search(automata, is_goal, budget: int | None = None) -> str | None:
    """Breadth-first search over tuples of subset states; returns the shortest witness string. With `budget`,
    SearchTooLarge once more than that many states were reached."""
    nfas = [_nfa(t) for t in automata]
    alphabet = _alphabet(automata)
    start = tuple(_closure(n, [n[0]]) for n in nfas)
    # each automaton's own subset states are few while their product is not: one step per (automaton, subset,
    # symbol) is computed once and looked up after (a product of 35 globs took seconds per question without it)
    moves: list[dict] = [{} for _ in nfas]

    def move(i: int, s: frozenset[int], symbol) -> frozenset[int]:
        key = (s, symbol)
        found = moves[i].get(key)
        if found is None:
            found = moves[i][key] = _step(nfas[i], s, symbol)
        return found

    parents: dict[tuple, tuple | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        accepting = tuple(n[1] in s for n, s in zip(nfas, state, strict=True))
        if is_goal(accepting) and state[0]:
            return _spell(parents, state, alphabet, automata)
        if not state[0]:
            continue  # the first automaton can no longer match: no witness down this path
        for symbol in alphabet:
            nxt = tuple(move(i, s, symbol) for i, s in enumerate(state))
            if nxt not in parents:
                parents[nxt] = (state, symbol)
                queue.append(nxt)
        if budget is not None and len(parents) > budget:
            raise SearchTooLarge
    return None


def _spell(parents, state, alphabet, automata) -> str:
    used = {c for c in alphabet if c is not OTHER}
    stand_in = next(c for c in "xyzqkjw0123456789_" if c not in used)
    out = []
    while parents[state] is not None:
        state, symbol = parents[state]
        out.append(stand_in if symbol is OTHER else symbol)
    return "".join(reversed(out))


def witness(tokens: tuple[tuple, ...], require: tuple[tuple[tuple, ...], ...]) -> str | None:
    """A path matched by `tokens` and by every glob in `require`, or None."""
    automata = (tokens, *require)
    return _search(automata, lambda acc: all(acc))


def escapes(tokens: tuple[tuple, ...], cover: tuple[tuple[tuple, ...], ...],
            minus: tuple[tuple[tuple, ...], ...] = ()) -> str | None:
    """A path matched by `tokens` that no glob in `cover` matches (or that one in `minus` matches)."""
    automata = (tokens, *cover, *minus)
    n_cover = len(cover)

    def goal(acc) -> bool:
        return acc[0] and (not any(acc[1:1 + n_cover]) or any(acc[1 + n_cover:]))

    return _search(automata, goal)


def witness_avoiding(tokens: tuple[tuple, ...], require: tuple[tuple[tuple, ...], ...],
                     avoid: tuple[tuple[tuple[tuple, ...], tuple[tuple[tuple, ...], ...]], ...],
                     budget: int | None = None) -> str | None:
    """A path matched by `tokens` and every glob in `require`, and by no `(glob, excepts)` in `avoid` (a path a
    glob matches but one of its excepts also matches is not avoided: a file rule's `except`)."""
    found = _witness_avoiding(tokens, require, avoid, budget)
    if found is SearchTooLarge:
        raise SearchTooLarge
    return found


@lru_cache(maxsize=1024)
def _witness_avoiding(tokens, require, avoid, budget):
    """The answer, or SearchTooLarge itself: a checker asks the same question for every agent and write grant
    that reaches one host-config glob, and an undecided question is the costliest one to ask twice."""
    automata = [tokens, *require]
    spans = []
    for glob, excepts in avoid:
        spans.append((len(automata), len(automata) + 1, len(automata) + 1 + len(excepts)))
        automata += [glob, *excepts]
    n_required = 1 + len(require)

    def goal(acc) -> bool:
        return all(acc[:n_required]) and not any(acc[g] and not any(acc[lo:hi]) for g, lo, hi in spans)

    try:
        return _search(tuple(automata), goal, budget)
    except SearchTooLarge:
        return SearchTooLarge
