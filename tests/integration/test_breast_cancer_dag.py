"""The tabular example DAG (scikit-learn's breast cancer data, an MLP, a rule-heavy policy) run
for real under ``dag.test()`` on 48 samples of the shifted batch (every size feature reads
0.8 standard deviations high): every certification method (smoothing, IBP, CROWN, Lipschitz)
certifies every sample, the
batch-level expectations catch the shift, and the run is recorded once. The run either succeeds
or ends, by design, with only the alert task failed after the record landed."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.factories import head_batch, task_instances

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def breast_cancer_run(airflow_db, breast_cancer_assets, tmp_path_factory):
    from airflow.dag_processing.dagbag import DagBag

    from certrisk.demo import run_outcome
    from certrisk.demo_assets import DAGS_FOLDER

    batch = head_batch(
        breast_cancer_assets.batches["shifted"], 48, tmp_path_factory.mktemp("bc") / "shifted-48.parquet"
    )
    bag = DagBag(dag_folder=str(DAGS_FOLDER / "certrisk_breast_cancer.py"))
    assert bag.import_errors == {}
    dag = bag.get_dag("certrisk_breast_cancer")
    run = dag.test(run_conf={"batch_uri": str(batch)})
    return run, run_outcome(run), batch


def _task_states(run) -> dict[str, str]:
    return {ti["task_id"]: ti["state"] for ti in task_instances(run)}


def test_run_succeeds_or_ends_with_the_designed_alert(breast_cancer_run):
    run, outcome, _ = breast_cancer_run
    states = _task_states(run)
    assert outcome in ("success", "alert"), states
    failed = sorted(task for task, state in states.items() if state != "success")
    assert failed == ([] if outcome == "success" else ["alert"]), states


def test_record_holds_every_sample_and_every_method(breast_cancer_run):
    from certrisk.governance import GovernanceStore
    from certrisk.schemas.settings import default_db_url

    run, outcome, batch = breast_cancer_run
    store = GovernanceStore(default_db_url())
    recorded = store.get_run(run.dag_id, run.run_id)
    ids = sorted(pd.read_parquet(batch)["sample_id"])
    assert sorted(store.samples(run.run_id, limit=None)["sample_id"]) == ids
    certs = recorded["certificates"]
    assert set(certs["method"]) == {"smoothing", "ibp", "crown", "lipschitz"}
    for _method, group in certs.groupby("method"):
        assert sorted(group["sample_id"]) == ids
    # CROWN is never looser than IBP: per sample, its searched radius is at least IBP's
    by = certs.set_index(["method", "sample_id"])["radius"]
    assert (by["crown"].loc[ids].to_numpy() >= by["ibp"].loc[ids].to_numpy()).all()
    # The alert fires exactly when the recorded tier reaches the policy's alert tier (critical).
    assert (recorded["tier"] == "critical") == (outcome == "alert")


def test_rules_catch_the_shift_at_batch_level(breast_cancer_run):
    from certrisk.governance import GovernanceStore
    from certrisk.schemas.settings import default_db_url

    run, _, _ = breast_cancer_run
    rules = GovernanceStore(default_db_url()).get_run(run.dag_id, run.run_id)["rule_expectations"]
    by_name = rules.set_index("expectation")
    named = {
        "mean_radius_plausible",
        "mean_area_plausible",
        "worst_concave_points_plausible",
        "mean_radius_batch_mean",
        "mean_texture_batch_mean",
        "mean_area_batch_spread",
        "worst_radius_quantiles",
    }
    assert named <= set(by_name.index), sorted(by_name.index)
    # Size features read 0.8 sd high: the batch mean of mean_radius leaves [-0.5, 0.5].
    assert not bool(by_name.loc["mean_radius_batch_mean", "success"])
    # Texture is not a size feature: its batch mean stays inside.
    assert bool(by_name.loc["mean_texture_batch_mean", "success"])
    # Nothing is beyond 6 sd: the hard plausibility limits hold.
    assert bool(by_name.loc["mean_radius_plausible", "success"])
