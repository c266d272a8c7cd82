from __future__ import annotations

import json

import pytest
from caps_testkit import NOW, mint

import caps
from caps.revocation import RevocationList, revoke_in_file


def test_round_trip_and_epoch(tmp_path):
    path = tmp_path / "revoked.json"
    token = mint()
    first = revoke_in_file(path, [caps.revocation_ids(token)[0]])
    assert first.epoch == 1
    again = revoke_in_file(path, [caps.revocation_ids(token)[0]])
    assert again.epoch == 1  # nothing new, the epoch stays
    loaded = RevocationList.load(path)
    assert loaded == first and loaded.is_revoked(caps.revocation_ids(token))
    assert json.loads(path.read_text())["format"] == "ifc-caps-revocations"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("[]", "not an ifc-caps revocation list"),
        (
            '{"format": "ifc-caps-revocations", "version": 1, "epoch": 1, "revoked": [], "extra": 1}',
            "unknown field",
        ),
        (
            '{"format": "ifc-caps-revocations", "version": 2, "epoch": 1, "revoked": []}',
            "unsupported version",
        ),
        ('{"format": "ifc-caps-revocations", "version": 1, "epoch": -1, "revoked": []}', "epoch"),
        ('{"format": "ifc-caps-revocations", "version": 1, "epoch": 1, "revoked": ["xyz"]}', "malformed"),
        ("{", "not valid json"),
    ],
)
def test_malformed_lists(tmp_path, body, fragment):
    path = tmp_path / "revoked.json"
    path.write_text(body)
    with pytest.raises(caps.RevocationListError, match=fragment):
        RevocationList.load(path)


def test_missing_list(tmp_path):
    with pytest.raises(caps.RevocationListError, match="does not exist"):
        RevocationList.load(tmp_path / "nope.json")
    assert RevocationList.load(tmp_path / "nope.json", missing_ok=True) == RevocationList()


def test_bad_ids_are_refused():
    with pytest.raises(caps.RevocationListError, match="not a revocation id"):
        RevocationList().with_revoked(["ABC"])


def test_family_and_line(tmp_path):
    token = caps.attenuate(mint(), ttl=60, now=NOW)
    ids = caps.revocation_ids(token)
    assert caps.revoke(token, RevocationList()).revoked == {ids[-1]}
    assert caps.revoke(token, RevocationList(), family=True).revoked == {ids[0]}
