"""Issue 14's tampering that verify did not see: each is now found, named, and explained.

A duplicate key prepended to a run's summary (SQLite's json_extract reads the first, Python the
last), the same instant spelled with another UTC offset, columns the chain did not cover, a
number beyond float64 in a document, and a record rewritten with fresh hashes after its head was
published.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from records import make_record
from typer.testing import CliRunner

from certrisk.cli import app
from certrisk.governance import queries

DAG = "certrisk_example"


@pytest.fixture
def recorded(store):
    for i in range(1, 4):
        store.write_run(make_record(f"run-{i}", 20, seed=i))
    report = store.verify()
    assert report.ok, report.message
    return store


def _sql(store, *statements, **params):
    with store.engine.begin() as conn:
        for stmt in statements:
            conn.execute(sa.text(stmt), params)


def _summary_text(store, run_id: str) -> str:
    with store.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT CAST(summary AS TEXT) FROM pipeline_run WHERE run_id = :r"), {"r": run_id}
        ).scalar_one()


def test_duplicate_key_in_the_summary_is_tampering(recorded):
    head = recorded.verify().head
    text = _summary_text(recorded, "run-2")
    forged = '{"reasons":["forged: all clear"],"tier_counts":{"low":20},' + text[1:]
    _sql(recorded, "UPDATE pipeline_run SET summary = :s WHERE run_id = 'run-2'", s=forged)
    with recorded.connect() as conn:
        shown = queries.run_summary(conn, "run-2")["reasons"]
    if recorded.dialect == "sqlite":  # the attack: the views read the forged first copy
        assert shown == ["forged: all clear"]
    for report in (recorded.verify(), recorded.verify(expected_head=head)):
        assert (report.ok, report.first_bad_run, report.first_bad_row) == (
            False,
            f"{DAG}/run-2#1",
            "pipeline_run.summary",
        )
        assert "duplicate key 'reasons'" in report.message and "first of two equal keys" in report.message


def test_summary_respelled_without_changing_its_values_is_found(recorded):
    text = _summary_text(recorded, "run-1")
    respelled = json.dumps(json.loads(text), indent=1)
    _sql(recorded, "UPDATE pipeline_run SET summary = :s WHERE run_id = 'run-1'", s=respelled)
    report = recorded.verify()
    assert (report.ok, report.first_bad_row) == (False, "pipeline_run.summary")
    assert "not stored as the canonical JSON text" in report.message


def test_out_of_range_number_in_the_summary_is_reported_not_raised(recorded):
    text = _summary_text(recorded, "run-3")
    _sql(
        recorded,
        "UPDATE pipeline_run SET summary = :s WHERE run_id = 'run-3'",
        s=text.replace('"seeds":{', '"seeds":{"x":1e400,', 1),
    )
    report = recorded.verify()
    assert (report.ok, report.first_bad_run, report.first_bad_row) == (
        False,
        f"{DAG}/run-3#1",
        "pipeline_run.summary",
    )
    assert "out-of-range number 1e400" in report.message


def _created_at(store, run_id):
    with store.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT CAST(created_at AS TEXT) FROM pipeline_run WHERE run_id = :r"), {"r": run_id}
        ).scalar_one()


def test_same_instant_with_another_offset(recorded, tmp_path):
    """SQLite stores text: the same instant spelled '...+02:00' hid the run from `runs --since` and
    `export`, and crashed `certrisk runs`. verify now names it; `runs` reads it. PostgreSQL's
    timestamptz stores the instant itself: there is no second spelling to find."""
    stored = _created_at(recorded, "run-2")
    instant = datetime.fromisoformat(stored).replace(tzinfo=UTC)
    respelled = (instant + timedelta(hours=2)).replace(tzinfo=None).isoformat() + "+02:00"
    _sql(recorded, "UPDATE pipeline_run SET created_at = :c WHERE run_id = 'run-2'", c=respelled)
    out = CliRunner().invoke(app, ["runs", "--db", recorded.url, "--format", "json"])
    assert out.exit_code == 0, out.output
    assert "run-2" in [r["run_id"] for r in json.loads(out.stdout)]
    assert CliRunner().invoke(app, ["runs", "--db", recorded.url]).exit_code == 0
    report = recorded.verify()
    if recorded.dialect == "sqlite":
        assert (report.ok, report.first_bad_run, report.first_bad_row) == (
            False,
            f"{DAG}/run-2#1",
            "pipeline_run.created_at",
        )
        assert f"stored as '{respelled}'" in report.message and "the one representation" in report.message
    else:
        assert report.ok and _created_at(recorded, "run-2") == stored


@pytest.mark.parametrize(
    "statement, bad_row",
    [
        ("UPDATE pipeline_run SET recorded_at = recorded_at + INTERVAL '1 day' WHERE run_id = 'run-2'", None),
        ("UPDATE model SET format = 'pickle'", "model id=1"),
        ("UPDATE model SET description = 'approved by the board'", "model id=1"),
        ("UPDATE policy SET recorded_at = :t", "policy id=1"),
        (
            "UPDATE rmf_subcategory SET text = 'anything' WHERE id = 'MEASURE 2.7'",
            "rmf_subcategory id='MEASURE 2.7'",
        ),
        (
            "UPDATE pipeline_run SET recorded_by = 'someone else' WHERE run_id = 'run-1'",
            "pipeline_run.recorded_by",
        ),
    ],
    ids=[
        "run-recorded_at",
        "model-format",
        "model-description",
        "policy-recorded_at",
        "rmf-text",
        "recorded_by",
    ],
)
def test_columns_the_chain_did_not_cover(recorded, statement, bad_row):
    if "INTERVAL" in statement and recorded.dialect == "sqlite":
        statement = (
            "UPDATE pipeline_run SET recorded_at = '2020-01-01 00:00:00.000000' WHERE run_id = 'run-2'"
        )
        bad_row = "pipeline_run.recorded_at"
    elif "INTERVAL" in statement:
        bad_row = "pipeline_run.recorded_at"
    stamp = datetime(2020, 1, 1, 0, 0, 0, 1, tzinfo=UTC)  # microseconds: the one SQLite spelling
    _sql(recorded, statement, **({"t": stamp.replace(tzinfo=None)} if ":t" in statement else {}))
    report = recorded.verify()
    assert (report.ok, report.first_bad_row) == (False, bad_row), report.message
    assert "changed" in report.message or "rewritten" in report.message


def test_model_row_inserted_by_hand_is_found(recorded):
    """With require_registered_model, the model table is the list of approved versions: a row
    inserted outside register_model has no audit entry."""
    _sql(
        recorded,
        "INSERT INTO model (name, sha256, format, registered_at) VALUES ('digits', :sha, 'torchscript', :t)",
        sha="cd" * 32,
        t=datetime(2026, 1, 1),
    )
    report = recorded.verify()
    assert (report.ok, report.first_bad_run) == (False, f"model digits sha256={'cd' * 32}")
    assert "has no audit entry" in report.message


def test_record_rewritten_with_fresh_hashes_after_the_head_was_published(recorded):
    """A rewrite that recomputes every later hash leaves each link valid; only the published head
    shows it, and verify says the chain was rewritten, not that entries were appended."""
    head = recorded.verify().head
    with recorded.engine.connect() as conn:
        pk = conn.execute(sa.text("SELECT id FROM pipeline_run WHERE run_id = 'run-3'")).scalar_one()
    tables = (
        "sample_risk",
        "certificate",
        "rule_sample",
        "rule_result",
        "drift_test",
        "rmf_evidence",
        "audit_log",
    )
    _sql(
        recorded,
        *(f"DELETE FROM {t} WHERE run_pk = {pk}" for t in tables),
        f"DELETE FROM pipeline_run WHERE id = {pk}",
    )
    forged = make_record("run-3", 20, seed=3)
    low = forged.summary | {"tier": "low", "reasons": []}
    from dataclasses import replace

    recorded.write_run(replace(forged, summary=low))
    assert recorded.verify().ok  # a perfect forger's chain
    report = recorded.verify(expected_head=head)
    assert not report.ok
    assert "is not in the chain" in report.message and "rewritten" in report.message
    assert "appended" not in report.message
