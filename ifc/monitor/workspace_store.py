"""Where a workspace's floated labels live: `STATE/workspaces/<id>/labels.db`, outside the workspace.

STATE is `$IFC_STATE_DIR`, else `$XDG_STATE_HOME/ifc`, else `~/.local/state/ifc` (of whoever runs the mount
daemon, root for `ifc run`). The sandbox never sees it: it is not under the workspace (refused if it
were, since the agent could then rewrite its own labels) and `ifc run` mounts only /usr and the workspace
into the sandbox. Why a store here and not `trusted.*` xattrs on the files: docs/architecture.md
("Labels across runs") and `bench/bench_labels.py`.

The id is a digest of the workspace's real path. The store also records the root directory's (device,
inode), so a workspace moved or renamed on the host finds its labels again instead of starting clean.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from pathlib import Path

from ifc.monitor.labelstore import LabelStore, LabelStoreError

STATE_ENV = "IFC_STATE_DIR"


def state_dir() -> Path:
    explicit = os.environ.get(STATE_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state") / "ifc"


def workspace_id(workspace: str | Path) -> str:
    return hashlib.sha256(os.path.realpath(workspace).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def store_path(workspace: str | Path) -> Path:
    """The label store of `workspace` (not created). A workspace moved on the host keeps its store: one
    whose recorded root inode is this directory's, and whose recorded path no longer is, is moved over."""
    root = os.path.realpath(workspace)
    home = state_dir() / "workspaces"
    path = home / workspace_id(root) / "labels.db"
    resolved = os.path.realpath(home)
    if resolved == root or resolved.startswith(root.rstrip("/") + "/"):
        raise LabelStoreError(f"the label store `{home}` is inside the workspace `{root}`: the agent could "
                              f"rewrite its own labels (set {STATE_ENV} to a directory outside it)")
    if not path.exists() and home.is_dir():
        moved = _moved_store(home, root)
        if moved is not None:
            os.replace(moved.parent, path.parent)
    return path


def open_store(workspace: str | Path, run: str | None = None) -> LabelStore:
    """The workspace's label store, made if needed (directories 0700: labels say which files hold what)."""
    root = os.path.realpath(workspace)
    path = store_path(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise LabelStoreError(f"cannot make the label store directory `{path.parent}`: {exc.strerror}") from None
    store = LabelStore(path, root=root, run=run, durable=True)
    st = os.stat(root)
    store.set_meta(workspace=root, root_dev=str(st.st_dev), root_ino=str(st.st_ino))
    return store


def _moved_store(home: Path, root: str) -> Path | None:
    """A store recorded for this very directory (same device and inode) under a path it no longer has."""
    st = os.stat(root)
    for candidate in sorted(home.glob("*/labels.db")):
        try:
            with contextlib.closing(sqlite3.connect(candidate.resolve().as_uri() + "?mode=ro", uri=True)) as db:
                meta = dict(db.execute("SELECT key, value FROM meta"))
        except sqlite3.Error:
            continue
        if meta.get("root_dev") != str(st.st_dev) or meta.get("root_ino") != str(st.st_ino):
            continue
        try:
            old = os.stat(meta.get("workspace", ""))
            if (old.st_dev, old.st_ino) == (st.st_dev, st.st_ino):
                continue  # still there: another name of this directory, or the same inode number elsewhere
        except OSError:
            pass
        return candidate
    return None
