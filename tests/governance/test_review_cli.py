"""``certrisk review`` and ``certrisk reviews`` end to end on both backends."""

from __future__ import annotations

import json

from records import make_record
from typer.testing import CliRunner

from certrisk.cli import app
from certrisk.governance import GovernanceStore

runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, list(args))


def test_review_records_a_decision_once_and_lists_it(db_url):
    store = GovernanceStore(db_url)
    store.upgrade()
    store.write_run(make_record("run-1", 15))
    args = ("review", "--db", db_url, "--run", "run-1", "--decision", "Reject", "--comment", "drift on x0")
    out = _cli(*args, "--reviewer", "alice", "--key", "ticket-7")
    assert out.exit_code == 0, out.output
    assert "recorded: reject of run certrisk_example/run-1 (revision 1) by alice" in out.stdout
    assert f"database: {store.masked_url}" in out.output
    again = _cli(*args, "--reviewer", "alice", "--key", "ticket-7")
    assert again.exit_code == 0 and "already recorded: reject" in again.stdout
    default = _cli(*args[:-2], "--decision", "approve", "--comment", "fixed upstream")
    assert default.exit_code == 0 and "recorded: approve" in default.stdout  # reviewer: the OS user
    out = _cli("reviews", "--db", db_url, "--run", "run-1", "--format", "json")
    rows = json.loads(out.stdout)
    assert [(r["decision"], r["source"]) for r in rows] == [("approve", "cli"), ("reject", "cli")]
    assert rows[1]["reviewer"] == "alice" and rows[1]["comment"] == "drift on x0"
    assert _cli("reviews", "--db", db_url).exit_code == 0
    unknown = _cli("review", "--db", db_url, "--run", "run-9", "--decision", "approve", "--comment", "x")
    assert unknown.exit_code == 2 and "run-9" in unknown.output and "nothing was written" in unknown.output
    bad = _cli("review", "--db", db_url, "--run", "run-1", "--decision", "maybe", "--comment", "x")
    assert bad.exit_code == 2 and "decision 'maybe' is not one of" in bad.output
    assert len(store.reviews()) == 2 and store.verify().ok
    store.dispose()


def test_review_without_a_database_says_so(tmp_path):
    url = f"sqlite:///{tmp_path / 'none.db'}"
    out = _cli("review", "--db", url, "--run", "run-1", "--decision", "approve", "--comment", "x")
    assert out.exit_code == 2 and "no runs recorded yet" in out.output
    assert not (tmp_path / "none.db").exists()


def test_verify_stores_its_result_for_the_dashboard(db_url):
    store = GovernanceStore(db_url)
    store.upgrade()
    store.write_run(make_record("run-1", 15))
    assert store.last_verify() is None
    out = _cli("verify", "--db", db_url)
    assert out.exit_code == 0, out.output
    last = store.last_verify()
    assert last["ok"] and last["head"] in out.stdout
    store.dispose()
