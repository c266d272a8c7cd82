"""Everyday developer workloads: native vs bare FUSE binding vs mediated mount, side by side in one run.

    .venv/bin/python bench/bench_workloads.py [--files 5500] [--rounds 3] [--binding mfusepy3] [--backing DIR]
        [--columns bare,mediated,vm/plain,vm/mediated,mfusepy3/naive,pyfuse3/naive] [--only "tar x,rm -rf"]

The workloads of issue 16 on a synthetic project tree (N Python-like source files in nested packages plus a
tarball, scaled to run in minutes here), each on a backing directory on tmpfs (/dev/shm; `--backing DIR` for
another filesystem, e.g. the disk a real project lives on):
  tar x        extract the project's tarball
  find|grep    `find . -name '*.py' | xargs grep -l needle`, then again (every open a repeat of a decision:
               what issue 16 calls a warm path)
  rsync -a     copy the extracted tree to a sibling directory
  rm -rf       delete both copies
  sqlite       2,000 single-row transactions (rollback journal: a create/write/unlink per commit)
  git clone    `git clone --no-local` of a 300-commit repository into the workspace
  git status   first `git status` after mounting (cold: the kernel's caches of the mount are empty), then warm
  git log -p   the whole history with patches
  git gc       repack the clone
  pip install  `pip install --no-index --find-links` of a local wheel into a target directory
Columns, each a fresh mount of the same backing directory (bench_fuse's daemons, one process each):
  native    the backing directory itself
  bare      `EnforcingFS` without a monitor: containment, no decisions (the binding's own cost)
  mediated  `EnforcingFS` with the reference monitor on policies/default.flow, agent `coder`
  vm/plain, vm/mediated  the same workloads run by this file inside the microVM (`vm_pass`: booted as `ifc run`
            boots it, the agent's uid; TCG here), the workspace exported over virtiofs as the backing directory
            itself (plain: what a sandbox without mediation gives) or as the mount daemon's view (mediated:
            every run); issue 16's in-VM goal is mediated <= 1.2x plain
and, named BINDING/MODE in `--columns`, any of bench_fuse's daemons (each a binding's cost without
containment): `mfusepy3/naive` a textbook path-API passthrough on mfusepy; `pyfuse3/naive` the low-level-API
passthrough of bench/pyfuse3_passthrough.py (inodes, READDIRPLUS; pyfuse3, the `lowlevel` extra) on trio,
`pyfuse3/asyncio` the same on asyncio; `passthrough_hp/passthrough` and `passthrough_hp/nopassthrough`
libfuse's compiled example daemon with and without FUSE passthrough (the binary's path in
$IFC_BENCH_PASSTHROUGH_HP; libfuse >= 3.16, built from source); `mfusepy3/longttl` and `mfusepy3/writeback`
mediated with 1-day timeouts or the writeback cache (docs/benchmarks.md, issue 16 part 2).
Rounds alternate the columns, so drift on this shared machine hits all alike; the table shows medians and
ratios to native (1.00 = native; issue 16's goal is <= 1.5), and mediated to its baseline (bare, vm plain).
`--markdown` prints the same as a Markdown table (what bench_revisions.py compares between two trees).
`--only` runs some workloads, in the order above, for more rounds in the same time (a VM round is a boot, and
the guest's noise needs many); what a chosen workload needs is run too, untimed (`NEEDS`: the tree `tar x`
makes, the clone the git workloads read).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
POLICY = HERE.parent / "policies" / "default.flow"
GUEST_BENCH, GUEST_INPUTS = "/opt/ifc-bench", "/opt/ifc-bench-inputs"  # read-only layers in the VM
GUEST_TIMES = "src/bench-times.json"  # where the guest leaves its pass's seconds (in the workspace)
VM_UID = 1000  # the agent's uid in the VM (never root), owner of the backing tree and inputs for its columns

GIT = ["git", "-c", "user.name=b", "-c", "user.email=b@b", "-c", "gc.auto=0", "-c", "init.defaultBranch=main"]
QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}


def input_paths(base: str) -> dict[str, str]:
    return {"tar": f"{base}/project.tar", "repo": f"{base}/repo", "wheels": f"{base}/wheels",
            "gitconfig": f"{base}/gitconfig"}


def make_inputs(base: str, files: int) -> dict[str, str]:
    """A source tree as a tarball, a repository with history, and a wheel: built once, outside every mount.
    The git config lets the workloads' git read the repository whoever owns it (root here, the agent in the
    VM; git takes `safe.directory` only from a global or system config)."""
    os.makedirs(base)
    Path(f"{base}/gitconfig").write_text("[safe]\n\tdirectory = *\n")
    tree = f"{base}/project"
    for i in range(files):
        pkg = f"{tree}/pkg{i % 40:02d}/sub{i % 7}"
        os.makedirs(pkg, exist_ok=True)
        with open(f"{pkg}/mod{i:05d}.py", "w") as handle:
            handle.write(f'"""Module {i}."""\n\n' + "".join(f"def f{j}(x):\n    return x * {j} + {i}\n\n"
                                                               for j in range(20)))
    with tarfile.open(f"{base}/project.tar", "w") as tar:
        tar.add(tree, arcname="project")
    repo = f"{base}/repo"
    subprocess.run([*GIT, "init", "-q", repo], **QUIET)
    for c in range(300):
        path = f"{repo}/src/m{c % 60:02d}.py"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as handle:
            handle.write(f"value_{c} = {c}\n")
        subprocess.run([*GIT, "-C", repo, "add", "-A"], **QUIET)
        subprocess.run([*GIT, "-C", repo, "commit", "-qm", f"change {c}"], **QUIET)
    wheel = f"{base}/wheels/greeting-1.0-py3-none-any.whl"
    os.makedirs(os.path.dirname(wheel))
    with zipfile.ZipFile(wheel, "w") as whl:
        for i in range(200):
            whl.writestr(f"greeting/m{i:03d}.py", f"X = {i}\n")
        whl.writestr("greeting/__init__.py", "")
        whl.writestr("greeting-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: greeting\nVersion: 1.0\n")
        whl.writestr("greeting-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr("greeting-1.0.dist-info/RECORD", "")
    return input_paths(base)


def sqlite_commits(db_path: str, n: int = 2000) -> None:
    import sqlite3

    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    for i in range(n):
        db.execute("BEGIN")
        db.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
        db.execute("COMMIT")
    db.close()


def workloads(root: str, inputs: dict[str, str]) -> list[tuple[str, Callable[[], object]]]:
    """Every step works under src/ (the default policy's agent may create, write and delete there)."""
    w = f"{root}/src/w"
    clone = f"{w}/clone"
    git = [*GIT, "-C", clone]
    run = {**QUIET, "env": {**os.environ, "GIT_CONFIG_GLOBAL": inputs["gitconfig"]}}
    grep = f"cd {w}/project && find . -name '*.py' -print0 | xargs -0 grep -l needle || true"
    return [
        ("git clone", lambda: subprocess.run([*GIT, "clone", "-q", "--no-local", inputs["repo"], clone], **run)),
        ("git status (cold)", lambda: subprocess.run([*git, "status", "--porcelain"], **run)),
        ("git status (warm)", lambda: subprocess.run([*git, "status", "--porcelain"], **run)),
        ("git log -p", lambda: subprocess.run([*git, "log", "-p"], **run)),
        ("git gc", lambda: subprocess.run([*git, "gc", "-q"], **run)),
        ("tar x", lambda: subprocess.run(["tar", "xf", inputs["tar"], "-C", w], **run)),
        ("find|grep", lambda: subprocess.run(grep, shell=True, **run)),
        ("find|grep (again)", lambda: subprocess.run(grep, shell=True, **run)),
        ("rsync -a", lambda: subprocess.run(["rsync", "-a", f"{w}/project/", f"{w}/copy/"], **run)),
        ("rm -rf", lambda: subprocess.run(["rm", "-rf", f"{w}/project", f"{w}/copy"], **run)),
        ("sqlite", lambda: sqlite_commits(f"{w}/app.db")),
        ("pip install", lambda: subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--disable-pip-version-check",
             "--find-links", inputs["wheels"], "--target", f"{w}/site", "greeting"], **run)),
    ]


# What each workload reads that an earlier one makes: run, untimed, when only the later one is chosen.
NEEDS = {"git status (cold)": "git clone", "git status (warm)": "git status (cold)", "git log -p": "git clone",
         "git gc": "git clone", "find|grep": "tar x", "find|grep (again)": "find|grep", "rsync -a": "tar x",
         "rm -rf": "tar x"}


def needed(only: list[str]) -> set[str]:
    todo, out = list(only), set()
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo += [NEEDS[name]] if name in NEEDS else []
    return out


def one_pass(root: str, inputs: dict[str, str], only: list[str] | None = None) -> dict[str, float]:
    w = f"{root}/src/w"
    shutil.rmtree(w, ignore_errors=True)  # through the same view the pass measures
    os.makedirs(w)
    out = {}
    run = needed(only) if only is not None else None
    for name, step in workloads(root, inputs):
        if run is not None and name not in run:
            continue
        t = time.perf_counter()
        step()
        if only is None or name in only:
            out[name] = time.perf_counter() - t
    shutil.rmtree(w)
    return out


def vm_pass(mode: str, src: str, inputs: str, run_dir: str, only: list[str] | None = None) -> dict[str, float]:
    """One pass inside a microVM booted as `ifc run` boots it (QEMU, virtiofsd, the guest init, the agent's
    uid), the workloads run by this file in the guest. `mediated`: the workspace is the mount daemon's view
    (`ifc mount`, default policy, agent `coder`) exported over virtiofs, as in every run; `plain`: the same VM
    and virtiofsd options with the backing directory itself exported and no daemon, i.e. what a sandbox
    without mediation would give. The inputs and this file reach the guest as read-only layers."""
    from bench.stdin import no_terminal_stdin
    from vmm import launch
    from vmm.sandbox import Share, Workspace

    argv = ["/usr/bin/python3", f"{GUEST_BENCH}/{Path(__file__).name}", "--guest", GUEST_INPUTS]
    spec = launch.RunSpec(argv=argv + (["--only", ",".join(only)] if only else []),
                          workspace=Path(src), run_dir=Path(run_dir), policy=POLICY, agent="coder", uid=VM_UID,
                          gid=VM_UID, layers=(Share(HERE, GUEST_BENCH), Share(Path(inputs), GUEST_INPUTS)),
                          notice=lambda line: None)
    real = launch.start_workspace
    if mode == "plain":  # the backing directory as the workspace (it is not empty, so the run's rmdir of it fails)
        launch.start_workspace = lambda spec, helpers: Workspace(Path(src), None, None, None)
    try:
        with no_terminal_stdin():
            result = launch.run(spec)
    finally:
        launch.start_workspace = real
    times = Path(src, GUEST_TIMES)
    if result.status != 0 or not times.exists():
        raise RuntimeError(f"vm/{mode}: the guest's pass failed (status {result.status}, {result.failure}); "
                           f"see {run_dir}/console.log and {run_dir}/mount.log")
    out = json.loads(times.read_text())
    times.unlink()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--binding", default="mfusepy3")
    parser.add_argument("--columns", default="bare,mediated",
                        help="the columns after native: MODE (with --binding), BINDING/MODE, or vm/plain and "
                             "vm/mediated (in the microVM), comma-separated")
    parser.add_argument("--quick", action="store_true", help="800 files, one round")
    parser.add_argument("--backing", default="/dev/shm",
                        help="the directory the backing tree and inputs are made in (its filesystem is native's)")
    parser.add_argument("--markdown", action="store_true",
                        help="a Markdown table (seconds per column; bench_revisions.py reads it)")
    parser.add_argument("--only", metavar="NAMES", help="only these workloads, comma-separated (names as in the "
                                                         "table; what they need runs untimed, the rest not at all)")
    parser.add_argument("--guest", metavar="INPUTS", help=argparse.SUPPRESS)  # in the VM: one pass on /workspace
    args = parser.parse_args()
    only = args.only.split(",") if args.only else None
    known = [name for name, _ in workloads("/", input_paths("/"))]
    if only is not None and not set(only) <= set(known):
        parser.error(f"--only: no workload named {', '.join(sorted(set(only) - set(known)))} "
                     f"(the workloads: {', '.join(known)})")
    if args.guest:
        times = one_pass("/workspace", input_paths(args.guest), only)
        Path("/workspace", GUEST_TIMES).write_text(json.dumps(times))
        return 0
    if args.quick:
        args.files, args.rounds = 800, 1
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        print("bench_workloads: skipped: needs root and /dev/fuse")
        return 0
    columns = [c if "/" in c else f"{args.binding}/{c}" for c in args.columns.split(",")]
    if any(c.startswith("pyfuse3/") for c in columns):
        try:
            import pyfuse3  # noqa: F401
        except ImportError:
            print("bench_workloads: skipped: the pyfuse3 column needs `pip install -e .[lowlevel]` (pyfuse3; "
                  "it builds against libfuse3: `apt-get install libfuse3-dev pkg-config gcc`)")
            return 0
    if any(c.startswith("passthrough_hp/") for c in columns) and not os.access(
            os.environ.get("IFC_BENCH_PASSTHROUGH_HP", ""), os.X_OK):
        print("bench_workloads: skipped: the passthrough_hp columns need $IFC_BENCH_PASSTHROUGH_HP, the path of "
              "libfuse's example/passthrough_hp built from libfuse >= 3.16's source (meson, ninja, g++)")
        return 0
    if any(c.startswith("vm/") for c in columns):
        from vmm import image, launch

        missing = launch.qemu_missing()
        try:
            image.current()
        except image.ImageError as exc:
            missing = missing or f"{exc.message} ({exc.help})"
        if missing:
            print(f"bench_workloads: skipped: the vm columns need the microVM: {missing}")
            return 0
    for tool in ("git", "tar", "rsync"):
        if not shutil.which(tool):
            print(f"bench_workloads: skipped: `{tool}` is not installed (scripts/sysdeps.sh installs it)")
            return 0
    from bench_fuse import Mount  # the same daemons, one process each (not needed in the guest)

    base = tempfile.mkdtemp(prefix="ifc-bench-work-", dir=args.backing)
    src, mnt = f"{base}/backing", f"{base}/mnt"
    os.makedirs(f"{src}/src")
    os.makedirs(mnt)
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        inputs = make_inputs(f"{base}/inputs", args.files)
        if any(c.startswith("vm/") for c in columns):  # the agent in the VM is never root: it owns the tree
            subprocess.run(["chown", "-R", f"{VM_UID}:{VM_UID}", src, f"{base}/inputs"], check=True)
        for round_ in range(args.rounds):
            runs.setdefault("native", []).append(one_pass(src, inputs, only))
            for column in columns:
                binding, _, mode = column.partition("/")
                run_dir = tempfile.mkdtemp(prefix=f"run-{binding}-{mode}-", dir=base)
                if binding == "vm":
                    runs.setdefault(f"vm {mode}", []).append(vm_pass(mode, src, f"{base}/inputs", run_dir, only))
                    continue
                mount = Mount(mode, binding, src, mnt, run_dir)
                try:
                    name = mode if binding == args.binding and mode in ("bare", "mediated") else f"{binding} {mode}"
                    runs.setdefault(name, []).append(one_pass(mnt, inputs, only))
                finally:
                    mount.close()
            print(f"  done: round {round_ + 1} of {args.rounds}", file=sys.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    (markdown if args.markdown else table)(runs, args)
    return 0


def pairs(cols: list[str]) -> list[tuple[str, str]]:
    """The ratios a table shows: every column to native, and mediation's own cost where its baseline ran
    (mediated to bare on the host, mediated to plain virtiofs in the VM)."""
    out = [(c, "native") for c in cols[1:]]
    out += [(m, b) for m, b in (("mediated", "bare"), ("vm mediated", "vm plain")) if m in cols and b in cols]
    return out


def table(runs: dict[str, list[dict[str, float]]], args) -> None:
    medians = {col: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for col, rows in runs.items()}
    cols = list(medians)
    print(f"Workloads on a {args.files}-file tree in {args.backing}, binding {args.binding}, median of {args.rounds} "
          "round(s); seconds, and ratios (lower is better)")
    width = {c: max(12, len(c) + 2) for c in cols}  # named columns (BINDING MODE) are wider than the numbers
    ratio_width = {(a, b): len(a) + len(b) + 3 for a, b in pairs(cols)}
    print("workload".ljust(20) + "".join(c.rjust(width[c]) for c in cols)
          + "".join(f"{a}/{b}".rjust(w) for (a, b), w in ratio_width.items()))
    for name in medians["native"]:
        cells = "".join(f"{medians[c][name]:.3f}".rjust(width[c]) for c in cols)
        ratios = "".join(f"{medians[a][name] / medians[b][name]:.2f}x".rjust(w) for (a, b), w in ratio_width.items())
        print(name.ljust(20) + cells + ratios)


def markdown(runs: dict[str, list[dict[str, float]]], args) -> None:
    """The table of docs/benchmarks.md: seconds per column, then the ratios of `pairs`."""
    medians = {col: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for col, rows in runs.items()}
    cols = list(medians)
    ratios = pairs(cols)
    print(f"_Workloads on a {args.files}-file tree in {args.backing}, binding {args.binding}, median of "
          f"{args.rounds} round(s)_\n")
    print("| workload | " + " | ".join(f"{c} s" for c in cols) + " | "
          + " | ".join(f"{a}/{b}" for a, b in ratios) + " |")
    print("|---|" + "---:|" * (len(cols) + len(ratios)))
    for name in medians["native"]:
        print(f"| {name.replace('|', '+')} | " + " | ".join(f"{medians[c][name]:.3f}" for c in cols) + " | "
              + " | ".join(f"{medians[a][name] / medians[b][name]:.2f}x" for a, b in ratios) + " |")


if __name__ == "__main__":
    sys.exit(main())
