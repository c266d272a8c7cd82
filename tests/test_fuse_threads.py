"""The daemon serves requests on libfuse's worker threads, each keeping one Python thread state for its life.

ctypes made a new thread state for every callback from a thread Python did not start and deleted it on return:
every FUSE request paid for it (a thread state, a fresh frame stack mapped and unmapped, a `gettid`: kept, the
mediated mount takes 0.54-0.92 of its earlier time on bench_workloads' rows, docs/benchmarks.md issue 16 part
5). Nothing in the replies shows it, so the daemon records each thread state a request first runs in
(tests/recording_mount.py)."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from fuse_support import FUSE, REAL_MOUNTS, recording_mount

from ifc.enforce.mount import FUSE3_MAX_THREADS

pytestmark = REAL_MOUNTS


@pytest.mark.skipif(FUSE != "mfusepy3", reason="states are kept on libfuse3 only (libfuse2 ends idle workers)")
def test_each_worker_thread_serves_every_request_in_one_thread_state():
    with recording_mount("threads") as (_src, mnt, log):
        Path(mnt, "f").write_text("x")
        for _ in range(300):  # each an OPEN, decided in the daemon's Python
            assert Path(mnt, "f").read_text() == "x"
        states = [line.split()[1] for line in Path(log).read_text().splitlines() if line.startswith("state ")]
    per_thread = collections.Counter(states)
    assert states and len(per_thread) <= FUSE3_MAX_THREADS + 1, per_thread  # the workers (and the main thread)
    assert max(per_thread.values()) == 1, f"threads that got a new state for a later request: {per_thread}"
