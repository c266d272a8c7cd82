"""A kept agent home's taint (`ifc.monitor.carried`, `Monitor.inherit`): read fail-closed, written by name, held
by one run at a time, and a run that inherits it decides with it from its first request."""

from __future__ import annotations

import json

from ifc.monitor import Monitor, Request
from ifc.monitor.carried import hold, read, top, write
from ifc.policy import Label, load_policy, shipped_policy


def lattice():
    return load_policy(shipped_policy("claude-code")).lattice


def test_a_home_never_used_has_no_record(tmp_path):
    assert read(tmp_path / "taint.json", lattice()) is None


def test_records_round_trip_by_name(tmp_path):
    lat = lattice()
    path = tmp_path / "taint.json"
    secret = Label(lat.tag_closure["secret"], lat.top_integrity)
    write(path, secret, lat)
    assert json.loads(path.read_text()) == {"secrecy": ["internal", "secret"], "integrity": "trusted"}
    assert read(path, lat) == secret


def test_what_does_not_parse_or_is_unknown_reads_as_the_top(tmp_path):
    lat = lattice()
    path = tmp_path / "taint.json"
    for text in ("{", "[]", '{"secrecy": ["internal"]}', '{"secrecy": ["customer"], "integrity": "trusted"}',
                 '{"secrecy": [], "integrity": "blessed"}'):
        path.write_text(text)
        assert read(path, lat) == top(lat), text


def test_one_run_at_a_time(tmp_path):
    path = tmp_path / "taint.json"
    assert hold(path)
    assert not hold(path)  # another open of the lock, as another run's daemon would make


def test_a_run_that_inherits_a_secret_home_is_refused_the_model():
    policy = load_policy(shipped_policy("claude-code"))
    monitor = Monitor(policy, agent=policy.agents["claude"])
    assert monitor.decide(Request("connect", "https://api.anthropic.com")).allowed
    lat = policy.lattice
    monitor.inherit(Label(lat.tag_closure["secret"], lat.top_integrity), "kept home /state/home")
    denied = monitor.decide(Request("connect", "https://api.anthropic.com"))
    assert not denied.allowed and "kept home /state/home" in denied.explanation, denied.explanation
