"""Where a workspace's floated labels should live, measured: `trusted.*` xattrs on the backing files, or
the SQLite store under the user's state directory (`ifc.monitor.workspace_store`, the one we use).

    sudo .venv/bin/python bench/bench_labels.py [--labels N] [--ops K] [--dir DIR] [--markdown]

Per operation, the cost the label store adds on top of the filesystem operation itself (the rename or
link(2) happens either way): raise (durable and not), rename, link, delete, lookup of a labelled and of an
unlabelled path (first lookup in a fresh process state = cold, repeated = warm), then opening a store
holding N labels at the start of a run and listing all N (`ifc labels`). Median µs per op over K ops.
The tree lives in DIR (default: a temporary directory on the same filesystem as /tmp). Needs root
(`trusted.*` needs CAP_SYS_ADMIN).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from ifc.monitor.labelstore import LabelStore, encode
from ifc.policy.labels import Label

ATTR = "trusted.ifc.label"
SECRET = Label(frozenset({"internal", "secret"}), 1)


def _per_op(fn, items) -> float:
    """Median µs of fn(item) over items, in 10 batches (a single call is below the timer's resolution)."""
    items = list(items)
    size = max(1, len(items) // 10)
    samples = []
    for i in range(0, len(items), size):
        batch = items[i:i + size]
        start = time.perf_counter()
        for item in batch:
            fn(item)
        samples.append((time.perf_counter() - start) / len(batch) * 1e6)
    return statistics.median(samples)


def _once(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _tree(root: Path, n: int) -> list[str]:
    names = [f"d{i % 100}/f{i}.txt" for i in range(n)]
    for i in range(100):
        (root / f"d{i}").mkdir()
    for name in names:
        (root / name).write_bytes(b"x")
    return names


def _xattr_get(path: str):
    try:
        return os.getxattr(path, ATTR)
    except OSError:
        return None


def xattr_rows(root: Path, names: list[str], ops: int) -> dict[str, float | str]:
    full = [str(root / n) for n in names]
    value = json.dumps({"label": encode(SECRET), "run": "/tmp/ifc-run-x", "subject": "session",
                        "command": "cp .env notes.txt", "source": "secret from .env"}).encode()
    rows: dict[str, float | str] = {}
    rows["raise (no fsync)"] = _per_op(lambda p: os.setxattr(p, ATTR, value), full[:ops])

    def durable(p):
        os.setxattr(p, ATTR, value)
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    rows["raise (durable: + fsync)"] = _per_op(durable, full[ops:2 * ops])
    rows["rename (store's share)"] = "0 (rides the inode)"
    rows["link (store's share)"] = "0 (rides the inode)"
    rows["delete (store's share)"] = "0 (goes with the file)"
    for p in full:
        os.setxattr(p, ATTR, value)
    rows["lookup labelled, cold"] = _per_op(_xattr_get, full[:ops])
    rows["lookup labelled, warm"] = _per_op(_xattr_get, full[:ops])  # no cache of its own: a syscall each time
    plain = [str(root / f"plain{i}") for i in range(ops)]
    for p in plain:
        Path(p).write_bytes(b"x")
    rows["lookup unlabelled"] = _per_op(_xattr_get, plain)
    rows[f"open at start, {len(names)} labels (ms)"] = "0 (lazy)"

    def walk():
        found = 0
        for d, _, files in os.walk(root):
            for f in files:
                found += _xattr_get(os.path.join(d, f)) is not None
        assert found == len(names)

    rows[f"list all {len(names)} (ms)"] = _once(walk)
    for p in full:
        os.removexattr(p, ATTR)
    return rows


def sqlite_rows(root: Path, db: Path, names: list[str], ops: int) -> dict[str, float | str]:
    rows: dict[str, float | str] = {}
    fast = LabelStore(db.with_suffix(".normal.db"), root=root)
    rows["raise (no fsync)"] = _per_op(lambda n: fast.raise_to(n, SECRET), names[:ops])
    fast.close()
    store = LabelStore(db, root=root, durable=True)
    rows["raise (durable: + fsync)"] = _per_op(lambda n: store.raise_to(n, SECRET), names[ops:2 * ops])
    for n in names[2 * ops:]:
        store.raise_to(n, SECRET)
    moved = names[ops:2 * ops]
    rows["rename (store's share)"] = _per_op(lambda n: store.rename(n, n + ".moved"), moved)
    rows["link (store's share)"] = _per_op(lambda n: store.link(n + ".moved", n), moved)
    rows["delete (store's share)"] = _per_op(store.delete, [n + ".moved" for n in moved])  # the link keeps it
    store.close()
    fresh = LabelStore(db, root=root, durable=True)
    rows["lookup labelled, cold"] = _per_op(fresh.get, names[2 * ops:3 * ops])
    rows["lookup labelled, warm"] = _per_op(fresh.get, names[2 * ops:3 * ops])
    plain = [f"plain{i}" for i in range(ops)]
    rows["lookup unlabelled"] = _per_op(fresh.get, plain)  # a stat: is it a labelled file under a new name?
    fresh.close()
    rows[f"open at start, {len(names)} labels (ms)"] = _once(lambda: LabelStore(db, root=root).close())
    reader = LabelStore(db, root=root)
    rows[f"list all {len(names)} (ms)"] = _once(lambda: len(reader.snapshot()) and reader.history())
    reader.close()
    return rows


NOTES = [
    ("kill -9 mid-change", "each setxattr is atomic", "one transaction per change (tested)"),
    ("power loss", "needs fsync of each file", "FULL: fsync per commit, not a delete's"),
    ("rename/link on host", "followed (inode)", "followed: adopted by inode"),
    ("inode reused", "n/a (attr dies with inode)", "over-labels (safe); --lower"),
    ("fs without xattrs", "no labels: must refuse", "any filesystem"),
    ("provenance + audit log", "≤ 4 KiB per inode (ext4); lost with the file", "unbounded; survives deletes"),
    ("sandbox access", "readable unless FUSE hides trusted.*", "not mounted in the sandbox"),
]


def cell(v) -> str:
    return f"{v:.1f}" if isinstance(v, float) else v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=10_000)
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (bench_revisions.py)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_labels: skipped: trusted.* xattrs need root")
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "ws"
        root.mkdir()
        names = _tree(root, args.labels)
        xattr = xattr_rows(root, names, args.ops)
        sqlite = sqlite_rows(root, Path(tmp) / "labels.db", names, args.ops)
    if args.markdown:
        print("| operation | trusted.* xattr | SQLite, state dir |\n|---|---:|---:|")
        for key in xattr:
            print(f"| {key} | {cell(xattr[key])} | {cell(sqlite[key])} |")
        return
    print(f"label store: {args.labels} labelled files, median µs per op over {args.ops} ops (ms where marked)\n")
    width = max(map(len, xattr)) + 2

    print("".ljust(width) + "trusted.* xattr".rjust(28) + "SQLite, state dir".rjust(34))
    for key in xattr:
        print(key.ljust(width) + cell(xattr[key]).rjust(28) + cell(sqlite[key]).rjust(34))
    print()
    for what, a, b in NOTES:
        print(what.ljust(width) + a.rjust(28)[:48] + b.rjust(34))


if __name__ == "__main__":
    main()
