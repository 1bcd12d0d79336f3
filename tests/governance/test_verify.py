"""Tampering by raw SQL is found by verify, which names the first run and row that differ."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from records import make_record

from certrisk.governance.chain import canonical_json, entry_hash, sha256_hex
from certrisk.schemas.tables import AuditEntry, sample_risk_table

AUDIT = AuditEntry.__table__

DAG = "certrisk_example"


@pytest.fixture
def recorded(store):
    for i in range(1, 4):
        store.write_run(make_record(f"run-{i}", 30, seed=i))
    report = store.verify()
    assert report.ok and report.runs_checked == 3 and report.rows_checked == 3 * (30 * 4 + 1 + 2 + 3)
    return store


def _sql(store, *statements, no_fk=False):
    if no_fk and store.dialect == "sqlite":  # a raw sqlite3 connection: foreign keys off by default
        import sqlite3

        raw = sqlite3.connect(sa.make_url(store.url).database)
        with raw:
            for stmt in statements:
                raw.execute(stmt)
        raw.close()
        return
    with store.engine.begin() as conn:
        if no_fk and conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        for stmt in statements:
            conn.execute(sa.text(stmt))


def _run_pk(store, run_id):
    with store.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT id FROM pipeline_run WHERE run_id = :r"), {"r": run_id}
        ).scalar_one()


def test_changed_radius(recorded):
    _sql(
        recorded,
        "UPDATE certificate SET radius = radius + 1e-12 WHERE sample_id = 'run-2:3' AND method = 'ibp'",
    )
    report = recorded.verify()
    assert not report.ok
    assert report.first_bad_run == f"{DAG}/run-2#1"
    assert report.first_bad_row == "certificate sample_id='run-2:3' method='ibp' row_no=33"
    assert "changed" in report.message


def test_changed_tier(recorded):
    _sql(
        recorded,
        "UPDATE sample_risk SET tier = CASE WHEN tier = 'low' THEN 'critical' ELSE 'low' END "
        "WHERE sample_id = 'run-3:5'",
    )
    report = recorded.verify()
    assert (report.ok, report.first_bad_run) == (False, f"{DAG}/run-3#1")
    assert report.first_bad_row == "sample_risk sample_id='run-3:5' row_no=5"


def test_changed_batch_tier_in_run_header(recorded):
    _sql(recorded, "UPDATE pipeline_run SET tier = 'low', mean_risk = 0.01 WHERE run_id = 'run-1'")
    report = recorded.verify()
    assert (report.ok, report.first_bad_run, report.first_bad_row) == (
        False,
        f"{DAG}/run-1#1",
        "pipeline_run",
    )


def test_rewritten_row_and_digest(recorded):
    from certrisk.governance.chain import row_digest

    with recorded.engine.connect() as conn:
        row = (
            conn.execute(
                sa.text("SELECT * FROM drift_test WHERE row_no = 0 AND run_pk = :p"),
                {"p": _run_pk(recorded, "run-2")},
            )
            .mappings()
            .one()
        )
    forged = ("ks", "feature", "x0", 0.1, 0.9, 0.9, 0.1, "ks_d", False)
    assert forged != (row["test"], row["family"], row["feature"], row["statistic"], row["p_value"])
    _sql(
        recorded,
        f"UPDATE drift_test SET p_value = 0.9, q_value = 0.9, row_digest = '{row_digest(forged)}' "
        f"WHERE row_no = 0 AND run_pk = {row['run_pk']}",
    )
    report = recorded.verify()
    assert (report.ok, report.first_bad_run, report.first_bad_row) == (False, f"{DAG}/run-2#1", "drift_test")
    assert "rewritten together" in report.message


def test_deleted_sample_row(recorded):
    _sql(recorded, "DELETE FROM sample_risk WHERE sample_id = 'run-2:7'")
    report = recorded.verify()
    assert (report.ok, report.first_bad_run) == (False, f"{DAG}/run-2#1")
    assert report.first_bad_row == "sample_risk row_no=7 sample_id='run-2:7'"


def test_deleted_last_sample_row(recorded):
    _sql(recorded, "DELETE FROM sample_risk WHERE sample_id = 'run-1:29'")
    report = recorded.verify()
    assert (report.ok, report.first_bad_run, report.first_bad_row) == (
        False,
        f"{DAG}/run-1#1",
        "sample_risk row_no=29",
    )


def test_deleted_run_with_its_audit_entry(recorded):
    pk = _run_pk(recorded, "run-2")
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
    report = recorded.verify()
    # entries: 1 model, 2 policy, 3 run-1, 4 run-2, 5 run-3
    assert (report.ok, report.first_bad_run) == (False, f"{DAG}/run-3#1")
    assert "seq 5 found where seq 4 was expected" in report.message


def test_deleted_run_rows_only(recorded):
    pk = _run_pk(recorded, "run-2")
    tables = ("sample_risk", "certificate", "rule_sample", "rule_result", "drift_test", "rmf_evidence")
    _sql(
        recorded,
        *(f"DELETE FROM {t} WHERE run_pk = {pk}" for t in tables),
        f"DELETE FROM pipeline_run WHERE id = {pk}",
        no_fk=True,
    )
    report = recorded.verify()
    assert (report.ok, report.first_bad_run) == (False, f"{DAG}/run-2#1")
    assert "missing from pipeline_run" in report.message


def _forge_run(store, run_id):
    """Copy run-1 under a new run_id with raw SQL (no audit entry)."""
    src = _run_pk(store, "run-1")
    cols = (
        "dag_id, batch_id, created_at, recorded_at, model_id, policy_id, package_version, n_samples, "
        "abstention_rate, mean_risk, tier, drift, summary, manifest_digest"
    )
    _sql(
        store,
        f"INSERT INTO pipeline_run (run_id, revision, {cols}) SELECT '{run_id}', 1, {cols} "
        f"FROM pipeline_run WHERE id = {src}",
    )
    new = _run_pk(store, run_id)
    rest = ", ".join(f'"{c.name}"' for c in sample_risk_table.c if c.name != "run_pk")
    _sql(
        store,
        f"INSERT INTO sample_risk (run_pk, {rest}) SELECT {new}, {rest} FROM sample_risk WHERE run_pk = {src}",
    )
    return new


def test_forged_run_without_audit_entry(recorded):
    _forge_run(recorded, "forged")
    report = recorded.verify()
    assert (report.ok, report.first_bad_run) == (False, f"{DAG}/forged#1")
    assert "has no audit entry" in report.message


def test_forged_run_spliced_into_the_chain(recorded):
    new = _forge_run(recorded, "forged")
    with recorded.engine.connect() as conn:
        e2 = conn.execute(sa.select(AUDIT).where(AUDIT.c.seq == 2)).mappings().one()
        m = conn.execute(sa.select(AUDIT.c.manifest).where(AUDIT.c.seq == 1)).scalar_one()
    forged_entry = {
        "seq": 3,
        "dag_id": DAG,
        "run_id": "forged",
        "revision": 1,
        "recorded_at": e2["recorded_at"],
    }
    digest = sha256_hex(canonical_json(m))
    h = entry_hash(prev_hash=e2["entry_hash"], manifest_digest=digest, manifest=m, **forged_entry)
    # make room at seq 3 and re-link the old third entry to the forgery, as a forger must
    _sql(
        recorded,
        "UPDATE audit_log SET seq = seq + 100 WHERE seq >= 3",
        "UPDATE audit_log SET seq = seq - 99 WHERE seq >= 100",
        f"UPDATE audit_log SET prev_hash = '{h}' WHERE seq = 4",
    )
    with recorded.engine.begin() as conn:
        conn.execute(
            AUDIT.insert().values(
                run_pk=new,
                manifest_digest=digest,
                manifest=m,
                prev_hash=e2["entry_hash"],
                entry_hash=h,
                **forged_entry,
            )
        )
    report = recorded.verify()
    assert not report.ok
    # the forged entry itself links and hashes correctly; its run's rows were copied from run-1,
    # whose header names run-1, or the next entry no longer matches its hash
    assert report.first_bad_run in (f"{DAG}/forged#1", f"{DAG}/run-3#1")


def test_forged_run_appended_at_the_end_needs_the_published_head(recorded):
    head = recorded.verify().head
    recorded.write_run(make_record("appended", 5, seed=9))  # a perfect forger computes the same hashes
    assert recorded.verify().ok
    report = recorded.verify(expected_head=head)
    assert not report.ok and "1 entry was appended after the published head" in report.message
    assert report.first_bad_run == f"{DAG}/appended#1"
