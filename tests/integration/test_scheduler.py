"""A real scheduler run: ``airflow api-server``, ``airflow scheduler`` and ``airflow dag-processor``
with LocalExecutor and a fresh PostgreSQL metadata database, in a temporary AIRFLOW_HOME, on a
free loopback port. The test triggers ``certrisk_digits`` through the REST API (v2) on a small
batch, waits (bounded) for the run to succeed, checks the governance records in a fresh
PostgreSQL governance database, and stops every process it started, also on failure (printing
the tail of each process's log then).

Auth: the default SimpleAuthManager with ``[core] simple_auth_manager_all_admins = True``; the
test still asks ``GET /auth/token`` for a token and sends it, as a client would.
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack

import pandas as pd
import pytest

from tests.conftest import REPO, require_postgres
from tests.integration.cluster import AirflowCluster, create_db, drop_db, free_port, local_executor_env

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DAG_ID = "certrisk_digits"
START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 240


@pytest.fixture
def cluster(tmp_path, demo_assets):
    require_postgres()
    suffix = uuid.uuid4().hex[:10]
    meta_db, gov_db = f"certrisk_af_{suffix}", f"certrisk_t_{suffix}"
    home = tmp_path / "airflow"
    home.mkdir()
    port = free_port()
    with ExitStack() as stack:
        meta_url = create_db(meta_db)
        stack.callback(drop_db, meta_db)
        gov_url = create_db(gov_db)
        stack.callback(drop_db, gov_db)
        env = local_executor_env(
            home=home,
            port=port,
            metadata_url=meta_url,
            dags_folder=REPO / "dags",
            parallelism=2,
            extra={"CERTRISK_DB_URL": gov_url},
        )
        af = AirflowCluster(home, env, port)
        af.migrate()
        from certrisk.governance import GovernanceStore

        gov = GovernanceStore(gov_url)
        gov.upgrade()  # a configured governance DB is migrated by an administrator, not by the pipeline
        stack.callback(gov.dispose)

        af.start_all()
        stack.callback(af.stop)
        yield af, gov


def test_scheduler_runs_certrisk_digits_through_the_rest_api(cluster, small_batches):
    af, gov = cluster
    try:
        af.wait_for(
            "the API server", lambda: af.request("GET", "/api/v2/monitor/health")[0] == 200, START_TIMEOUT_S
        )
        status, body = af.request("GET", "/auth/token")
        assert status in (200, 201), body
        af.token = body["access_token"]
        af.wait_for(
            f"{DAG_ID} to be parsed",
            lambda: af.request("GET", f"/api/v2/dags/{DAG_ID}")[0] == 200,
            START_TIMEOUT_S,
        )
        status, body = af.request("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        assert status == 200 and body["is_paused"] is False, body

        batch = str(small_batches["clean"])
        status, body = af.request(
            "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {"batch_uri": batch}}
        )
        assert status == 200, body
        run_id = body["dag_run_id"]

        def finished():
            state = af.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")[1].get("state")
            return state if state in ("success", "failed") else None

        state = af.wait_for(f"run {run_id}", finished, RUN_TIMEOUT_S, interval=2.0)
        status, tis = af.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")
        ti_states = {(t["task_id"], t["map_index"]): t["state"] for t in tis["task_instances"]}
        assert state == "success", ti_states
        assert ti_states[("certify", 0)] == "success"
    except BaseException:
        print(af.log_tails())
        raise

    runs = gov.list_runs()
    assert runs["run_id"].tolist() == [run_id]
    expected = sorted(pd.read_parquet(batch)["sample_id"])
    assert int(runs.iloc[0]["n_samples"]) == len(expected)
    assert sorted(gov.samples(run_id, limit=None)["sample_id"]) == expected
    assert gov.verify().ok
