"""Before/after in one run: a benchmark of this checkout side by side with the same benchmark of another.

    git worktree add /tmp/ifc-base <commit>
    python bench/bench_revisions.py --base /tmp/ifc-base bench/bench_monitor.py -- --quick --no-profile
    python bench/bench_revisions.py --base /tmp/ifc-base bench/bench_egress.py -- --quick

Each tree runs its *own* copy of the benchmark (a benchmark may use APIs the other revision lacks) with its
own code first on `sys.path` (and so in every `python -m ifc` it starts), `--markdown` added. The rounds
alternate base, current, base, current, ... so a slow moment of this shared machine hits both sides. Rows are
matched by their text; the table shows each side's median and current/base. A row only one side has shows a
dash on the other. No thresholds: the benchmarks print their goals. Stopped (Ctrl-C, or SIGTERM from `timeout`),
it prints the table of the rounds both sides completed, so a long run that is cut short still says something.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def run_once(tree: Path, script: str, args: list[str]) -> dict[str, str]:
    """{row: value} from the benchmark's Markdown table; with several value columns, one entry per column
    (`row [column]`); the goal column is left out."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, str(tree / script), "--markdown", *args], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"bench_revisions: error: {script} failed in {tree} (exit {proc.returncode}): "
                         f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    rows: dict[str, str] = {}
    header: list[str] = []
    for line in proc.stdout.splitlines():
        if not line.startswith("|"):
            header = []
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header:
            header = cells
            continue
        if all(set(c) <= set("-: ") for c in cells):
            continue
        values = [(name, cell) for name, cell in zip(header[1:], cells[1:], strict=False)
                  if name.lower() != "goal" and cell]
        for name, cell in values:
            rows[cells[0] if len(header) <= 3 else f"{cells[0]} [{name}]"] = cell
    return rows


def number(text: str) -> float | None:
    m = NUMBER.search(text)
    return float(m.group().replace(",", "")) if m else None


def median_text(samples: list[str]) -> str:
    """The sample whose number is the median (keeps its unit), or the first when none is numeric."""
    numeric = [(number(s), s) for s in samples if number(s) is not None]
    if not numeric:
        return samples[0]
    numeric.sort()
    return numeric[len(numeric) // 2][1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, type=Path, help="a checkout of the revision to compare against")
    ap.add_argument("--rounds", type=int, default=2, help="runs per side, alternating (default 2)")
    ap.add_argument("script", help="the benchmark, relative to each tree (e.g. bench/bench_monitor.py)")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then the benchmark's own arguments")
    ns = ap.parse_args()
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    base = ns.base.resolve()
    if not (base / ns.script).is_file():
        print(f"bench_revisions: error: {base / ns.script} does not exist", file=sys.stderr)
        return 2
    samples: dict[str, dict[str, list[str]]] = {"base": {}, "current": {}}
    order: list[str] = []
    rounds = 0
    signal.signal(signal.SIGTERM, _stop)
    try:
        for _ in range(ns.rounds):
            for side, tree in (("base", base), ("current", HERE)):
                for what, value in run_once(tree, ns.script, args).items():
                    samples[side].setdefault(what, []).append(value)
                    if what not in order:
                        order.append(what)
            rounds += 1
    except KeyboardInterrupt:
        print(f"bench_revisions: stopped after {rounds} complete round(s) of {ns.rounds}", file=sys.stderr)
        if not rounds:
            return 1
        for side in samples.values():  # a round one side did not finish is left out
            for what in side:
                del side[what][rounds:]
    head = git_head(base), git_head(HERE)
    print(f"_{ns.script} {' '.join(args)}: base {head[0]} vs current {head[1]}, {rounds} alternating "
          "rounds each, median shown_\n")
    print("| measurement | base | current | current/base |")
    print("|---|---:|---:|---:|")
    for what in order:
        b = samples["base"].get(what)
        c = samples["current"].get(what)
        bt, ct = (median_text(b) if b else "—"), (median_text(c) if c else "—")
        ratio = ""
        if b and c and number(bt) and number(ct) is not None and _unit(bt) == _unit(ct):
            ratio = f"{number(ct) / number(bt):.2f}"
        print(f"| {what} | {bt} | {ct} | {ratio} |")
    return 0


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (`timeout`) stops as Ctrl-C does: with the rounds so far


def _unit(text: str) -> str:
    return NUMBER.sub("", text).strip()


def git_head(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (out.stdout.strip() or "?") + ("+changes" if dirty else "")


if __name__ == "__main__":
    sys.exit(main())
