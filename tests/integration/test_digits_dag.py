"""The digits example DAG, run for real under dag.test() on a migrated metadata DB, once per demo
batch (clean, shifted, attacked; 96 samples each)."""

from __future__ import annotations

import pandas as pd
import pytest

from certrisk.schemas.settings import default_db_url

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits_runs(digits_dag, small_batches):
    runs = {}
    for name in ("clean", "shifted", "attacked"):
        run = digits_dag.test(run_conf={"batch_uri": str(small_batches[name])})
        runs[name] = run
    return runs


def test_runs_record_one_governance_row_per_sample(digits_runs, small_batches):
    from certrisk.governance import GovernanceStore

    store = GovernanceStore(default_db_url())
    runs = store.list_runs().set_index("run_id")
    for name, run in digits_runs.items():
        assert run.run_id in runs.index, f"{name} run not recorded"
        expected = pd.read_parquet(small_batches[name])["sample_id"].tolist()
        samples = store.samples(run.run_id)
        assert sorted(samples["sample_id"]) == sorted(expected)
        assert int(runs.loc[run.run_id, "n_samples"]) == len(expected)


def test_attacked_batch_carries_more_risk_than_clean(digits_runs):
    from certrisk.governance import GovernanceStore

    runs = GovernanceStore(default_db_url()).list_runs().set_index("run_id")
    clean = runs.loc[digits_runs["clean"].run_id]
    attacked = runs.loc[digits_runs["attacked"].run_id]
    assert attacked["abstention_rate"] > clean["abstention_rate"]
    assert attacked["mean_risk"] > clean["mean_risk"]


def test_mean_risk_orders_attacked_over_shifted_over_clean(digits_runs):
    from certrisk.governance import GovernanceStore

    runs = GovernanceStore(default_db_url()).list_runs().set_index("run_id")
    risk = {name: runs.loc[run.run_id, "mean_risk"] for name, run in digits_runs.items()}
    assert risk["attacked"] > risk["shifted"] > risk["clean"], risk


def test_every_abstained_sample_is_high_or_above(digits_runs):
    from certrisk.governance import GovernanceStore

    store = GovernanceStore(default_db_url())
    n_abstained = 0
    for run in digits_runs.values():
        samples = store.samples(run.run_id, limit=None)
        abstained = samples[samples["abstained"].astype(bool)]
        n_abstained += len(abstained)
        assert abstained["tier"].isin(["high", "critical"]).all(), abstained[
            ["sample_id", "risk", "tier"]
        ].head()
    assert n_abstained > 0


def test_clean_run_succeeds_end_to_end(digits_runs):
    assert digits_runs["clean"].state == "success"


def test_critical_batch_fails_only_the_alert_after_the_record_landed(digits_runs):
    from certrisk.demo import run_outcome
    from certrisk.governance import GovernanceStore

    run = digits_runs["attacked"]
    recorded = GovernanceStore(default_db_url()).list_runs().set_index("run_id")
    assert recorded.loc[run.run_id, "tier"] == "critical"
    assert run_outcome(run) == "alert"


def test_run_report_artifact_written(digits_runs):
    from certrisk.operators.artifacts import run_root

    run = digits_runs["clean"]
    report = run_root(None, run.dag_id, run.run_id) / "report-compliance.html"
    assert report.exists(), "the report task wrote no compliance report for the clean run"
    html = report.read_text()
    assert len(html) > 10_000 and run.run_id in html
