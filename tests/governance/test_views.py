"""Migrations 0002 to 0005's compliance views and the queries over them, on both backends."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from alembic import command
from records import make_record

from certrisk.governance import GovernanceStore, queries
from certrisk.governance.facts import FACT_COLUMNS, BatchFacts
from certrisk.governance.queries import DEFAULT_SAMPLE_LIMIT, METHOD_COST_COLUMNS
from certrisk.governance.store import migrations_config, schema_head
from certrisk.schemas.errors import InputError, StoreError


@pytest.fixture
def written(store):
    record = make_record("run-1", 60)
    summary = {**record.summary, "reference_abstention_rate": 0.05, "abstention_p_value": 0.0125}
    record = replace(record, summary=summary)
    store.write_run(record)
    return store, record


def test_drift_and_rule_views_return_the_recorded_outcomes(written):
    store, record = written
    drift = store.drift_tests("run-1")
    expected = record.drift_tests
    assert drift["test"].tolist() == expected["test"].tolist()
    assert drift["q_value"].tolist() == expected["q_value"].tolist()
    assert drift["effect_size"].isna().tolist() == expected["effect_size"].isna().tolist()
    assert drift["drift"].tolist() == [False, False]
    rules = store.rule_results("run-1")
    assert rules[["expectation", "expectation_type", "column", "severity", "level"]].values.tolist() == [
        ["pixels_in_range", "expect_column_values_to_be_between", "x0", "critical", "row"]
    ]
    assert rules["success"].tolist() == [True] and rules["unexpected_count"].tolist() == [0]


def test_method_cost_aggregates_without_certificate_values(written):
    store, record = written
    costs = store.method_costs("run-1").set_index("method")
    assert list(costs.reset_index().columns) == list(METHOD_COST_COLUMNS)
    for method, g in record.certificates.groupby("method"):
        row = costs.loc[method]
        assert int(row["n_samples"]) == len(g)
        assert row["share_certified"] == pytest.approx(1 - g["abstained"].mean())
        assert row["share_abstained"] == pytest.approx(g["abstained"].mean())
        assert row["total_seconds"] == pytest.approx(g["seconds"].sum())
        assert int(row["peak_bytes"]) == int(g["peak_bytes"].max())
        assert int(row["forward_passes"]) == int(g["n_forward"].sum())
    with store.engine.connect() as conn:
        cols = conn.execute(sa.text("SELECT * FROM v_method_cost")).keys()
    assert not [c for c in cols if "radius" in c or "p_lower" in c]


def test_run_summary_exposes_the_abstention_test(written):
    store, _record = written
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT reference_abstention_rate, abstention_p_value, tier_counts FROM v_run_summary")
        ).one()
    assert (row.reference_abstention_rate, row.abstention_p_value) == (0.05, 0.0125)
    assert row.tier_counts is not None


SCORED = {
    "abstention_test": "binomial",
    "abstention_elevated": True,
    "n_drift_tests": 2,
    "n_drift_tests_rejected": 1,
    "rule_pass_rate": 0.75,
    "not_measured": ["novelty"],
}


def _scored_record():
    """run-1 with one of its two drift tests rejected and three of four expectations passed, and
    a summary stating those figures and the ones its samples give."""
    record = make_record("run-1", 60)
    drift = record.drift_tests.assign(drift=[False, True])
    rules = pd.concat([record.rule_expectations] * 4, ignore_index=True).assign(
        success=[True, True, True, False]
    )
    s = record.sample_risk
    q = np.quantile(s["risk"].to_numpy(), [0.5, 0.9])
    scored = {
        **SCORED,
        "drift": True,
        "high_share": float(s["tier"].isin(["high", "critical"]).mean()),
        "risk_quantiles": {"p50": float(q[0]), "p90": float(q[1])},
    }
    summary = {**record.summary, "reference_abstention_rate": 0.05, "abstention_p_value": 0.0125, **scored}
    return replace(record, drift_tests=drift, rule_expectations=rules, summary=summary), scored


def test_run_summary_exposes_the_summary_facts(store):
    """Migration 0003: every figure of the batch summary a report states is a v_run_summary column,
    and ``queries.run_summary`` / ``BatchFacts`` read them as numbers on both backends."""
    record, scored = _scored_record()
    summary = record.summary
    store.write_run(record)
    with store.connect() as conn:
        cols = conn.execute(sa.text("SELECT * FROM v_run_summary")).keys()
        run = queries.run_summary(conn, "run-1")
    assert set(FACT_COLUMNS) <= set(cols)
    assert not [c for c in cols if "radius" in c or "p_lower" in c]
    facts = BatchFacts.from_row(run)
    assert facts == BatchFacts(
        n_samples=60,
        abstention_rate=summary["abstention_rate"],
        mean_risk=summary["mean_risk"],
        tier=summary["tier"],
        drift=True,
        tier_counts=summary["tier_counts"],
        risk_quantiles=scored["risk_quantiles"],
        high_share=scored["high_share"],
        reference_abstention_rate=0.05,
        abstention_test="binomial",
        abstention_p_value=0.0125,
        abstention_elevated=True,
        n_drift_tests=2,
        n_drift_tests_rejected=1,
        rule_pass_rate=0.75,
        not_measured=("novelty",),
    )
    assert run["abstention_elevated"] is True and run["reasons"] == summary["reasons"]
    assert run["created_at"].tzinfo is not None and str(run["created_at"].tz) == "UTC"


ODD = {"abstention_elevated": "yes", "n_drift_tests": "two", "rule_pass_rate": [1], "risk_quantiles": 3}


def test_summary_facts_of_another_type_or_absent_read_as_none(store):
    """write_run refuses a summary whose figures are of another JSON type; one stored anyway (an
    older record, or an edit that verify reports) or without the figures leaves the view readable
    and the figures None."""
    record = make_record("run-1", 20)
    with pytest.raises(InputError, match=r"summary: rule_pass_rate must be a number, got \[1\]"):
        store.write_run(replace(record, summary={**record.summary, **ODD}))
    store.write_run(record)
    store.write_run(make_record("run-2", 20))
    with store.engine.begin() as conn:
        stored = conn.execute(sa.text("SELECT summary FROM pipeline_run WHERE run_id = 'run-1'")).scalar_one()
        summary = {**(json.loads(stored) if isinstance(stored, str) else stored), **ODD}
        for key in ("high_share", "n_drift_tests_rejected"):
            summary.pop(key)
        conn.execute(
            sa.text("UPDATE pipeline_run SET summary = :s WHERE run_id = 'run-1'"), {"s": json.dumps(summary)}
        )
    with store.connect() as conn:
        facts = {r: BatchFacts.from_row(queries.run_summary(conn, r)) for r in ("run-1", "run-2")}
    got = facts["run-1"]
    assert (got.abstention_elevated, got.n_drift_tests, got.rule_pass_rate) == (None, None, None)
    assert (got.abstention_test, got.abstention_p_value, got.not_measured) == (None, None, None)
    assert (got.n_samples, got.high_share, got.n_drift_tests_rejected, got.risk_quantiles) == (
        20,
        None,
        None,
        {},
    )
    older = facts["run-2"]  # figures the scorer adds later (abstention test, not_measured) absent
    assert (older.abstention_test, older.abstention_p_value, older.not_measured) == (None, None, None)
    assert older.risk_quantiles == make_record("run-2", 20).summary["risk_quantiles"]
    report = store.verify()
    assert (report.ok, report.first_bad_row) == (False, "pipeline_run.summary")


def test_report_queries_read_evidence_and_models(written):
    store, record = written
    store.write_run(make_record("run-2", 10, model="tabular"))
    with store.connect() as conn:
        run = queries.run_summary(conn, "run-1")
        evidence = queries.run_evidence(conn, run["run_pk"])
        period = queries.period_evidence(
            conn, model="digits", since=run["created_at"] - pd.Timedelta(days=1), until=run["created_at"]
        )
        later = queries.period_evidence(
            conn, model="digits", since=run["created_at"], until=run["created_at"] + pd.Timedelta(days=1)
        )
        names = queries.models(conn)
    assert list(evidence.itertuples(index=False, name=None)) == record.rmf_evidence
    assert len(period) == 0  # [since, until): the run's own creation time is the first excluded instant
    assert list(later.columns) == list(queries.PERIOD_EVIDENCE_COLUMNS)
    assert sorted(later["subcategory_id"]) == sorted(e[0] for e in record.rmf_evidence)
    assert set(later["run_id"]) == {"run-1"} and str(later["created_at"].dt.tz) == "UTC"
    assert names == ["digits", "tabular"]


def test_samples_are_limited_by_default_and_riskiest_first(store):
    store.write_run(make_record("big", DEFAULT_SAMPLE_LIMIT + 200))
    page = store.samples("big")
    assert len(page) == DEFAULT_SAMPLE_LIMIT
    assert page["risk"].tolist() == sorted(page["risk"], reverse=True)
    assert len(store.samples("big", limit=None)) == DEFAULT_SAMPLE_LIMIT + 200
    low = store.samples("big", tier="low", limit=10)
    assert len(low) == 10 and set(low["tier"]) == {"low"}
    with pytest.raises(InputError, match="limit"):
        store.samples("big", limit=-1)


def test_downgrade_to_0001_and_upgrade_again(db_url):
    store = GovernanceStore(db_url)
    store.upgrade()
    store.write_run(make_record("run-1", 20))
    with store.write_engine.begin() as conn:
        command.downgrade(migrations_config(conn), "0004")
    assert store.current_revision() == "0004"
    with store.engine.connect() as conn:
        cols = conn.execute(sa.text("SELECT * FROM v_run_summary")).keys()
        assert "not_measured" in cols and "previous_tier" not in cols
        assert conn.execute(sa.text("SELECT COUNT(*) FROM audit_log")).scalar_one() == 1  # the run's
        assert "factor_method_disagreement" in list(
            conn.execute(sa.text("SELECT * FROM v_sample_risk")).keys()
        )
    with store.write_engine.begin() as conn:
        command.downgrade(migrations_config(conn), "0003")
    with store.engine.connect() as conn:
        assert "factor_method_disagreement" not in list(
            conn.execute(sa.text("SELECT * FROM v_sample_risk")).keys()
        )
        assert conn.execute(sa.text("SELECT COUNT(*) FROM v_sample_risk")).scalar_one() == 20
    with store.write_engine.begin() as conn:
        command.downgrade(migrations_config(conn), "0002")
    assert store.current_revision() == "0002"
    with store.engine.connect() as conn:
        cols = conn.execute(sa.text("SELECT * FROM v_run_summary")).keys()
        assert "abstention_p_value" in cols and "abstention_elevated" not in cols
        assert conn.execute(sa.text("SELECT COUNT(*) FROM v_method_cost")).scalar_one() == 2
    # a report reads 0003's columns
    with pytest.raises(StoreError, match="out of date.*certrisk db upgrade"), store.connect("report") as conn:
        queries.run_summary(conn, "run-1")
    with store.write_engine.begin() as conn:
        command.downgrade(migrations_config(conn), "0001")
    assert store.current_revision() == "0001"
    with store.engine.connect() as conn:
        cols = conn.execute(sa.text("SELECT * FROM v_run_summary")).keys()
        assert "abstention_p_value" not in cols
        assert conn.execute(sa.text("SELECT COUNT(*) FROM v_sample_risk")).scalar_one() == 20
    with store.write_engine.begin() as conn:
        command.downgrade(migrations_config(conn), "base")
    store.upgrade()
    assert store.current_revision() == schema_head()
    store.write_run(make_record("run-2", 20))
    assert store.method_costs("run-2")["n_samples"].tolist() == [20, 20]
    assert store.verify().ok
    store.dispose()
