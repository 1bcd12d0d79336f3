"""The local runner scores a batch exactly as a real DAG run does: a ``dag.test()`` run of the
digits pipeline and ``run_local`` on the same 48 samples, with the DAG run's own run key (so both
draw the same certification noise), give the same certificates, sample risks and batch tier."""

from __future__ import annotations

import pandas as pd
import pytest

from certrisk.operators.artifacts import read_json, read_parquet, run_root
from certrisk.operators.local import run_local
from tests.factories import digits_pipeline, head_batch

pytestmark = pytest.mark.slow

VOLATILE = ["seconds", "peak_bytes"]


@pytest.fixture(scope="module")
def dag_and_local(airflow_db, demo_assets, tmp_path_factory):
    from certrisk.demo_assets import DATASETS

    batch = head_batch(
        demo_assets.batches["clean"], 48, tmp_path_factory.mktemp("local") / "clean-48.parquet"
    )
    dag = digits_pipeline(str(batch), alert=False, report=False)
    run = dag.test(run_conf={"batch_uri": str(batch)})
    assert run.state == "success"
    local = run_local(
        DATASETS["digits"].policy,
        batch,
        artifacts_dir=tmp_path_factory.mktemp("local-artifacts"),
        run_id="local-twin",
        run_key=f"{run.dag_id}/{run.run_id}",
    )
    return run_root(None, run.dag_id, run.run_id), local


def test_local_run_certifies_and_scores_like_the_dag(dag_and_local):
    dag_dir, local = dag_and_local
    pd.testing.assert_frame_equal(
        local.certificates().drop(columns=VOLATILE),
        read_parquet(dag_dir / "certificates.parquet").drop(columns=VOLATILE),
    )
    pd.testing.assert_frame_equal(local.sample_risk(), read_parquet(dag_dir / "sample_risk.parquet"))
    dag_summary = read_json(dag_dir / "batch_risk.json")
    local_summary = local.batch_summary()
    for key in ("tier", "reasons", "tier_counts", "mean_risk", "abstention_rate", "run_key"):
        assert local_summary[key] == dag_summary[key], key
