"""How `ifc run` judges its mount daemon (`vmm.sandbox.Supervised`), with real child processes speaking the
health protocol (`ifc.enforce.health`) over a real pipe: a clean exit when asked is no failure; a death, an
exit nobody asked for, a log that failed or a bad exit status is one line naming the helper, the reason and
the time."""

from __future__ import annotations

import os
import re
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ifc.enforce.health import Reporter, read_health
from vmm.sandbox import Helpers, LaunchError, Supervised

ROOT = Path(__file__).resolve().parent.parent

# the child's script: what a daemon might say on its health pipe before it exits; `termN` waits for SIGTERM
# (as `ifc run` stops the daemon), then says its last word and exits N, as `ifc mount` does
SAY = textwrap.dedent("""
    import signal, sys, time
    from ifc.enforce.health import Reporter
    health = Reporter(int(sys.argv[1]))
    for word in sys.argv[2:]:
        if word == "log":
            health.log_failed(time.time(), "OperationalError: disk I/O error")
        elif word == "finish":
            health.finished(2)
        elif word.startswith("listen"):  # listenNAME:PORT
            name, port = word[6:].split(":")
            health.listening(name, "127.0.0.1", int(port))
        elif word == "hang":
            time.sleep(60)
        elif word.startswith("term"):
            def stop(signum, frame, status=int(word[4:])):
                health.finished(2)
                sys.exit(status)
            signal.signal(signal.SIGTERM, stop)
            print("ready", flush=True)
            time.sleep(60)
        elif word.startswith("exit"):
            sys.exit(int(word[4:]))
""")


def _supervise(tmp_path: Path, *words: str, network: bool = False) -> tuple[Helpers, Supervised]:
    read, write = os.pipe()
    helpers = Helpers(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = helpers.spawn([sys.executable, "-c", SAY, str(write), *words], "child.log", pass_fds=(write,),
                             env=env)
    finally:
        os.close(write)
    helper = Supervised("the mount daemon", proc, read, tmp_path / "child.log", network)
    helpers.supervised.append(helper)
    return helpers, helper


def _stopped(helpers: Helpers, helper: Supervised) -> str | None:
    """`ifc run`'s end: stop the helper once it is waiting for that, then judge it."""
    deadline = time.monotonic() + 30
    while "ready" not in (helper.log.read_text() if helper.log.exists() else ""):
        assert time.monotonic() < deadline and helper.proc.poll() is None, helper.log.read_text()
        time.sleep(0.02)
    helpers.close()
    return helpers.failure()


def test_a_daemon_that_says_its_last_word_when_stopped_is_no_failure(tmp_path):
    assert _stopped(*_supervise(tmp_path, "term0")) is None


def test_a_daemon_that_dies_of_the_stop_signal_failed(tmp_path):
    helpers, _ = _supervise(tmp_path, "hang")
    time.sleep(0.3)
    helpers.close()  # SIGTERM: Python's default is to die of it, with no last word — but it was asked to
    assert helpers.failure() == f"the mount daemon failed when the run ended (signal 15) — see {tmp_path / 'child.log'}"


def test_a_death_names_the_signal_and_the_time(tmp_path):
    helpers, helper = _supervise(tmp_path, "hang", network=True)
    time.sleep(0.3)
    helper.proc.kill()
    killed = time.time()
    helper.proc.wait()
    time.sleep(0.3)
    helpers.close()
    message = helpers.failure()
    stamp = re.search(r"after (\d\d:\d\d:\d\d) were", message)[1]
    assert stamp in {time.strftime("%H:%M:%S", time.localtime(killed + d)) for d in (-1, 0, 1)}
    assert message.startswith("the mount daemon died during the run (signal 9); decisions after ")
    assert "file and network operations failed (not connected)" in message


def test_a_clean_exit_nobody_asked_for_is_a_failure_too(tmp_path):
    helpers, helper = _supervise(tmp_path, "finish", "exit0")
    helper.proc.wait(30)
    time.sleep(0.3)
    helpers.close()
    assert helpers.failure().startswith("the mount daemon stopped during the run (status 0); decisions after ")


@pytest.mark.parametrize(("words", "expected"), [
    (("log", "log", "term3"), r"the mount daemon could not write the event log \(2 failure\(s\), first at "
                              r"\d\d:\d\d:\d\d: OperationalError: disk I/O error\)"),
    (("term1",), r"the mount daemon failed when the run ended \(status 1\)"),
])
def test_what_the_daemon_reports_is_said_in_one_line(tmp_path, words, expected):
    message = _stopped(*_supervise(tmp_path, *words))
    assert re.match(expected, message), message
    assert "\n" not in message and message.endswith(f"see {tmp_path / 'child.log'}")


def test_the_report_survives_lines_that_are_not_ours(tmp_path):
    read, write = os.pipe()
    os.write(write, b"not json\n{\"log_failed\": 3}\n[]\n")
    reporter = Reporter(write)
    reporter.log_failed(1.0, "first")
    reporter.log_failed(2.0, "second: only the first is sent")
    reporter.finished(4)
    with os.fdopen(read, "rb") as pipe:
        health = read_health(pipe)
    assert health.finished and health.log_failures == 4 and health.first_log_failure.reason == "first"


def test_where_the_hook_listens_is_heard_from_the_daemon(tmp_path):
    """`ifc run` asks for port 0 and learns the ports from the daemon: a port the launcher picked could be bound
    by anything else before the daemon binds it (CI saw "address already in use" under two workers)."""
    helpers, helper = _supervise(tmp_path, "listenhttp:0", "listenhttp:41234", "listendns:70000", "listendns:41235",
                                 "term0")
    assert helper.listening(("http", "dns"), 30) == {"http": ("127.0.0.1", 41234), "dns": ("127.0.0.1", 41235)}
    assert _stopped(helpers, helper) is None


def test_a_daemon_that_ends_before_its_hook_listens_is_a_launch_error(tmp_path):
    helpers, helper = _supervise(tmp_path, "listenhttp:41234", "exit1")
    with pytest.raises(LaunchError, match="ended before the egress hook listened"):
        helper.listening(("http", "dns"), 30)
    helpers.close()
