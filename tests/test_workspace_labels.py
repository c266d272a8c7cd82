"""Floated labels belong to the workspace: they persist in one store per workspace under the user's state
directory, across runs, renames and hard links (made in the sandbox or on the host) and `kill -9`; every
change is one transaction; `ifc labels` explains each and records a declassification made by hand."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ifc.monitor.labelstore import LabelStore, LabelStoreError, Why
from ifc.monitor.workspace_store import STATE_ENV, open_store, state_dir, store_path
from ifc.policy.labels import Label

ROOT = Path(__file__).resolve().parent.parent
SECRET = Label(frozenset({"internal", "secret"}), 1)
INTERNAL = Label(frozenset({"internal"}), 1)
CUSTOMER = Label(frozenset({"customer"}), 1)


def _ifc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ifc", *args], cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def ws(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


# ------------------------------------------------------------------------------------------ the store
def test_changes_persist_with_their_provenance(tmp_path, ws):
    (ws / "a").write_text("x")
    store = LabelStore(tmp_path / "l.db", root=ws, run="run-A")
    store.raise_to("a", SECRET, Why(subject="session", command="base64 .env", source="secret from .env",
                                    label="secret"))
    store.link("a", "b")
    store.rename("b", "c")
    store.close()
    again = LabelStore(tmp_path / "l.db", root=ws)
    assert again.snapshot() == {"a": SECRET, "c": SECRET}
    raised = again.history("c")[0]
    assert (raised.kind, raised.run, raised.subject, raised.command, raised.source, raised.label) == \
        ("raise", "run-A", "session", "base64 .env", "secret from .env", "secret")
    assert [c.kind for c in again.history("c")] == ["raise", "link", "rename"]


def test_a_raise_joins_with_what_another_process_committed(tmp_path):
    """Two runs on one workspace: neither raise lowers the other's, and each sees the other's at once."""
    one, two = LabelStore(tmp_path / "l.db"), LabelStore(tmp_path / "l.db")
    one.raise_to("f", SECRET)
    version = two.version
    assert two.get("f") == SECRET and two.version > version  # picked up, and cached decisions invalidated
    one.raise_to("g", INTERNAL)
    two.raise_to("g", CUSTOMER)  # two's memory has not seen one's raise of g until its transaction starts
    assert LabelStore(tmp_path / "l.db").get("g") == Label(frozenset({"internal", "customer"}), 1)


def test_concurrent_processes_do_not_corrupt_the_store(tmp_path):
    child = textwrap.dedent(f"""
        import sys
        from ifc.monitor.labelstore import LabelStore
        from ifc.policy.labels import Label
        store = LabelStore({str(tmp_path / 'l.db')!r}, durable=True)
        for i in range(60):
            store.raise_to(f"f{{i}}", Label(frozenset({{sys.argv[1]}}), 1))
            store.rename(f"f{{i}}", f"g{{i}}") if i % 3 == 0 and sys.argv[1] == "a" else None
    """)
    procs = [subprocess.Popen([sys.executable, "-c", child, tag], env={**os.environ, "PYTHONPATH": str(ROOT)})
             for tag in ("a", "b")]
    assert [p.wait(60) for p in procs] == [0, 0]
    db = sqlite3.connect(tmp_path / "l.db")
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    labels = LabelStore(tmp_path / "l.db").snapshot()
    for i in range(60):  # b's raise of a name a renamed away lands on a new f{i}, or joins on g{i}: never lost
        tags = set().union(*(labels[n].secrecy for n in (f"f{i}", f"g{i}") if n in labels))
        assert tags == {"a", "b"}, (i, labels)


def test_a_deleted_objects_id_is_not_given_to_a_later_file(tmp_path, ws):
    """The newest labelled file deleted, a new file labelled after the store is opened again: its history is its
    own, not the deleted file's (ids came from the highest one alive, so the deleted one's was reused)."""
    store = LabelStore(tmp_path / "l.db", root=ws)
    store.raise_to("kept", SECRET)
    store.raise_to("gone", CUSTOMER, Why(command="cp customers.csv gone"))
    store.delete("gone")
    store.close()
    store = LabelStore(tmp_path / "l.db", root=ws)
    store.raise_to("new", SECRET, Why(command="cp .env new"))
    assert [(c.kind, c.path, c.command) for c in store.history("new")] == [("raise", "new", "cp .env new")]
    assert [c.path for c in store.history() if c.kind == "raise"] == ["kept", "gone", "new"]


def test_a_deletion_does_not_wait_for_the_disk_and_every_raise_does(tmp_path, ws):
    """A workspace's store syncs each raise (it must survive power loss) but not a deletion: forgetting a label
    lost to a power cut leaves a label on a name that is gone, the safe direction, and `rm -rf` of what a
    tainted run wrote paid one fsync per file. The deletion is committed all the same, and the next raise
    waits for the disk again."""
    store = LabelStore(tmp_path / "l.db", root=ws, durable=True)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.raise_to("a", SECRET)
    store.raise_to("b", SECRET)
    assert not [s for s in statements if "synchronous" in s]
    statements.clear()
    store.delete("a")
    lazy = statements[statements.index("PRAGMA synchronous=NORMAL"):]
    commit = lazy.index("COMMIT")
    assert lazy[1] == "BEGIN IMMEDIATE" and lazy[commit:commit + 2] == ["COMMIT", "PRAGMA synchronous=FULL"], statements
    statements.clear()
    store.raise_to("c", SECRET)
    assert not [s for s in statements if "synchronous" in s]
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    other = LabelStore(tmp_path / "l.db", root=ws)
    assert other.snapshot() == {"b": SECRET, "c": SECRET}
    store.close()
    other.close()


def test_renames_and_links_made_on_the_host_are_found_by_inode(tmp_path, ws):
    (ws / "copy").write_text("secret")
    (ws / "gone").write_text("secret")
    store = LabelStore(tmp_path / "l.db", root=ws)
    store.raise_to("copy", SECRET)
    store.raise_to("gone", SECRET)
    store.close()
    os.rename(ws / "copy", ws / "renamed")
    os.link(ws / "renamed", ws / "linked")
    (ws / "plain").write_text("never labelled")  # made before `gone` is unlinked: it cannot reuse that inode
    os.unlink(ws / "gone")
    (ws / "gone").write_text("a new file where a labelled one was")
    store = LabelStore(tmp_path / "l.db", root=ws)
    assert store.get("renamed") == SECRET and store.get("linked") == SECRET
    assert store.get("gone") == SECRET, "a name keeps its label when the file is replaced: over-label, the safe side"
    assert store.get("plain") is None
    assert {c.kind for c in store.history("linked")} >= {"raise", "adopt"}
    store.raise_to("linked", Label(frozenset({"internal", "secret", "customer"}), 1))
    assert "customer" in store.get("renamed").secrecy, "an adopted name shares the object"


def test_deleting_a_name_keeps_the_label_while_the_file_has_links_made_outside(tmp_path, ws):
    (ws / "a").write_text("secret")
    os.link(ws / "a", ws / "outside-link")
    store = LabelStore(tmp_path / "l.db", root=ws)
    store.raise_to("a", SECRET)
    store.delete("a")  # the monitor forgets the name before unlink(2)
    os.unlink(ws / "a")
    assert store.get("outside-link") == SECRET
    (ws / "lone").write_text("secret")
    store.raise_to("lone", SECRET)
    store.delete("lone")
    assert "lone" not in store.snapshot() and len(store.snapshot()) == 1


def test_lowering_is_recorded_and_only_lowers(tmp_path, ws):
    store = LabelStore(tmp_path / "l.db", root=ws)
    store.raise_to("f", SECRET)
    with pytest.raises(LabelStoreError, match="not below"):
        store.lower("f", CUSTOMER, who="alice", reason="x")
    with pytest.raises(LabelStoreError, match="no floated label"):
        store.lower("nope", INTERNAL, who="alice", reason="x")
    assert store.lower("f", INTERNAL, who="alice", reason="test fixture, not a real key") == SECRET
    last = LabelStore(tmp_path / "l.db").history("f")[-1]
    assert (last.kind, last.old, last.new, last.who, last.reason) == \
        ("lower", SECRET, INTERNAL, "alice", "test fixture, not a real key")


# ------------------------------------------------------------------------------------------ kill -9
CHILD = """
import random, sys
from ifc.monitor.labelstore import LabelStore
from tests.test_workspace_labels import apply, operations
store = LabelStore(sys.argv[1], durable=True)  # as the workspace store is
print("ready", flush=True)
for i, op in enumerate(operations(int(sys.argv[2]))):
    apply(store, op)
    print(i, flush=True)
"""
NAMES = [f"n{i}" for i in range(6)]
TAGS = ["internal", "secret", "customer", "pii"]


def operations(seed: int, count: int = 3000) -> list[tuple]:
    rng = random.Random(seed)
    ops = []
    for _ in range(count):
        kind = rng.choice(["raise", "raise", "raise", "rename", "link", "delete"])
        ops.append((kind, rng.choice(NAMES), rng.choice(NAMES), rng.choice(TAGS)))
    return ops


def apply(store: LabelStore, op: tuple) -> None:
    kind, a, b, tag = op
    if kind == "raise":
        store.raise_to(a, Label(frozenset({tag}), 1))
    elif kind == "rename":
        store.rename(a, b)
    elif kind == "link":
        store.link(a, b)
    else:
        store.delete(a)


def _replay(ops: list[tuple]) -> dict[str, Label]:
    store = LabelStore()
    for op in ops:
        apply(store, op)
    return store.snapshot()


@pytest.mark.integration
def test_kill_9_at_any_point_never_lowers_a_label(tmp_path):
    """A real process changing labels is killed with SIGKILL at random moments; reopened, the store is
    exactly the state after the last acknowledged change or after the one in flight, never between."""
    rng = random.Random(11)
    for trial in range(25):
        db = tmp_path / f"l{trial}.db"
        seed = rng.randrange(1 << 30)
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(seed)], stdout=subprocess.PIPE,
                                 text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert child.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0, 0.08))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        done = len(out.split())  # ops acknowledged (committed); the next one may or may not have been
        assert done < len(operations(seed)), "killed after the last change: nothing was tested"
        ops = operations(seed)
        before, after = _replay(ops[:done]), _replay(ops[:done + 1])
        found = LabelStore(db).snapshot()
        assert found in (before, after), (trial, done, ops[done:done + 1], found, before)
        kind, a, b, _ = ops[done]
        moved = {a, b} if kind != "raise" else set()  # names the op in flight may legitimately drop or replace
        for path, label in before.items():
            if path not in moved:
                assert path in found and label.flows_to(found[path]), (trial, path, label, found.get(path))


# ------------------------------------------------------------------------------------------ where it lives
def test_the_store_is_the_workspaces_under_the_state_dir(tmp_path, ws, monkeypatch):
    monkeypatch.setenv(STATE_ENV, str(tmp_path / "state"))
    assert state_dir() == tmp_path / "state"
    path = store_path(ws)
    assert path.parent.parent == tmp_path / "state" / "workspaces" and path.name == "labels.db"
    store = open_store(ws, run="r")
    store.raise_to("f", SECRET)
    store.close()
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    monkeypatch.delenv(STATE_ENV)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir() == tmp_path / "xdg" / "ifc"
    monkeypatch.setenv(STATE_ENV, str(ws / ".state"))
    with pytest.raises(LabelStoreError, match="inside the workspace"):
        store_path(ws)


def test_a_workspace_moved_on_the_host_keeps_its_labels(tmp_path, ws):
    (ws / "f").write_text("secret")
    store = open_store(ws)
    store.raise_to("f", SECRET)
    store.close()
    moved = tmp_path / "elsewhere"
    os.rename(ws, moved)
    assert open_store(moved).get("f") == SECRET


# ------------------------------------------------------------------------------------------ ifc labels
def test_ifc_labels_lists_explains_and_lowers(tmp_path, ws):
    (ws / "f").write_text("secret")
    store = open_store(ws, run="/runs/A")
    store.raise_to("f", SECRET, Why(subject="session", command="cp .env f", source="secret from .env"))
    store.close()
    policy = ROOT / "policies" / "default.flow"
    listed = json.loads(_ifc("labels", str(ws), "--policy", str(policy), "--format", "json").stdout)
    entry = listed["labels"][0]
    assert entry["path"] == "f" and entry["label"].startswith("secret")
    assert entry["why"][0] | {"when": None} == {
        "kind": "raise", "path": "f", "when": None, "run": "/runs/A", "subject": "session", "command": "cp .env f",
        "source": "secret from .env", "old": None, "new": entry["label"], "who": None, "reason": None}
    lowered = _ifc("labels", str(ws), "--policy", str(policy), "--lower", "f", "--to", "internal",
                   "--reason", "a test key, revoked")
    assert lowered.returncode == 0 and "secret" in lowered.stdout and "internal" in lowered.stdout, lowered.stderr
    text = _ifc("labels", str(ws), "--policy", str(policy)).stdout
    assert "lowered f from secret" in text and "a test key, revoked" in text
    assert open_store(ws).get("f").secrecy == frozenset({"internal"})


def test_a_lowering_from_a_reviewed_label_refuses_a_label_a_run_raised_since(tmp_path, ws):
    """The person reviewed `f` as `secret`; before their command runs, a run copies customer data into it. A
    lowering `--from secret` lowers nothing and says what the label is now; `--from` what it is now lowers."""
    (ws / "f").write_text("secret")
    store = open_store(ws)
    store.raise_to("f", SECRET)
    store.close()
    policy = str(ROOT / "policies" / "default.flow")
    reviewed = json.loads(_ifc("labels", str(ws), "--policy", policy, "--format", "json").stdout)["labels"][0]
    run = open_store(ws)  # another run, meanwhile
    run.raise_to("f", CUSTOMER)
    run.close()
    proc = _ifc("labels", str(ws), "--policy", policy, "--lower", "f", "--from", reviewed["label"],
                "--to", "internal", "--reason", "reviewed: a test key")
    assert proc.returncode == 2, proc.stderr
    assert f"is labelled `secret + customer, trusted`, not `{reviewed['label']}` as --from says" in proc.stderr
    assert "nothing was lowered" in proc.stderr and "Traceback" not in proc.stderr
    assert open_store(ws).get("f").secrecy >= {"secret", "customer"}
    assert not [c for c in open_store(ws).history("f") if c.kind == "lower"]
    proc = _ifc("labels", str(ws), "--policy", policy, "--lower", "f", "--from", "secret + customer, trusted",
                "--to", "internal", "--reason", "reviewed both: test data")
    assert proc.returncode == 0, proc.stderr
    assert open_store(ws).get("f").secrecy == frozenset({"internal"})


@pytest.mark.parametrize("args, message", [
    (["--lower", "f", "--to", "internal"], "needs --to LABEL and --reason TEXT"),
    (["--to", "internal"], "only with --lower"),
    (["--from", "secret"], "only with --lower"),
    (["--lower", "f", "--from", "topsecret", "--to", "internal", "--reason", "r"], "`topsecret` is not a label"),
    (["--lower", "f", "--to", "topsecret", "--reason", "r"], "`topsecret` is not a label"),
    (["--lower", "nothing-here", "--to", "internal", "--reason", "r"], "has no floated label"),
    (["--lower", "f", "--to", "secret + customer", "--reason", "r"], "not below"),
    (["--lower", "../f", "--to", "internal", "--reason", "r"], "relative to the workspace"),
])
def test_ifc_labels_bad_input_is_one_line_and_exit_2(ws, args, message):
    (ws / "f").write_text("secret")
    store = open_store(ws)
    store.raise_to("f", SECRET)
    store.close()
    proc = _ifc("labels", str(ws), "--policy", str(ROOT / "policies" / "default.flow"), *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("ifc labels: error: ")


def test_ifc_labels_escapes_what_a_run_named_so_it_cannot_rewrite_the_terminal(ws):
    """Names and command lines in the store are a run's: one that read a key could name a file `\\x1b[2K\\r...`
    (erase the line, write another) or run a command holding an OSC sequence. `ifc labels` prints them escaped,
    the JSON keeps them exact."""
    hostile = "src/\x1b[2K\rnothing here\x07"
    store = open_store(ws, run="/runs/A")
    store.raise_to(hostile, SECRET, Why(subject="session", command="printf '\x1b]52;c;c2VjcmV0\x07'",
                                        source="secret from .env"))
    store.mark_named(hostile, frozenset({"secret"}))
    store.close()
    text = _ifc("labels", str(ws)).stdout
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text.replace("\n", "")
    assert "src/\\x1b[2K\\x0dnothing here\\x07: " in text and "\\x1b]52;c;c2VjcmV0\\x07" in text, text
    listed = json.loads(_ifc("labels", str(ws), "--format", "json").stdout)
    assert listed["labels"][0]["path"] == hostile


def test_ifc_labels_on_a_workspace_without_labels(ws):
    proc = _ifc("labels", str(ws))
    assert proc.returncode == 0 and "no floated labels" in proc.stdout
    assert _ifc("labels", str(ws / "missing")).returncode == 2


# ------------------------------------------------------------------------------------------ across runs
def _namespace_skip() -> str | None:
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        return "ifc run needs root and /dev/fuse"
    probe = subprocess.run(["unshare", "--mount", "--pid", "--net", "--user", "--fork", "true"], capture_output=True)
    return "cannot create namespaces" if probe.returncode else None


RUN_A = """cat api.key | base64 > encoded.txt
cp api.key copy.tmp && mv copy.tmp moved.txt
python3 -c "
import mmap
with open('mapped.bin', 'r+b') as f:
    m = mmap.mmap(f.fileno(), 64)
    m[0:17] = open('api.key', 'rb').read()[:17]
    m.flush()
    m.close()
"
echo done"""


@pytest.mark.integration
@pytest.mark.skipif(_namespace_skip() is not None, reason=str(_namespace_skip()))
def test_labels_floated_in_one_run_hold_in_the_next(tmp_path):
    """Run A reads `api.key` (a secret file no sentinels can stand in for) and launders it three ways into
    workspace files. Run B, with ANOTHER fresh run dir,
    reads each: the run is tainted and the proxy refuses to send, naming the file. Renames and hard links
    made on the host between runs keep the label; `ifc labels` says why; `--lower` takes effect next run."""
    import sandbox_cases

    ws = sandbox_cases.agent_workspace(tmp_path, {"api.key": "API_KEY=sk-secret\n", "notes.md": "hello\n",
                                                  "mapped.bin": "\0" * 64})
    with sandbox_cases.serving() as port:
        policy = tmp_path / "policy.flow"
        policy.write_text(sandbox_cases.TAINT_POLICY.format(port=port, agent=""))

        def run(name: str, script: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "ifc", "run", "--isolation", "namespace", "--policy", str(policy),
                 "--workspace", str(ws), "--run-dir", str(tmp_path / name), "--agent", "none", "--egress", "--",
                 "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                timeout=120)

        def send_after_reading(name: str, path: str) -> list[str]:
            fetch = f"curl -s --noproxy '' -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/"
            proc = run(name, f"before=$({fetch}); cat {path} >/dev/null; after=$({fetch}); echo $before $after")
            return proc.stdout.split() or [proc.stderr]

        first = run("run-a", RUN_A)
        assert first.stdout.split() == ["done"], first.stdout + first.stderr
        assert (ws / "mapped.bin").read_bytes().startswith(b"API_KEY=sk-secret")
        assert send_after_reading("run-control", "notes.md") == ["200", "200"], "an unlabelled file does not taint"
        for n, path in enumerate(["encoded.txt", "moved.txt", "mapped.bin"]):
            assert send_after_reading(f"run-b{n}", path) == ["200", "403"], path
            db = sqlite3.connect(tmp_path / f"run-b{n}" / "events.db")
            denied = db.execute("SELECT op, path FROM events WHERE kind = 'deny'").fetchall()
            assert any(op == "connect" and path in (why or "") for op, why in denied), (path, denied)
        # renamed and hard-linked on the host, between runs
        os.rename(ws / "moved.txt", ws / "renamed-on-host.txt")
        os.link(ws / "encoded.txt", ws / "linked-on-host.txt")
        assert send_after_reading("run-c0", "renamed-on-host.txt") == ["200", "403"]
        assert send_after_reading("run-c1", "linked-on-host.txt") == ["200", "403"]

        listed = json.loads(_ifc("labels", str(ws), "--format", "json").stdout)
        why = {e["path"]: e["why"] for e in listed["labels"]}
        raised = why["encoded.txt"][0]
        assert raised["run"] == str(tmp_path / "run-a") and "api.key" in raised["source"], raised
        assert raised["subject"] == "session" and raised["command"], raised
        assert any(c["kind"] == "adopt" for c in why["renamed-on-host.txt"]), why
        lowered = _ifc("labels", str(ws), "--lower", "encoded.txt", "--to", "internal", "--reason",
                       "the key was rotated")
        assert lowered.returncode == 0, lowered.stderr
        assert "the key was rotated" in _ifc("labels", str(ws)).stdout
        assert send_after_reading("run-d", "encoded.txt") == ["200", "200"], "a declassification holds next run"


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=24).filter(lambda b: b"\0" not in b and b"/" not in b and b not in (b".", b"..")))
def test_any_file_name_round_trips_through_the_store(raw):
    """A name that is not valid UTF-8 (FUSE hands it over with surrogateescape) is stored losslessly: before, it
    failed the write (a fail-closed denial, and a name map ahead of the database)."""
    name = "src/" + os.fsdecode(raw)
    with tempfile.TemporaryDirectory() as d:
        store = LabelStore(Path(d) / "labels.db")
        store.raise_to(name, Label(frozenset({"secret"}), 1))
        store.rename(name, name + ".moved")
        store.close()
        again = LabelStore(Path(d) / "labels.db")
        assert again.snapshot() == {name + ".moved": Label(frozenset({"secret"}), 1)}
        assert [c.path for c in again.history()] == [name, name + ".moved"]
        again.close()


# ------------------------------------------------------------------------------------------ the store's bookkeeping
_NAMES = ("a", "a/b", "a/b/c", "a/d", "ab", "e/a/b", "e")
_store_op = st.one_of(
    st.tuples(st.just("raise"), st.sampled_from(_NAMES), st.sampled_from((SECRET, INTERNAL, CUSTOMER))),
    st.tuples(st.sampled_from(("rename", "link")), st.sampled_from(_NAMES), st.sampled_from(_NAMES)),
    st.tuples(st.just("delete"), st.sampled_from(_NAMES), st.none()),
    st.tuples(st.just("reload"), st.none(), st.none()))


@settings(max_examples=150, deadline=None)
@given(st.lists(_store_op, max_size=30))
def test_the_stores_indexes_always_match_its_names(ops):
    """The counts behind the fast paths (names per object, names beneath each directory, inodes per object) are
    what a rebuild from the names gives after any sequence of raises, renames of files and directories, links,
    deletions and reloads; and a rename or delete that moves no label is no transaction (no version step)."""
    with tempfile.TemporaryDirectory() as d:
        store = LabelStore(Path(d) / "labels.db")
        for op, path, arg in ops:
            version = store.version
            if op == "raise":
                store.raise_to(path, arg)
            elif op == "rename":
                untouched = path not in store.snapshot() and arg not in store.snapshot() \
                    and not any(p.startswith(path + "/") for p in store.snapshot())
                store.rename(path, arg)
                assert not untouched or store.version == version, "a rename of nothing labelled committed"
            elif op == "link":
                store.link(path, arg)
            elif op == "delete":
                untouched = path not in store.snapshot()
                store.delete(path)
                assert not untouched or store.version == version, "a delete of nothing labelled committed"
            else:
                LabelStore(Path(d) / "labels.db").raise_to("e", INTERNAL)  # another process's commit
            named, beneath, inodes_of = {k: set(v) for k, v in store._named.items()}, dict(store._beneath), \
                {k: set(v) for k, v in store._inodes_of.items() if v}
            store._index()
            assert (named, beneath, inodes_of) == (store._named, store._beneath,
                                                  {k: v for k, v in store._inodes_of.items() if v})
            assert store.snapshot() == LabelStore(Path(d) / "labels.db").snapshot()
        store.close()


def test_one_decision_sees_one_view_of_the_store(tmp_path):
    """As the monitor decides: one `refresh()`, then inside `pinned()` a commit by another process is not seen
    half-way (one decision, one set of labels); the next refresh picks it up, and its version moves (the
    monitor's cached decisions are keyed by it)."""
    mine, other = LabelStore(tmp_path / "l.db"), LabelStore(tmp_path / "l.db")
    assert mine._shm is not None, "the WAL header is mapped: looks for other runs' commits skip the pragma"
    mine.refresh()
    with mine.pinned():
        assert mine.get("f") is None
        other.raise_to("f", SECRET)
        assert mine.get("f") is None
    version = mine.version
    mine.refresh()
    with mine.pinned():
        assert mine.get("f") == SECRET and mine.version > version


def test_every_commit_by_another_process_is_seen_at_the_next_look(tmp_path):
    """The look for other runs' commits reads SQLite's WAL header and asks `PRAGMA data_version` only when it
    moved: a commit by another process (here a child, one commit at a time) is seen by the very next lookup,
    including after the WAL was checkpointed and restarted."""
    mine = LabelStore(tmp_path / "l.db")
    child = textwrap.dedent(f"""
        import sys
        from ifc.monitor.labelstore import LabelStore
        from ifc.policy.labels import Label
        store = LabelStore({str(tmp_path / 'l.db')!r})
        for line in sys.stdin:
            if line.strip() == "checkpoint":
                store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            else:
                store.raise_to(line.strip(), Label(frozenset({{"secret"}}), 1))
            print("done", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        for i in range(20):
            if i % 7 == 6:
                proc.stdin.write("checkpoint\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == "done"
            assert mine.get(f"f{i}") is None
            proc.stdin.write(f"f{i}\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "done"
            assert mine.get(f"f{i}") == Label(frozenset({"secret"}), 1), i
    finally:
        proc.stdin.close()
        proc.wait(30)


def test_a_store_dropped_without_close_leaves_no_descriptor(tmp_path):
    """The WAL header's descriptor goes with the store (a daemon or a test that opens many stores must not run
    out of descriptors, and `select` in the egress hook fails on numbers past 1023)."""
    import gc

    LabelStore(tmp_path / "l.db").close()
    gc.collect()  # what earlier tests left for the collector goes first
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        store = LabelStore(tmp_path / "l.db")
        store.get("x")
        del store
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before  # a leak would be 30 more
