"""`ifc report`: run directories made by the real monitor, rendered as Markdown, JSON and HTML.

The exfiltration run from the issue (`.env` → `notes.txt` → a new session → mail) is built through
`ifc decide --run-dir`; its report must list each denial with rule, message, path and fix, count right,
and escape the attacker-chosen strings a log carries. The integration test renders the HTML in headless
Chromium and looks for the graph and the denials in the live DOM.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ifc.cli import main
from ifc.monitor import EventLog, LabelStore, Monitor, Request
from ifc.policy import load_policy
from ifc.report import load_run, path_svg, render_html, render_markdown, report_dict
from ifc.report.load import Hop

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "policies" / "default.flow"
EVIL = "deploy/<script>alert(\"x\")</script>'q'.yml"
EXFIL = ["read", "src/app.py", "connect", "https://api.anthropic.com", "read", "inbox/issue-42.md", "read", ".env",
         "write", "src/notes.txt", "session", "s2", "read", "src/notes.txt", "connect", "smtp.gmail.com:587",
         "connect", "https://evil.example", "write", ".github/workflows/ci.yml", "write", EVIL]
# s2 shares the run's taint: its mail is refused because the session read `.env`, whatever s2 read itself
MAIL_PATH = [["file:.env", "read", "subject:session"], ["subject:session", "same run", "subject:s2"],
             ["subject:s2", "connect", "endpoint:smtp://smtp.gmail.com:587"]]




def decide(run_dir: Path, *steps: str) -> int:
    return main(["decide", "--policy", str(POLICY), "--run-dir", str(run_dir), *steps])


def ifc_report(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["report", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def exfil_run(tmp_path, capsys) -> Path:
    run_dir = tmp_path / "run1"
    assert decide(run_dir, *EXFIL) == 1
    capsys.readouterr()
    return run_dir


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


# ------------------------------------------------------------------------------------------- loading


def test_load_reads_the_run_into_dataclasses(exfil_run):
    run = load_run(exfil_run)
    assert run.meta["source"] == "ifc decide" and run.meta["agent"] == "coder"
    assert [(d.subject, d.op, d.target) for d in run.denials] == [
        ("s2", "connect", "smtp://smtp.gmail.com:587"), ("s2", "connect", "https://evil.example:443"),
        ("s2", "write", ".github/workflows/ci.yml"), ("s2", "write", EVIL)]
    mail = run.denials[0]
    assert [[h.source, h.op, h.target] for h in mail.path] == MAIL_PATH
    assert mail.explanation == ".env --read--> session --same run--> s2 --connect--> smtp://smtp.gmail.com:587"
    assert mail.message == "secrets never leave the sandbox"
    assert mail.rule_source == 'deny secret -> external "secrets never leave the sandbox"'
    assert mail.taint == "secret, untrusted" and mail.object_label == "clearance public"
    assert [(e.target, e.label) for e in run.labels] == [("src/notes.txt", "secret, untrusted")]
    assert sum(a.count for a in run.allows) == 6
    assert run.kind_counts == {"label": 1, "deny": 4}


def test_report_leaves_the_run_directory_untouched(exfil_run, capsys):
    before = snapshot(exfil_run)
    for fmt in ("md", "html", "json"):
        assert ifc_report(capsys, str(exfil_run), "--format", fmt)[0] == 0
    assert snapshot(exfil_run) == before


def test_a_live_log_is_readable_while_the_monitor_writes(tmp_path):
    log = EventLog(tmp_path / "events.db")
    log.set_meta(source="live")
    log.record(kind="deny", subject="session", op="connect", target="smtp://x:25", allowed=False, reason="no")
    try:
        run = load_run(tmp_path)
        assert [d.target for d in run.denials] == ["smtp://x:25"]
    finally:
        log.close()


# ------------------------------------------------------------------------------------------- markdown


def test_markdown_summary_and_denials(exfil_run, capsys):
    code, out, err = ifc_report(capsys, str(exfil_run))
    assert code == 0 and err == ""
    assert out.startswith("# ifc report: `run1`\n")
    assert "| deny | 4 |" in out and "| label | 1 |" in out and "| declassify | 0 |" in out
    assert "| allow (aggregated) | 6 decisions over 6 (subject, op, object) |" in out
    assert "### Top denied targets" in out and "| `smtp://smtp.gmail.com:587` | 1 |" in out
    timeline = out.split("### Taint timeline", 1)[1].split("## Denials", 1)[0]
    rows = [line for line in timeline.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 5 and "label of `src/notes.txt` raised by `write`" in rows[0]
    assert "**deny** `connect` `smtp://smtp.gmail.com:587`" in rows[1] and rows[1].endswith("| `secret, untrusted` |")
    assert "## Denials (4)" in out
    mail = out.split("### 1. ", 1)[1].split("### 2. ", 1)[0]
    assert "- **process:** pid unknown, `ifc decide`" in mail
    assert '- **rule:** `deny secret -> external "secrets never leave the sandbox"` at `' in mail
    assert "- **policy says:** \u201csecrets never leave the sandbox\u201d" in mail
    assert "- **run taint:** `secret, untrusted`" in mail
    assert ("```text\n.env --read--> session --same run--> s2 --connect--> "
            "smtp://smtp.gmail.com:587\n```") in mail
    assert "forbids this flow on purpose" in mail
    evil = out.split("### 2. ", 1)[1].split("### 3. ", 1)[0]
    assert "- **rule:** `agent coder`" in evil and "None recorded: this denial is about authority" in evil
    assert '```text\nconnect "https://evil.example"   # in `agent coder { }`\n```' in evil
    assert "```sh\nifc caps mint --policy " in evil
    assert "--connect https://evil.example --audience run1 --ttl 1h" in evil


def test_markdown_keeps_attacker_strings_in_code(exfil_run, capsys):
    out = ifc_report(capsys, str(exfil_run))[1]
    assert f"`{EVIL}`" in out  # inside a code span: shown literally, never HTML
    fenced = False
    for line in out.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        prose = re.sub(r"(`+)(.+?)\1", "", line)  # what a renderer would not show literally
        assert not re.search(r"(?<!\\)<|(?<!\\)\]\(", prose), line
    why = next(line for line in out.splitlines() if line.startswith("- **why:**") and "alert" in line)
    assert "\\<script>" in why  # prose: the tag is backslash-escaped


def test_long_paths_are_one_hop_per_line_in_markdown(tmp_path, capsys):
    steps = ["read", ".env"]
    for i in range(1, 5):  # each run floats the label onto the next file, each new run reads it
        steps += ["write", f"src/stage-{i}-with-a-long-name.txt", "run", f"r{i}", "read",
                  f"src/stage-{i}-with-a-long-name.txt"]
    assert decide(tmp_path / "long", *steps, "session", "a-subject-with-a-long-name", "connect",
                  "smtp.gmail.com:587") == 1
    capsys.readouterr()
    out = ifc_report(capsys, str(tmp_path / "long"))[1]
    assert ("```text\nsrc/stage-4-with-a-long-name.txt\n  --read--> session\n  --same run--> "
            "a-subject-with-a-long-name\n") in out
    assert "  --connect--> smtp://smtp.gmail.com:587\n```" in out


# ------------------------------------------------------------------------------------------- json


def test_json_report(exfil_run, capsys):
    code, out, _ = ifc_report(capsys, str(exfil_run), "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["report"] == 1 and doc["run"]["name"] == "run1"
    assert doc["summary"]["counts"] == {"deny": 4, "label": 1, "declassify": 0, "endorse": 0, "token": 0, "hostcfg": 0}
    assert doc["summary"]["allows"] == {"total": 6, "distinct": 6}
    assert [e["kind"] for e in doc["summary"]["timeline"]] == ["label", "deny", "deny", "deny", "deny"]
    mail, evil = doc["denials"][:2]
    assert mail["path"] == MAIL_PATH and mail["rule"].startswith("deny secret -> external")
    assert mail["process"] == {"pid": None, "cmdline": "ifc decide"} and mail["time"].endswith("Z")
    assert set(evil["fix"]) == {"policy", "mint"} and evil["path"] == []
    assert doc["denials"][3]["target"] == EVIL
    assert doc == report_dict(load_run(exfil_run))


def test_output_file(exfil_run, tmp_path, capsys):
    target = tmp_path / "report.html"
    code, out, err = ifc_report(capsys, str(exfil_run), "--format", "html", "-o", str(target))
    assert (code, out, err) == (0, "", "")
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


# ------------------------------------------------------------------------------------------- html


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_self_contained_and_escaped(exfil_run):
    page = render_html(load_run(exfil_run))
    parsed = _Tags()
    parsed.feed(page)
    names = [t for t, _ in parsed.tags]
    assert "script" not in names and "<script" not in page.lower()
    for tag, attrs in parsed.tags:
        assert not attrs.get("src"), tag
        assert attrs.get("href", "#").startswith("#"), attrs
        assert not any(k.startswith("on") for k in attrs), attrs
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#x27;q&#x27;.yml" in page
    assert EVIL in "".join(parsed.text)  # and it reads back as the literal string
    assert names.count("article") == 4 and names.count("svg") == 2  # two flow paths (mail, CI); two authority denials
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "secrets never leave the sandbox" in page
    assert "ifc caps mint --policy" in page and "user-select: all" in page


def test_svg_draws_nodes_by_kind_and_escapes():
    hops = [Hop("file:<b>&\"x\"", "read", "subject:session"),
            Hop("subject:session", "connect", "endpoint:smtp://smtp.gmail.com:587")]
    svg = path_svg(hops)
    root = ET.fromstring(svg)  # well-formed XML: every string escaped
    ns = "{http://www.w3.org/2000/svg}"
    groups = root.findall(f"{ns}g")
    assert [g.get("class") for g in groups] == ["node node-file", "node node-subject", "node node-endpoint"]
    texts = ["".join(t.itertext()) for t in root.iter(f"{ns}text")]
    assert '<b>&"x"' in texts and "read" in texts and "connect" in texts and "\u2717 denied" in texts
    assert root.find(f"{ns}title").text.startswith('provenance path: <b>&"x" --read--> session')
    assert "<b>" not in svg
    assert path_svg([]) == ""


def test_svg_wraps_long_paths_onto_rows():
    hops = [Hop(f"subject:s{i}" if i % 2 else f"file:f{i}.txt", "read" if i % 2 == 0 else "write",
                f"subject:s{i + 1}" if i % 2 == 0 else f"file:f{i + 1}.txt") for i in range(12)]
    one_row = ET.fromstring(path_svg(hops, max_width=10_000))
    wrapped = ET.fromstring(path_svg(hops, max_width=500))
    ns = "{http://www.w3.org/2000/svg}"
    assert not one_row.findall(f"{ns}polyline")
    assert len(wrapped.findall(f"{ns}polyline")) >= 3  # each wrap is an elbow arrow
    assert float(wrapped.get("width")) <= 500 < float(one_row.get("width"))
    assert float(wrapped.get("height")) > float(one_row.get("height"))


def test_declassification_token_and_process_details(tmp_path):
    policy = load_policy(POLICY)
    log = EventLog(tmp_path / "events.db")
    log.set_meta(policy=str(POLICY), policy_digest=policy.digest, agent="", source="test")
    monitor = Monitor(policy, held=frozenset({"ci-edit"}), labels=LabelStore(tmp_path / "labels.db"), log=log)
    for op, target in (("read", "inbox/issue-42.md"), ("write", ".github/workflows/ci.yml"), ("read", ".env"),
                       ("connect", "smtp.gmail.com:587")):
        monitor.decide(Request(op, target, pid=4242, cmdline="agent --task 'fix <ci>'"))
    log.record(kind="token", subject="session", op="use", target="tok-1", allowed=True, reason="first use",
               token_id="tok-1", pid=4242, cmdline="agent")
    log.record(kind="deny", subject="session", op="write", target="src/x.py", allowed=False,
               reason="token: block 2 does not allow write", rule="token tok-1", token_id="tok-1", token_block=2)
    monitor.close()
    run = load_run(tmp_path)
    assert [e.kind for e in run.declassifications] == ["endorse"] and run.tokens[0].token_id == "tok-1"
    md = render_markdown(run)
    assert "## Declassifications and endorsements (1)" in md and "## Token uses (1)" in md
    assert "- **process:** pid 4242, `agent --task 'fix <ci>'`" in md
    assert "- **token:** `tok-1`, block 2" in md
    assert "endorse `write` `.github/workflows/ci.yml`" in md
    page = render_html(run)
    assert "pid 4242, <code>agent --task &#x27;fix &lt;ci&gt;&#x27;</code>" in page
    assert "<code>tok-1</code>, block 2" in page


# ------------------------------------------------------------------------------------------- empty and bad runs


def test_a_run_without_denials_renders_cleanly(tmp_path, capsys):
    assert decide(tmp_path / "calm", "read", "src/app.py", "connect", "https://api.anthropic.com") == 0
    capsys.readouterr()
    code, out, err = ifc_report(capsys, str(tmp_path / "calm"))
    assert code == 0 and err == ""
    assert "| deny | 0 |" in out and "No denials." in out and "Nothing was denied in this run." in out
    assert "| allow (aggregated) | 2 decisions over 2 (subject, op, object) |" in out
    doc = json.loads(ifc_report(capsys, str(tmp_path / "calm"), "--format", "json")[1])
    assert doc["denials"] == [] and doc["summary"]["top_denied_targets"] == []
    page = ifc_report(capsys, str(tmp_path / "calm"), "--format", "html")[1]
    assert "Nothing was denied in this run." in page and "<svg" not in page


def test_an_empty_log_renders_cleanly(tmp_path, capsys):
    EventLog(tmp_path / "events.db").close()
    for fmt in ("md", "html", "json"):
        code, out, err = ifc_report(capsys, str(tmp_path), "--format", fmt)
        assert code == 0 and err == "" and out
    assert "no events" in ifc_report(capsys, str(tmp_path))[1]


def _bad_runs(tmp: Path, good: Path) -> dict[str, Path]:
    (tmp / "file").write_text("hello")
    (tmp / "empty").mkdir()
    (tmp / "garbage").mkdir()
    (tmp / "garbage" / "events.db").write_bytes(b"not a database, only text pretending" * 100)
    (tmp / "zero").mkdir()
    (tmp / "zero" / "events.db").write_bytes(b"")
    (tmp / "other").mkdir()
    sqlite3.connect(tmp / "other" / "events.db").execute("CREATE TABLE x (a)").connection.close()
    (tmp / "badjson").mkdir()
    shutil.copy(good / "events.db", tmp / "badjson" / "events.db")
    db = sqlite3.connect(tmp / "badjson" / "events.db")
    db.execute("UPDATE events SET path = '[oops' WHERE kind = 'deny'")
    db.commit()
    db.close()
    (tmp / "badhops").mkdir()
    shutil.copy(good / "events.db", tmp / "badhops" / "events.db")
    db = sqlite3.connect(tmp / "badhops" / "events.db")
    db.execute("UPDATE events SET path = '[[1, 2]]' WHERE kind = 'deny'")
    db.commit()
    db.close()
    return {name: tmp / name for name in ("missing", "file", "empty", "garbage", "zero", "other", "badjson", "badhops")}


def test_bad_run_dirs_exit_2_with_one_line(exfil_run, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    expected = {
        "missing": "does not exist", "file": "is not a directory",
        "empty": "is not a run directory: it has no events.db",
        "garbage": "is not a readable event log: file is not a database", "zero": "is not an ifc event log",
        "other": "is not an ifc event log: no `meta` table", "badjson": "has a malformed event",
        "badhops": "has a malformed provenance path",
    }
    for name, path in _bad_runs(bad, exfil_run).items():
        before = snapshot(path) if path.is_dir() else None
        code, out, err = ifc_report(capsys, str(path), "--format", "html")
        assert code == 2, name
        assert out == "", name
        assert err.count("\n") == 1 and err.startswith("ifc report: error: `"), (name, err)
        assert expected[name] in err, (name, err)
        assert "Traceback" not in err
        if before is not None:
            assert snapshot(path) == before, name  # nothing created, nothing changed


def test_unwritable_output_is_a_usage_error(exfil_run, tmp_path, capsys):
    code, _, err = ifc_report(capsys, str(exfil_run), "-o", str(tmp_path / "no" / "such" / "dir" / "r.md"))
    assert code == 2 and err.startswith("ifc report: error: cannot write `") and err.count("\n") == 1


# ------------------------------------------------------------------------------------------- in a browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str | None:
    return shutil.which("chromium") or (str(Path("/usr/bin/chromium")) if Path("/usr/bin/chromium").exists() else None)


@pytest.mark.integration
def test_html_renders_in_headless_chromium(request, tmp_path, capsys):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian package `chromium`)")
    exfil_run = request.getfixturevalue("exfil_run")
    page = tmp_path / "report.html"
    assert ifc_report(capsys, str(exfil_run), "--format", "html", "-o", str(page))[0] == 0
    base = [browser, *CHROMIUM_FLAGS]
    dom = subprocess.run([*base, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count('class="denial"') == 4
    assert dom.count("<svg") == 2 and 'class="node node-endpoint"' in dom and "smtp://smtp.gmail.com:587" in dom
    assert "\u2717 denied" in dom and "secrets never leave the sandbox" in dom
    assert "&lt;script&gt;alert" in dom and "<script" not in dom  # the hostile target stayed text
    shot = tmp_path / "report.png"
    subprocess.run([*base, f"--user-data-dir={tmp_path / 'profile-shot'}", "--hide-scrollbars",
                    "--window-size=1100,1800", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (1100, 1800)
    assert len(png) > 50_000  # a blank page compresses to a few kB
