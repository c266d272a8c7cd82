"""The monitor's decisions about secret files served with sentinels: what a served read carries, what a write
to such a file records, and where a workspace file's sentinel may go (swapped, as it is, or not at all)."""

from __future__ import annotations

from ifc.monitor import LabelStore, Monitor, Request
from ifc.monitor.containment import Facts
from ifc.policy import compile_text

POLICY = """
labels { secrecy public < internal < secret
         secrecy customer }
files {
  "**" internal
  ".env*", "*.pem" secret
  "crm.env" secret + customer
}
endpoints {
  "https://api.stripe.com" clearance internal as payments, external
  "https://model.example" clearance internal as model, external
  "https://vault.example" clearance secret
}
secret STRIPE_KEY from file ".env" key "STRIPE_KEY" to "https://api.stripe.com"
secret MODEL_KEY from env "MODEL_KEY" to "https://model.example"
deny secret -> external "secrets never leave"
"""
SERVED = Facts(sentinels=True)


def monitor(labels: LabelStore | None = None) -> Monitor:
    return Monitor(compile_text(POLICY).policy, labels=labels if labels is not None else LabelStore())


def taint(m: Monitor) -> str:
    return m.policy.lattice.describe(m.run.taint, with_integrity=False)


def test_a_served_read_carries_the_label_without_secret():
    m = monitor()
    d = m.decide(Request("read", ".env", facts=SERVED))
    assert d.allowed and d.object_label.startswith("internal") and "sentinels" in d.reason
    assert taint(m) == "internal"
    assert m.decide(Request("connect", "https://model.example")).allowed


def test_the_same_read_without_the_fact_or_of_a_file_that_cannot_be_served_carries_the_full_label():
    for path, facts in ((".env", None), ("key.pem", SERVED), ("notes.txt", SERVED)):
        m = monitor()
        m.decide(Request("read", path, facts=facts))
        assert taint(m) == ("internal" if path == "notes.txt" else "secret"), path
    m = monitor()
    m.decide(Request("read", "crm.env", facts=SERVED))
    assert taint(m) == "internal + customer"  # only `secret` goes: customer data in its keys stays customer


def test_a_write_by_a_secret_run_is_recorded_and_read_back_as_secret_in_the_next_run(tmp_path):
    store = tmp_path / "labels.db"
    first = monitor(LabelStore(store))
    first.decide(Request("read", "key.pem"))
    assert first.decide(Request("write", ".env")).allowed
    first.close()
    second = monitor(LabelStore(store))
    second.decide(Request("read", ".env", facts=SERVED))
    assert taint(second) == "secret"
    clean = monitor(LabelStore(tmp_path / "other.db"))  # a write by a run that read only the served file
    clean.decide(Request("read", ".env", facts=SERVED))
    clean.decide(Request("write", ".env"))
    assert clean.labels.get(".env") is None


def test_where_a_workspace_files_sentinel_may_go():
    m = monitor()
    bound = m.decide(Request("send", "STRIPE_KEY@https://api.stripe.com:443"))
    assert bound.allowed and "may be sent" in bound.reason
    elsewhere = m.decide(Request("send", "STRIPE_KEY@https://model.example:443"))
    assert elsewhere.allowed and "as it is, never swapped" in elsewhere.reason
    unbound = m.decide(Request("send", ".env[DB_PASSWORD]@https://model.example:443"))
    assert unbound.allowed and "no secret binds" in unbound.reason
    env = m.decide(Request("send", "MODEL_KEY@https://api.stripe.com:443"))
    assert not env.allowed  # an environment secret's sentinel is a credential: refused where it is not bound
