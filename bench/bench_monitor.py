"""Reference-monitor benchmark: one run, one table, no thresholds (the goals from issue #4 are printed beside).

    python bench/bench_monitor.py              # aligned text table, then a profile of every missed goal
    python bench/bench_monitor.py --markdown   # the table for docs/benchmarks.md
    python bench/bench_monitor.py --quick      # smaller counts (a smoke run)

What it measures, on the shipped default policy and its `coder` agent, with an event log in a temporary run
directory (allows aggregated, as in a real run):

* warm decision latency, µs per `Monitor.decide`: the same read (and connect) request repeated; reads of
  distinct, never-seen paths; with the agent's grants and with a capability token (verified through a real
  `caps.Verifier`, whose cache is warm after the first call);
* side by side: cedarpy's `is_authorized` on an equivalent Cedar policy and request (grants as `permit`, the
  deny rules and endpoint clearances as `forbid` over a `taint` set in the context) - per call with the
  policy text, per call with pre-parsed `PolicySet`/`Entities` handles, and per request in a batch of 100 -
  and a plain dict lookup as the floor;
* the provenance graph: 1,000,000 `ProvenanceGraph.record` calls over 5,000 files, 50 subjects and 200
  endpoints (60% reads, 25% writes, 15% connects; a tenth carry label parts) - time, and peak memory
  (growth of the peak RSS, and tracemalloc's peak for the graph alone on a 100,000-event run scaled up);
* `explain()` on a 60-hop chain inside that graph, and a whole denial (`decide` computing its explanation)
  at the end of that chain, next to a denial with nothing to explain (the cost of committing it);
* the pause of one full garbage collection while the 1M-event graph is alive (a decision that triggers one
  waits that long).

Goals (issue #4): <= 5 µs for a repeated decision, <= 30 µs for a first-seen path, 1M events <= 10 s and
<= 500 MB, explain <= 10 ms. For each goal missed, the cProfile top functions (own time) are printed.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import platform
import pstats
import random
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from caps import HostKey, Verifier, mint
from ifc.monitor import EventLog, Monitor, Request
from ifc.monitor.provenance import Hop, ProvenanceGraph, node
from ifc.policy import load_policy, shipped_policy

AUDIENCE = "bench-run"
GOAL_REPEATED_US = 5.0
GOAL_FIRST_SEEN_US = 30.0
GOAL_EVENTS_S = 10.0
GOAL_EVENTS_MB = 500.0
GOAL_EXPLAIN_MS = 10.0


# ----------------------------------------------------------------------------------------- timing
def per_call_us(run: Callable[[], object], n: int, repeats: int = 5) -> float:
    """Median over `repeats` loops of `n` calls, in µs per call."""
    samples = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        for _ in range(n):
            run()
        samples.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(samples)


def each_once_us(calls: list[Callable[[], object]]) -> float:
    """Mean µs per call over a list of distinct calls, each made once."""
    gc.collect()
    start = time.perf_counter()
    for call in calls:
        call()
    return (time.perf_counter() - start) / len(calls) * 1e6


_WRAPPERS = {"<lambda>", "<listcomp>", "<genexpr>", "<built-in method builtins.any>", "decide", "_decide",
             "replay"}


def profile(label: str, run: Callable[[], object], top: int = 14) -> str:
    """cProfile `run`, and say where the time goes: the functions with the largest cumulative share (callees
    included, so shares overlap; the outermost wrappers are left out), then the largest own-time shares."""
    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values()) or 1e-12

    def where(file: str, line: int) -> str:
        return f"{Path(file).parent.name}/{Path(file).name}:{line}" if file != "~" else "builtin"

    lines = [f"profile: {label}", "  cumulative share (with callees):"]
    by_cum = sorted(stats.items(), key=lambda kv: kv[1][3], reverse=True)
    shown = 0
    for (file, line, func), (_cc, calls, _tot, cum, _callers) in by_cum:
        if func in _WRAPPERS or cum / total > 0.97 or (file == "~" and "any" in func):
            continue
        lines.append(f"    {cum / total:6.1%}  {calls:>9} calls  {func}  ({where(file, line)})")
        shown += 1
        if shown == top:
            break
    lines.append("  own time share:")
    for (file, line, func), (_cc, calls, tot, _cum, _callers) in sorted(stats.items(), key=lambda kv: kv[1][2],
                                                                        reverse=True)[:8]:
        lines.append(f"    {tot / total:6.1%}  {calls:>9} calls  {func}  ({where(file, line)})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- decisions
class Decisions:
    def __init__(self, run_dir: Path, n: int):
        self.n = n
        self.policy = load_policy(shipped_policy("default"))
        self.agent = self.policy.agents["coder"]
        host = HostKey.generate()
        self.now = time.time()
        self.token = mint(host, rights=["read **", "write src/**", "connect https://api.anthropic.com"],
                          audience=AUDIENCE, ttl=3600, now=self.now)
        self.verifier = Verifier([host.public], audience=AUDIENCE)
        self.run_dir = run_dir
        self._logs = 0

    def monitor(self) -> Monitor:
        self._logs += 1
        log = EventLog(self.run_dir / f"events-{self._logs}.db")
        return Monitor(self.policy, agent=self.agent, verifier=self.verifier, log=log, clock=lambda: self.now)

    def repeated(self, op: str, target: str, token: bool) -> Callable[[], object]:
        m = self.monitor()
        request = Request(op, target, token=self.token if token else None)
        assert m.decide(request).allowed, m.decide(request).reason
        return lambda: m.decide(request)

    def with_streams(self, count: int) -> Monitor:
        """A monitor with `count` open egress streams registered (to the model endpoint, cleared for
        `internal`), as the hook holds them for open tunnels and requests in flight."""
        m = self.monitor()
        for i in range(count):
            _, stream = m.open_stream(Request("connect", "https://api.anthropic.com"), f"bench stream {i}",
                                      lambda reason: None)
            assert stream is not None
        return m

    def taint_rise_us(self, streams: int, path: str, rounds: int = 15) -> float:
        """One read that raises the run's taint, with `streams` open streams re-decided inside it (median)."""
        samples = []
        for _ in range(rounds):
            m = self.with_streams(streams)
            request = Request("read", path)
            start = time.perf_counter()
            assert m.decide(request).allowed
            samples.append((time.perf_counter() - start) * 1e6)
            m.close()
        return statistics.median(samples)

    def first_seen(self, token: bool, n: int) -> list[Callable[[], object]]:
        m = self.monitor()
        tok = self.token if token else None
        m.decide(Request("read", "src/warm.py", token=tok))
        stamp = f"{time.perf_counter_ns()}"  # distinct from every earlier run: no cache anywhere has seen them
        requests = [Request("read", f"src/pkg{i % 97}/{stamp}/mod_{i}.py", token=tok) for i in range(n)]
        return [lambda r=r: m.decide(r) for r in requests]


CEDAR_POLICY = """
permit(principal == Agent::"coder", action == Action::"read", resource);
permit(principal == Agent::"coder", action == Action::"write", resource)
  when { context.path like "src/*" || context.path like "tests/*" || context.path like "docs/*"
         || context.path == "README.md" };
permit(principal == Agent::"coder", action == Action::"connect", resource in Group::"granted");
forbid(principal, action == Action::"connect", resource) unless { resource.clearance.containsAll(context.taint) };
forbid(principal, action == Action::"connect", resource in Group::"external") when { context.taint.contains("secret") };
forbid(principal, action == Action::"connect", resource in Group::"external")
  when { context.taint.contains("customer") };
forbid(principal, action == Action::"connect", resource in Group::"mail")
  when { context.taint.contains("internal") || context.untrusted };
"""


def cedar_entities() -> list[dict]:
    groups = [{"uid": {"type": "Group", "id": g}, "attrs": {}, "parents": []}
              for g in ("external", "model", "forge", "packages", "mail", "granted")]
    endpoints = [
        ("https://api.anthropic.com:443", ["internal"], ["external", "model", "granted"]),
        ("https://github.com:443", ["internal"], ["external", "forge", "granted"]),
        ("https://pypi.org:443", ["internal"], ["external", "packages", "granted"]),
        ("https://registry.npmjs.org:443", ["internal"], ["external", "packages"]),
        ("smtp://smtp.gmail.com:587", [], ["external", "mail", "granted"]),
    ]
    out = list(groups)
    for name, clearance, parents in endpoints:
        out.append({"uid": {"type": "Endpoint", "id": name}, "attrs": {"clearance": clearance},
                    "parents": [{"type": "Group", "id": p} for p in parents]})
    out.append({"uid": {"type": "Agent", "id": "coder"}, "attrs": {}, "parents": []})
    out.append({"uid": {"type": "File", "id": "src/app.py"}, "attrs": {}, "parents": []})
    return out


def cedar_request(op: str, resource: str, kind: str, path: str = "") -> dict:
    return {"principal": 'Agent::"coder"', "action": f'Action::"{op}"', "resource": f'{kind}::"{resource}"',
            "context": {"taint": ["internal"], "untrusted": False, "path": path}}


def bench_cedar(n: int) -> tuple[dict[str, float], str]:
    try:
        import cedarpy
    except ImportError:
        return {}, "cedarpy is not installed (`pip install cedarpy`): only the dict floor is shown"
    entities = cedar_entities()
    read = cedar_request("read", "src/app.py", "File", "src/app.py")
    connect = cedar_request("connect", "https://api.anthropic.com:443", "Endpoint")
    try:  # cedarpy >= 4.8 has pre-parsed handles
        policies = cedarpy.PolicySet.from_str(CEDAR_POLICY)
        handle_entities = cedarpy.Entities.from_json_str(json.dumps(entities))
    except AttributeError:
        policies = handle_entities = None
    for request in (read, connect):
        result = cedarpy.is_authorized(request, CEDAR_POLICY, entities)
        assert result.decision == cedarpy.Decision.Allow, (request, result.diagnostics)
    out = {
        "read (policy text each call)": per_call_us(lambda: cedarpy.is_authorized(read, CEDAR_POLICY, entities),
                                                    max(n // 20, 200)),
        "connect (policy text each call)": per_call_us(
            lambda: cedarpy.is_authorized(connect, CEDAR_POLICY, entities), max(n // 20, 200)),
    }
    if policies is not None and handle_entities is not None:
        assert cedarpy.is_authorized(connect, policies, handle_entities).decision == cedarpy.Decision.Allow
        out["read (pre-parsed handles)"] = per_call_us(
            lambda: cedarpy.is_authorized(read, policies, handle_entities), max(n // 5, 500))
        out["connect (pre-parsed handles)"] = per_call_us(
            lambda: cedarpy.is_authorized(connect, policies, handle_entities), max(n // 5, 500))
        batch = [read, connect] * 50
        out["per request, batch of 100 (handles)"] = per_call_us(
            lambda: cedarpy.is_authorized_batch(batch, policies, handle_entities), max(n // 500, 20)) / len(batch)
    version = getattr(cedarpy, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version
        version = dist_version("cedarpy")
    return out, f"cedarpy {version}"


def bench_dict_floor(n: int) -> float:
    grants = {("read", f"src/f{i}.py"): True for i in range(1000)}
    key = ("read", "src/f7.py")
    return per_call_us(lambda: grants.get(key), n * 5)


# ----------------------------------------------------------------------------------------- provenance
def workload(events: int, seed: int = 11):
    """A realistic mix over 5,000 files, 50 subjects and 200 endpoints; a tenth carry label parts."""
    rng = random.Random(seed)
    files = [node("file", f"src/pkg{i % 50}/mod{i}.py") for i in range(5000)]
    subjects = [node("subject", f"s{i}") for i in range(50)]
    endpoints = [node("endpoint", f"https://host{i}.example:443") for i in range(200)]
    parts = (("internal",), ("secret", "internal"), ("customer",), ("untrusted",))
    # skewed like a real session: a few hot files and endpoints, a long tail
    hot_file = [rng.choice(files) for _ in range(200)]
    for i in range(events):
        s = rng.choice(subjects)
        f = rng.choice(hot_file) if rng.random() < 0.7 else rng.choice(files)
        tagged = parts[i % 4] if i % 10 == 0 else ()
        r = rng.random()
        if r < 0.60:
            yield f, "read", s, float(i), i, tagged
        elif r < 0.85:
            yield s, "write", f, float(i), i, tagged
        else:
            yield s, "connect", rng.choice(endpoints), float(i), i, tagged


def bench_graph(events: int) -> dict[str, float]:
    batch = list(workload(events))  # generated up front: only `record` is timed
    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    graph = ProvenanceGraph()
    record = graph.record
    start = time.perf_counter()
    for source, op, target, ts, event, parts in batch:
        record(source, op, target, ts, event, parts)
    seconds = time.perf_counter() - start
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    nodes, edges = graph.size
    del batch
    # tracemalloc for the graph alone, on a tenth of the events (it slows allocation several times)
    sample = list(workload(events // 10, seed=12))
    gc.collect()
    tracemalloc.start()
    small = ProvenanceGraph()
    for source, op, target, ts, event, parts in sample:
        small.record(source, op, target, ts, event, parts)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds": seconds, "rss_growth_mb": max(rss_after - rss_before, 0.0), "nodes": nodes, "edges": edges,
            "origins": sum(len(parts) for parts in graph.origin.values()), "traced_peak_mb_tenth": traced_peak / 2**20,
            "graph": graph}


def long_chain(graph: ProvenanceGraph, hops: int = 60) -> Hop:
    """file0 -read-> c0 -write-> file1 -read-> c1 ... carrying `secret`; returns the final connect hop."""
    t = 2e9
    previous = node("file", "chain/0.env")
    for i in range(hops // 2):
        subject = node("subject", f"chain-s{i}")
        graph.record(previous, "read", subject, t, None, parts=("secret",))
        nxt = node("file", f"chain/{i + 1}.txt")
        graph.record(subject, "write", nxt, t, None, parts=("secret",))
        previous = nxt
    last = node("subject", "chain-last")
    graph.record(previous, "read", last, t, None, parts=("secret",))
    return Hop(last, "connect", node("endpoint", "smtp://smtp.gmail.com:587"))


def bench_explain(graph: ProvenanceGraph) -> tuple[float, int]:
    sink = long_chain(graph)
    hops = graph.explain(sink, "secret")
    assert hops[0].source == "file:chain/0.env", hops[0]
    return per_call_us(lambda: graph.explain(sink, "secret"), 2000) / 1000, len(hops)


def bench_plain_denial(run_dir: Path) -> float:
    """A denial with nothing to explain (an unknown endpoint): what committing the deny event costs."""
    policy = load_policy(shipped_policy("default"))
    m = Monitor(policy, agent=policy.agents["coder"], log=EventLog(run_dir / "deny.db"))
    denial = Request("connect", "https://unknown.example")
    assert not m.decide(denial).allowed
    return per_call_us(lambda: m.decide(denial), 500)


def gc_pause_ms() -> float:
    """One full collection with whatever is alive (the benchmark holds the big graph when this runs)."""
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        gc.collect()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def bench_denial_with_chain(run_dir: Path) -> tuple[float, int]:
    """A whole denial after 29 (subject, file) relays from a read of .env: with one taint per run, its path is
    the read, the subject that made it, and the subject that connects."""
    policy = load_policy(shipped_policy("default"))
    m = Monitor(policy, agent=policy.agents["coder"], log=EventLog(run_dir / "chain.db"))
    m.decide(Request("read", ".env", subject="r0"))
    for i in range(29):
        m.decide(Request("write", f"src/relay{i}.txt", subject=f"r{i}"))
        m.decide(Request("read", f"src/relay{i}.txt", subject=f"r{i + 1}"))
    denial = Request("connect", "smtp.gmail.com:587", subject="r29")
    d = m.decide(denial)
    assert not d.allowed and d.path[0].source == "file:.env", d.explanation
    return per_call_us(lambda: m.decide(denial), 200) / 1000, len(d.path)


# ----------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--quick", action="store_true", help="smaller counts: a smoke run")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiles of missed goals")
    args = parser.parse_args(argv)
    n = 2000 if args.quick else 10000
    events = 100_000 if args.quick else 1_000_000

    rows: list[tuple[str, str, str]] = []  # (what, value, goal)
    misses: list[tuple[str, Callable[[], object]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        run_dir = Path(tmp)
        d = Decisions(run_dir, n)
        cases = [
            ("read, repeated, agent grants", d.repeated("read", "src/app.py", token=False)),
            ("connect, repeated, agent grants", d.repeated("connect", "https://api.anthropic.com", token=False)),
            ("read, repeated, token", d.repeated("read", "src/app.py", token=True)),
            ("connect, repeated, token", d.repeated("connect", "https://api.anthropic.com", token=True)),
        ]
        for label, run in cases:
            us = per_call_us(run, n)
            rows.append((f"decide: {label}", f"{us:.1f} µs", f"<= {GOAL_REPEATED_US:g} µs"))
            if us > GOAL_REPEATED_US:
                misses.append((f"decide: {label} x{n}", lambda run=run: [run() for _ in range(n)]))
        busy = d.with_streams(1000)
        request = Request("read", "src/app.py")
        busy.decide(request)
        rows.append(("decide: read, repeated, agent grants, 1,000 open streams (taint stable)",
                     f"{per_call_us(lambda: busy.decide(request), n):.1f} µs", f"<= {GOAL_REPEATED_US:g} µs"))
        for count in (0, 100, 1000):
            rows.append((f"decide: first read raising the taint to `internal`, {count:,} open streams re-decided "
                         "(all still cleared)", f"{d.taint_rise_us(count, 'src/app.py'):.0f} µs", ""))
        rows.append(("decide: read of `.env` cutting 100 open streams (100 denials committed)",
                     f"{d.taint_rise_us(100, '.env', rounds=5) / 1000:.1f} ms", ""))
        for label, token in (("agent grants", False), ("token", True)):
            us = each_once_us(d.first_seen(token, n))
            rows.append((f"decide: read, first-seen paths, {label}", f"{us:.1f} µs", f"<= {GOAL_FIRST_SEEN_US:g} µs"))
            if us > GOAL_FIRST_SEEN_US:
                calls = d.first_seen(token, n)
                misses.append((f"decide: read, first-seen paths, {label} x{n}", lambda c=calls: [f() for f in c]))

        cedar, cedar_note = bench_cedar(n)
        for label, us in cedar.items():
            rows.append((f"cedarpy is_authorized: {label}", f"{us:.1f} µs", ""))
        rows.append(("floor: dict lookup (op, path)", f"{bench_dict_floor(n) * 1000:.0f} ns", ""))

        pause_without = gc_pause_ms()
        g = bench_graph(events)
        rows.append((f"provenance: {events:,} record() calls", f"{g['seconds']:.2f} s", f"<= {GOAL_EVENTS_S:g} s"))
        rows.append((f"provenance: peak RSS growth ({g['nodes']:,} nodes, {g['edges']:,} edges, "
                     f"{g['origins']:,} origins)", f"{g['rss_growth_mb']:.0f} MB", f"<= {GOAL_EVENTS_MB:g} MB"))
        rows.append((f"provenance: tracemalloc peak, {events // 10:,} events",
                     f"{g['traced_peak_mb_tenth']:.0f} MB", ""))
        if g["seconds"] > GOAL_EVENTS_S * events / 1_000_000:
            sample = list(workload(200_000, seed=13))

            def replay(sample=sample):
                graph = ProvenanceGraph()
                for args_ in sample:
                    graph.record(*args_)

            misses.append(("ProvenanceGraph.record x200,000", replay))
        explain_ms, hops = bench_explain(g["graph"])
        rows.append((f"explain(): {hops}-hop chain in the {events:,}-event graph", f"{explain_ms * 1000:.1f} µs",
                     f"<= {GOAL_EXPLAIN_MS:g} ms"))
        rows.append((f"full gc.collect() pause with the {events:,}-event graph alive",
                     f"{gc_pause_ms():.0f} ms (without it: {pause_without:.0f} ms)", ""))
        rows.append(("decide: denial, nothing to explain (committed to the log)",
                     f"{bench_plain_denial(run_dir):.0f} µs", ""))
        denial_ms, path_len = bench_denial_with_chain(run_dir)
        rows.append((f"decide: denial explaining a {path_len}-hop path (logged)", f"{denial_ms * 1000:.0f} µs", ""))
        del g

        header = f"Monitor benchmark - Python {platform.python_version()}, {platform.machine()}, " \
                 f"{platform.system()}; {cedar_note}"
        print_table(header, rows, args.markdown)
        if misses and not args.no_profile:
            print()
            for label, run in misses:
                print(profile(label, run))
                print()
    return 0


def print_table(header: str, rows: list[tuple[str, str, str]], markdown: bool) -> None:
    if markdown:
        print(f"_{header}_\n")
        print("| measurement | result | goal |")
        print("|---|---:|---:|")
        for what, value, goal in rows:
            print(f"| {what} | {value} | {goal} |")
        return
    print(header)
    width = max(len(r[0]) for r in rows)
    for what, value, goal in rows:
        print(f"  {what:<{width}}  {value:>10}  {goal}")


if __name__ == "__main__":
    sys.exit(main())
