"""`ifc run --isolation namespace -- true`, end to end and in-process, beside `true` run directly.

    .venv/bin/python bench/bench_namespace.py [--runs 5]

true                `true` as a subprocess of this process: the floor
start to ready      `vmm.namespace.run(['true'])` in-process until the init hands over (FUSE daemon mounted,
                    namespaces and root built); median of --runs
namespace.run       the same call until it returns (agent run, init reaped, FUSE daemon stopped)
ifc run -- true     `python -m ifc run --isolation namespace --policy policies/default.flow -- true` wall
                    time (interpreter start, policy load, the above, the summary)
Needs root. Prints one table (milliseconds); checks no thresholds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
POLICY = ROOT / "policies" / "default.flow"


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench_namespace: `{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return elapsed


def in_process(ws: Path, run_dir: Path) -> tuple[float, float]:
    """(start to ready, total) of one `vmm.namespace.run`, stdin from /dev/null (no pty)."""
    from bench.stdin import no_terminal_stdin
    from vmm import namespace
    from vmm.sandbox import RunSpec

    spec = RunSpec(argv=["true"], workspace=ws, run_dir=run_dir, policy=POLICY, notice=lambda line: None)
    with no_terminal_stdin():
        result = namespace.run(spec)
    if result.status != 0:
        sys.exit(f"bench_namespace: `true` exited {result.status}; see {run_dir}")
    return result.boot_seconds, result.total_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_namespace: needs root")
    samples: dict[str, list[float]] = {"true": [], "start to ready": [], "namespace.run": [], "ifc run -- true": []}
    with tempfile.TemporaryDirectory(prefix="ifc-bench-ns-") as tmp:
        ws = Path(tmp) / "ws"
        ws.mkdir()
        for i in range(args.runs):
            samples["true"].append(timed(["true"]))
            ready, total = in_process(ws, Path(tmp) / f"run{i}")
            samples["start to ready"].append(ready)
            samples["namespace.run"].append(total)
            samples["ifc run -- true"].append(timed([
                sys.executable, "-m", "ifc", "run", "--isolation", "namespace", "--policy", str(POLICY),
                "--workspace", str(ws), "--run-dir", str(Path(tmp) / f"cli{i}"), "--", "true"]))
    floor = statistics.median(samples["true"])
    print(f"{os.cpu_count()} CPUs, {args.runs} runs each; milliseconds")
    print(f"{'measure':<16}  {'median':>8}  {'min':>8}  {'max':>8}  {'x true':>8}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<16}  {median * 1e3:8.1f}  {min(values) * 1e3:8.1f}  {max(values) * 1e3:8.1f}  "
              f"{median / floor:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
