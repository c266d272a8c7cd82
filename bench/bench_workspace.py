"""Benchmark `ifc check --workspace`: audit a generated 10,000-file tree (goal: at most 1 s).

    .venv/bin/python bench/bench_workspace.py [--files N] [--runs R]

Prints the median of R runs of each row, side by side with two floors: a bare `os.scandir` walk that only
counts, and a find-equivalent that lists every path (`os.walk`). The `label only` row labels each listed
path with the policy and reads nothing. Every audit gets a freshly compiled policy, so the label cache
starts cold each time. The tree lives on tmpfs (/dev/shm) when there is one, so the page cache is warm.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from ifc.check.workspace import audit_workspace
from ifc.policy import load_policy, shipped_policy

WORDS = (
    "def",
    "return",
    "self",
    "value",
    "token_count",
    "cache_key",
    "user",
    "config",
    "import",
    "class",
    "password_hint",
    "for",
    "in",
    "range",
    "data",
    "result",
    "secret_santa",
    "print",
    "key",
    "items",
)


def _text(rng: random.Random, size: int) -> str:
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        out.append(line)
        n += len(line) + 1
    return "\n".join(out) + "\n"


def make_tree(root: Path, files: int, seed: int = 7) -> None:
    """A repository-shaped tree: nested source dirs, docs, a .git with objects, data, and a few secrets."""
    rng = random.Random(seed)
    top = ["src", "tests", "docs", "data/customers", "inbox", "node_modules/pkg", ".git/objects", "lib", "config"]
    exts = [".py", ".py", ".py", ".md", ".json", ".txt", ".ts", ".yaml"]
    dirs: list[Path] = []
    for t in top:
        for i in range(12):
            d = root / t / f"m{i:02d}" / f"sub{i % 3}"
            d.mkdir(parents=True, exist_ok=True)
            dirs.append(d)
    made = 0
    planted = {
        ".env": "API_KEY=abc\n",
        "config/prod.env": "X=1\n",
        "config/settings.py": 'AWS = "AKIAIOSFODNN7EXAMPLE"\n',
        "src/m01/sub1/keys.py": 'token = "ghp_' + "a1B2c3D4e5" * 4 + '"\n',
        "deploy/server.pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n",
    }
    for rel, body in planted.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body)
        made += 1
    while made < files:
        d = rng.choice(dirs)
        if d.parts[-3] == "objects":
            (d / f"{rng.getrandbits(64):016x}").write_bytes(rng.randbytes(rng.randint(100, 3000)))
        else:
            (d / f"f{made:05d}{rng.choice(exts)}").write_text(_text(rng, rng.randint(200, 4000)))
        made += 1


def scandir_count(root: str) -> int:
    n, stack = 0, [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    n += 1
    return n


def find_paths(root: str) -> list[str]:
    out = []
    for dirpath, _dirs, names in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out.extend(n if rel == "." else f"{rel}/{n}" for n in names)
    return out


def median_time(fn, runs: int, setup=lambda: None) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        arg = setup()
        t0 = time.perf_counter()
        result = fn(arg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    tmp = Path(tempfile.mkdtemp(prefix="ifc-bench-", dir=base))
    try:
        make_tree(tmp, args.files)
        root = str(tmp)
        policy_path = shipped_policy()
        floor, n = median_time(lambda _: scandir_count(root), args.runs)
        find_t, paths = median_time(lambda _: find_paths(root), args.runs)
        label_t, _ = median_time(
            lambda p: [p.file_label(x) for x in paths], args.runs, setup=lambda: load_policy(policy_path)
        )
        audit_t, audit = median_time(
            lambda p: audit_workspace(p, tmp), args.runs, setup=lambda: load_policy(policy_path)
        )
        rows = [
            ("os.scandir walk, count only (floor)", floor),
            ("find-equivalent: os.walk listing paths", find_t),
            ("label only: file_label per listed path", label_t),
            ("audit_workspace (walk + label + scan)", audit_t),
        ]
        print(f"{n} files under {'tmpfs ' if base else ''}{tmp}, median of {args.runs} runs")
        print(
            f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus, "
            f"{platform.platform(terse=True)}"
        )
        print()
        print(f"{'':44} {'ms':>9} {'x floor':>8} {'µs/file':>8}")
        for name, t in rows:
            print(f"{name:44} {t * 1000:9.1f} {t / floor:8.1f} {t / n * 1e6:8.2f}")
        print()
        print(
            f"audit: {audit.total} files, {len(audit.counts)} labels, {len(audit.diagnostics)} findings, "
            f"{len(audit.skipped)} skipped; goal <= 1000 ms: {'met' if audit_t <= 1 else 'not met'}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
