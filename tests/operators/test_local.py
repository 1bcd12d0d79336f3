"""The local runner: the pipeline's operators for one batch, in-process, without a scheduler, on
48 samples of the digits demo. It writes a DAG run's artifacts, exposes every step's tables,
reproduces its certificates from a run key and records into a governance DB when given one.
(That it scores like a real ``dag.test()`` run is tests/integration/test_local_runner.py.)"""

from __future__ import annotations

import pandas as pd
import pytest

from certrisk.operators.local import run_local
from certrisk.schemas.columns import SAMPLE_RISK_COLUMNS
from tests.conftest import demo_assets_cached
from tests.factories import head_batch

pytestmark = pytest.mark.slow  # about 80 s: the first run certifies the reference set

RUN_KEY = "tests/local-runner"


@pytest.fixture(scope="module")
def batch_48(tmp_path_factory):
    assets = demo_assets_cached("digits")
    return head_batch(assets.batches["clean"], 48, tmp_path_factory.mktemp("local") / "clean-48.parquet")


@pytest.fixture(scope="module")
def policy():
    from certrisk.demo_assets import DATASETS

    return DATASETS["digits"].policy


@pytest.fixture(scope="module")
def first_run(policy, batch_48, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    return run_local(policy, batch_48, artifacts_dir=root, run_id="first", run_key=RUN_KEY), root


def test_artifacts_and_tables_of_one_run(first_run, batch_48):
    run, root = first_run
    run_dir = root / "certrisk_local" / "first"
    for name in ("batch.parquet", "certificates.parquet", "context.parquet", "sample_risk.parquet"):
        assert (run_dir / name).is_file(), name
    ids = pd.read_parquet(batch_48)["sample_id"].tolist()
    sample_risk = run.sample_risk()
    assert list(sample_risk.columns) == list(SAMPLE_RISK_COLUMNS)
    assert sample_risk["sample_id"].tolist() == ids
    assert run.predictions()["sample_id"].tolist() == ids
    assert set(run.certificates()["sample_id"]) == set(ids)
    assert set(run.context_frame()["sample_id"]) == set(ids)
    assert set(run.rule_samples()["sample_id"]) == set(ids)
    assert set(run.novelty()["sample_id"]) == set(ids)
    assert len(run.drift_tests()) == run.drift["n_tests"]
    summary = run.batch_summary()
    assert summary["tier"] == run.tier and summary["n_samples"] == 48
    assert summary["run_key"] == RUN_KEY
    assert run.recorded is None
    assert [s["index"] for s in run.shards] == [0]


def test_a_run_key_reproduces_the_risks_and_a_db_records_the_run(first_run, policy, batch_48, tmp_path):
    from certrisk.governance import GovernanceStore

    run, _ = first_run
    url = f"sqlite:///{tmp_path / 'governance.db'}"
    GovernanceStore(url).upgrade()
    again = run_local(
        policy, batch_48, artifacts_dir=tmp_path / "a", run_id="again", run_key=RUN_KEY, db_url=url
    )
    pd.testing.assert_frame_equal(
        again.sample_risk().drop(columns=["top_factors", "rmf_ids"]),
        run.sample_risk().drop(columns=["top_factors", "rmf_ids"]),
    )
    assert again.tier == run.tier
    assert again.recorded["status"] != "already recorded"
    store = GovernanceStore(url)
    recorded = store.list_runs().set_index("run_id")
    assert recorded.loc["again", "tier"] == run.tier
    assert sorted(store.samples("again", limit=None)["sample_id"]) == sorted(run.sample_risk()["sample_id"])
    # another run key draws other certification noise
    other = run_local(policy, batch_48, artifacts_dir=tmp_path / "b", run_id="other")
    assert other.batch_summary()["run_key"] == "certrisk_local/other"
    assert not other.certificates()["seed"].equals(run.certificates()["seed"])
