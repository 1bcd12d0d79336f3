"""GovernanceStore writes: exactly once, supersede, bad input, unreachable database."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from records import MODEL_SHA, make_record

from certrisk.governance import GovernanceStore
from certrisk.governance.store import schema_head
from certrisk.schemas.errors import InputError, RecordConflictError, StoreError, StoreUnavailableError
from certrisk.schemas.rmf import catalog


def _count(store, table):
    with store.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one()


def test_upgrade_loads_catalog_and_is_repeatable(store):
    store.upgrade()
    assert _count(store, "rmf_subcategory") == len(catalog()) == 72
    assert store.current_revision() == schema_head()


def test_write_then_read_back_exactly(store, record):
    result = store.write_run(record)
    assert (result.status, result.revision) == ("written", 1)
    got = store.get_run(record.dag_id, record.run_id)
    pd.testing.assert_frame_equal(
        got["sample_risk"].drop(columns=["top_factors", "rmf_ids"]),
        record.sample_risk.drop(columns=["top_factors", "rmf_ids"]).astype(
            got["sample_risk"].dtypes.drop(["top_factors", "rmf_ids"]).to_dict()
        ),
    )
    assert got["sample_risk"]["top_factors"].tolist() == record.sample_risk["top_factors"].tolist()
    certs = got["certificates"]
    assert len(certs) == 2 * len(record.sample_risk)
    # floats round-trip bit for bit, NaN stays NaN
    assert certs["radius"].to_numpy().tobytes() == record.certificates["radius"].to_numpy().tobytes()
    assert math.isnan(certs["eps"].iloc[0]) and certs["sigma"].iloc[0] == 0.25
    # the supplied figures as given (they agree with the rows), and the ones the rows determine
    # that the record left out, derived from the rows
    assert {k: got["summary"][k] for k in record.summary} == record.summary
    samples, n = record.sample_risk, len(record.sample_risk)
    assert {k: v for k, v in got["summary"].items() if k not in record.summary} == {
        "high_share": float(samples["tier"].isin(["high", "critical"]).sum() / n),
        "n_drift_tests": 2,
        "n_drift_tests_rejected": 0,
        "rule_pass_rate": 1.0,
    }
    assert got["rmf_evidence"] == record.rmf_evidence
    runs = store.list_runs()
    assert runs.iloc[0][["dag_id", "run_id", "n_samples", "tier"]].tolist() == [
        record.dag_id,
        record.run_id,
        40,
        record.summary["tier"],
    ]
    assert store.verify().ok


def test_same_run_twice_changes_nothing(store, record):
    first = store.write_run(record)
    counts = {t: _count(store, t) for t in ("pipeline_run", "sample_risk", "certificate", "audit_log")}
    again = store.write_run(make_record("run-1", 40))  # equal payload, new objects
    assert again.status == "already recorded"
    assert (again.run_pk, again.manifest_digest) == (first.run_pk, first.manifest_digest)
    assert {t: _count(store, t) for t in counts} == counts


def test_different_payload_is_refused_unless_superseded(store, record):
    store.write_run(record)
    changed = make_record("run-1", 40, seed=1)
    with pytest.raises(RecordConflictError, match="run-1.*different payload.*supersede=True"):
        store.write_run(changed)
    assert _count(store, "pipeline_run") == 1
    result = store.write_run(changed, supersede=True, reason="batch re-scored after a labelling fix")
    assert (result.status, result.revision) == ("superseded", 2)
    assert store.write_run(changed).status == "already recorded"
    runs = store.list_runs(include_superseded=True)
    assert sorted(runs["revision"]) == [1, 2]
    assert store.list_runs()["revision"].tolist() == [2]
    assert store.get_run(record.dag_id, "run-1")["revision"] == 2
    assert store.get_run(record.dag_id, "run-1", revision=1)["manifest_digest"] != result.manifest_digest
    with store.engine.connect() as conn:
        link = conn.execute(sa.text("SELECT supersedes_id FROM pipeline_run WHERE revision = 2")).scalar_one()
    assert link == store.get_run(record.dag_id, "run-1", revision=1)["run_pk"]
    assert store.verify().ok


def _ghost(certs):
    certs = certs.copy()
    certs.loc[0, "sample_id"] = "ghost"
    return certs


def _with_samples(record, col, row, value):
    frame = record.sample_risk.copy()
    frame.loc[row, col] = value
    return replace(record, sample_risk=frame)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda r: _with_samples(r, "sample_id", 3, "run-1:2"),
            r"duplicate key \{'sample_id': 'run-1:2'\} at row 3",
        ),
        (lambda r: _with_samples(r, "risk", 5, np.nan), r"risk: NaN or inf in row 5 \(sample_id 'run-1:5'\)"),
        (
            lambda r: _with_samples(r, "tier", 7, "severe"),
            r"unknown tier 'severe' at row 7 \(sample_id 'run-1:7'\)",
        ),
        (lambda r: replace(r, sample_risk=r.sample_risk.iloc[:0]), "has no samples"),
        (
            lambda r: replace(r, certificates=_ghost(r.certificates)),
            r"sample_id 'ghost' \(row 0\) is not in sample_risk",
        ),
        (
            lambda r: replace(r, rmf_evidence=[("MEASURE 9.9", "certificate", "x")]),
            "unknown NIST AI RMF subcategory",
        ),
        (
            lambda r: replace(r, summary={**r.summary, "mean_risk": float("nan")}),
            "summary: not JSON-serializable",
        ),
        (
            lambda r: replace(r, sample_risk=r.sample_risk.drop(columns=["risk"])),
            r"missing column\(s\) \['risk'\]",
        ),
    ],
    ids=[
        "duplicate-sample-id",
        "nan-risk",
        "unknown-tier",
        "empty",
        "unknown-cert-sample",
        "unknown-rmf",
        "nan-summary",
        "missing-column",
    ],
)
def test_bad_input_is_refused_and_nothing_written(store, record, mutate, message):
    with pytest.raises(InputError, match=message):
        store.write_run(mutate(record))
    assert _count(store, "pipeline_run") == 0 and _count(store, "sample_risk") == 0
    assert _count(store, "audit_log") == 0 and _count(store, "model") == 0


def test_unregistered_model_is_refused_when_registration_is_required(db_url, record):
    store = GovernanceStore(db_url, require_registered_model=True)
    store.upgrade()
    with pytest.raises(StoreError, match=r"model 'digits' version sha256=.* is not registered"):
        store.write_run(record)
    assert _count(store, "pipeline_run") == 0 and _count(store, "sample_risk") == 0
    assert _count(store, "model") == 0
    store.register_model("digits", MODEL_SHA, format="torchscript")
    assert store.register_model("digits", MODEL_SHA) == store.register_model("digits", MODEL_SHA)
    assert store.write_run(record).status == "written"
    # the default registers the model version on first write
    other = make_record("run-2", 5, model_sha256="ab" * 32)
    with pytest.raises(StoreError, match="not registered"):
        store.write_run(other)
    assert GovernanceStore(db_url).write_run(other).status == "written"
    store.dispose()


def test_unreachable_postgres_is_retryable_and_hides_password(record):
    store = GovernanceStore("postgresql+psycopg://certrisk:s3cret-pw@127.0.0.1:1/certrisk")
    with pytest.raises(StoreUnavailableError) as info:
        store.write_run(record)
    assert info.value.retryable
    assert "s3cret-pw" not in str(info.value)
    assert "postgresql+psycopg://certrisk:***@127.0.0.1:1/certrisk" in str(info.value)


def test_unopenable_sqlite_is_retryable(tmp_path, record):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = GovernanceStore(f"sqlite:///{blocker}/sub/governance.db")
    with pytest.raises(StoreUnavailableError, match="governance database sqlite:///.*unavailable"):
        store.upgrade()


def test_missing_schema_says_upgrade(tmp_path, record):
    store = GovernanceStore(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StoreError, match="certrisk db upgrade"):
        store.write_run(record)


def test_outdated_schema_says_upgrade_and_writes_nothing(store, record):
    """A column the code writes is missing (a database behind the code's migrations): the bulk
    insert's driver error becomes a StoreError naming the fix, not a raw driver error to retry."""
    with store.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE certificate DROP COLUMN dtype"))
    with pytest.raises(StoreError, match=r"out of date .*certrisk db upgrade.*dtype") as info:
        store.write_run(record)
    assert not isinstance(info.value, StoreUnavailableError)
    assert _count(store, "pipeline_run") == 0 and _count(store, "sample_risk") == 0
