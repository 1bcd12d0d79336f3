"""A mapped run with 3 shards certifies exactly like a 1-shard run.

What proves it: two real DAG runs under ``dag.test()`` of the digits pipeline, built with the
factory under the example's dag_id (so its serialized version exists) on the same 192-sample
batch, one with ``shard_size=192`` (one mapped certify task) and one with ``shard_size=64``
(three mapped certify tasks, merged by the reduce step; 64 is the planner's minimum shard, so
every shard still packs many samples into each forward pass). Seeds derive from (run key, sample_id,
method); two runs have different run ids, so both get the same fixed ``run_key``, the one knob
that says "reproduce that run's randomness". Everything a certificate states (prediction,
abstention, radii in every norm, p_lower, seed, forward passes, ...) must then be equal, row by
row and in the same sample order; only the wall time and peak memory columns may differ.
"""

from __future__ import annotations

import pandas as pd
import pytest

from certrisk.operators.artifacts import read_parquet, run_root
from tests.factories import digits_pipeline, head_batch, task_instances

pytestmark = pytest.mark.slow

RUN_KEY = "tests/shard-equivalence"
COST_COLUMNS = ["seconds", "peak_bytes"]


def _run(shard_size: int, batch_uri: str):
    dag = digits_pipeline(batch_uri, shard_size=shard_size, run_key=RUN_KEY, alert=False, report=False)
    return dag.test(run_conf={"batch_uri": batch_uri})


def _mapped_certify_states(run) -> list[tuple[int, str]]:
    return [(ti["map_index"], ti["state"]) for ti in task_instances(run, "certify")]


@pytest.fixture(scope="module")
def batch_192(demo_assets, tmp_path_factory):
    return head_batch(
        demo_assets.batches["clean"], 192, tmp_path_factory.mktemp("shards") / "clean-192.parquet"
    )


@pytest.fixture(scope="module")
def one_and_three_shards(airflow_db, batch_192):
    batch = str(batch_192)
    return _run(192, batch), _run(64, batch)


def test_three_shards_give_the_certificates_of_one(one_and_three_shards, batch_192):
    one, three = one_and_three_shards
    assert one.state == "success" and three.state == "success"
    assert _mapped_certify_states(one) == [(0, "success")]
    assert _mapped_certify_states(three) == [(0, "success"), (1, "success"), (2, "success")]

    certs_1 = read_parquet(run_root(None, one.dag_id, one.run_id) / "certificates.parquet")
    certs_3 = read_parquet(run_root(None, three.dag_id, three.run_id) / "certificates.parquet")
    expected_ids = pd.read_parquet(batch_192)["sample_id"].tolist()
    # The reduce step restores sample order across shards.
    assert certs_3["sample_id"].tolist() == expected_ids
    assert len(certs_1) == len(expected_ids) and certs_1["abstained"].sum() < len(expected_ids)
    pd.testing.assert_frame_equal(
        certs_1.drop(columns=COST_COLUMNS), certs_3.drop(columns=COST_COLUMNS), check_exact=True
    )

    preds_1 = read_parquet(run_root(None, one.dag_id, one.run_id) / "predictions.parquet")
    preds_3 = read_parquet(run_root(None, three.dag_id, three.run_id) / "predictions.parquet")
    pd.testing.assert_frame_equal(preds_1, preds_3, check_exact=True)


def test_seeds_follow_the_run_key_not_the_shard(one_and_three_shards):
    from certrisk.risk.certify import derive_seeds

    one, _ = one_and_three_shards
    certs = read_parquet(run_root(None, one.dag_id, one.run_id) / "certificates.parquet")
    expected = derive_seeds(RUN_KEY, certs["sample_id"].tolist(), "smoothing")
    assert certs["seed"].to_numpy().tolist() == expected.tolist()


def test_governance_records_both_runs_with_equal_certificates(one_and_three_shards):
    from certrisk.governance import GovernanceStore
    from certrisk.schemas.settings import default_db_url

    one, three = one_and_three_shards
    store = GovernanceStore(default_db_url())
    runs = store.list_runs().set_index("run_id")
    assert one.run_id in runs.index and three.run_id in runs.index
    s1 = store.samples(one.run_id, limit=None).sort_values("sample_id").reset_index(drop=True)
    s3 = store.samples(three.run_id, limit=None).sort_values("sample_id").reset_index(drop=True)
    assert s1["sample_id"].tolist() == s3["sample_id"].tolist()
    assert s1["tier"].tolist() == s3["tier"].tolist()
    # The record names the key the seeds came from, not the run's own dag_id/run_id.
    assert store.get_run(three.dag_id, three.run_id)["summary"]["run_key"] == RUN_KEY
