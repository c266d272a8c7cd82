"""Where one mount's daemon spends its time while bench_workloads' workloads run through it.

    .venv/bin/python bench/profile_mount.py [--mode mediated] [--files 800] [--tool cpu]
        [--workloads "tar x,rsync -a,rm -rf"] [--out FILE]

Mounts the backing directory with one of bench_fuse's daemons (`--mode bare|mediated|...`, `--binding`), runs
the chosen workloads of bench_workloads.py through it (the steps before them run too, unmeasured, so each finds
what it needs: `rsync -a` the extracted tree), and reports per workload, with `--tool`:
  cpu      wall time and the daemon's CPU time (all threads, user and system: /proc/PID/stat)
  sql      every SQLite statement the daemon runs, counted by its first words and database file
  py-spy   a py-spy `raw` profile of the daemon (500 Hz, --nonblocking) into --out, and the frames most often
           on its stacks
  strace   `strace -c -f` of the daemon into --out (system calls by count)
docs/benchmarks.md (issue 16, part 3) has what these showed and what changed because of them.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_fuse  # the daemons
import bench_workloads  # the workloads


def serve_counting_sql(out: str, *serve_args: str) -> None:
    """The daemon of `bench_fuse.serve`, every SQLite statement it runs counted into `out` (rewritten every
    0.2 s: the daemon is stopped with a signal, so the counts are there when it dies)."""
    counts: collections.Counter = collections.Counter()
    connect = sqlite3.connect

    def counting(*args, **kwargs):
        db = connect(*args, **kwargs)
        name = os.path.basename(str(args[0]))
        db.set_trace_callback(lambda sql: counts.update([(name, " ".join(sql.split()[:3]))]))
        return db

    def dump() -> None:
        while True:
            time.sleep(0.2)
            lines = [f"{n}\t{db}\t{sql}\n" for (db, sql), n in counts.most_common()]
            with open(out + ".tmp", "w") as handle:
                handle.writelines(lines)
            os.replace(out + ".tmp", out)

    sqlite3.connect = counting
    threading.Thread(target=dump, daemon=True).start()
    bench_fuse.serve(*serve_args)


def _cpu(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _sql(path: str) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    if os.path.exists(path):
        for line in Path(path).read_text().splitlines():
            n, db, sql = line.split("\t")
            counts[(db, sql)] = int(n)
    return counts


def hottest(raw: str, top: int = 15) -> list[tuple[float, str]]:
    """(share of samples, frame) of the frames most often on the stack (inclusive), from py-spy's raw output."""
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in Path(raw).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for frame in {f.split(" (")[0] for f in stack.split(";") if not f.startswith("thread")}:
            inclusive[frame] += int(count)
    return [(n / total, frame) for frame, n in inclusive.most_common(top)] if total else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-counting-sql", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="mediated")
    parser.add_argument("--binding", default="mfusepy3")
    parser.add_argument("--files", type=int, default=800)
    parser.add_argument("--workloads", default="tar x,find|grep,rsync -a,rm -rf")
    parser.add_argument("--tool", choices=("cpu", "sql", "py-spy", "strace"), default="cpu")
    parser.add_argument("--out", default="daemon-profile.txt", help="py-spy's or strace's output file")
    args = parser.parse_args()
    if args.serve_counting_sql:
        serve_counting_sql(*args.serve_counting_sql)
        return 0
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        print("profile_mount: skipped: needs root and /dev/fuse")
        return 0
    tool = {"py-spy": shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
            "strace": shutil.which("strace")}.get(args.tool, "")
    if args.tool in ("py-spy", "strace") and not (tool and os.access(tool, os.X_OK)):
        print(f"profile_mount: skipped: `{args.tool}` is not installed")
        return 0
    chosen = args.workloads.split(",")
    base = tempfile.mkdtemp(prefix="ifc-profile-", dir="/dev/shm")
    src, mnt, run_dir = f"{base}/backing", f"{base}/mnt", f"{base}/run"
    for d in (f"{src}/src", mnt, run_dir):
        os.makedirs(d)
    sql_out = f"{run_dir}/sql-counts.tsv"
    daemon = [sys.executable, __file__, "--serve-counting-sql", sql_out] if args.tool == "sql" else None
    try:
        inputs = bench_workloads.make_inputs(f"{base}/inputs", args.files)
        mount = bench_fuse.Mount(args.mode, args.binding, src, mnt, run_dir, daemon=daemon)
        watcher = None
        try:
            pid = mount.proc.pid
            if args.tool == "py-spy":
                watcher = subprocess.Popen([tool, "record", "-p", str(pid), "-r", "500", "--format", "raw", "-o",
                                            args.out, "--threads", "--nonblocking"], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
            elif args.tool == "strace":
                watcher = subprocess.Popen([tool, "-c", "-f", "-o", args.out, "-p", str(pid)],
                                           stderr=subprocess.DEVNULL)
            time.sleep(1.0 if watcher else 0)  # attached before the first request
            os.makedirs(f"{mnt}/src/w")
            print(f"{args.binding} {args.mode}, {args.files} files; wall s, daemon CPU s (user + system)")
            for name, step in bench_workloads.workloads(mnt, inputs):
                before_sql, (user0, sys0), t = _sql(sql_out), _cpu(pid), time.perf_counter()
                step()
                wall, (user1, sys1) = time.perf_counter() - t, _cpu(pid)
                if name not in chosen:
                    continue
                print(f"  {name:18s} {wall:7.3f}  cpu {user1 - user0 + sys1 - sys0:6.2f} "
                      f"({user1 - user0:.2f} + {sys1 - sys0:.2f})")
                if args.tool == "sql":
                    time.sleep(0.5)  # the daemon's next dump
                    for (db, sql), n in (_sql(sql_out) - before_sql).most_common(12):
                        print(f"      {n:7d}  {db:10s} {sql}")
        finally:
            if watcher is not None:
                watcher.send_signal(signal.SIGINT)
                watcher.wait(60)
            mount.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.tool == "py-spy" and os.path.exists(args.out):
        for share, frame in hottest(args.out):
            print(f"  {share:6.1%}  {frame}")
    if args.tool in ("py-spy", "strace"):
        print(f"{args.tool}: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
