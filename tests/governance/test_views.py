"""Migration 0002's compliance views and the queries over them, on both backends."""

from __future__ import annotations

from dataclasses import replace

import pytest
import sqlalchemy as sa
from alembic import command
from records import make_record

from certrisk.governance import GovernanceStore
from certrisk.governance.queries import DEFAULT_SAMPLE_LIMIT, METHOD_COST_COLUMNS
from certrisk.governance.store import migrations_config
from certrisk.schemas.errors import InputError


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
        command.downgrade(migrations_config(conn), "0001")
    assert store.current_revision() == "0001"
    with store.engine.connect() as conn:
        cols = conn.execute(sa.text("SELECT * FROM v_run_summary")).keys()
        assert "abstention_p_value" not in cols
        assert conn.execute(sa.text("SELECT COUNT(*) FROM v_sample_risk")).scalar_one() == 20
    with store.write_engine.begin() as conn:
        command.downgrade(migrations_config(conn), "base")
    store.upgrade()
    assert store.current_revision() == "0002"
    store.write_run(make_record("run-2", 20))
    assert store.method_costs("run-2")["n_samples"].tolist() == [20, 20]
    assert store.verify().ok
    store.dispose()
