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

import pandas as pd
import pytest

from certrisk.governance import GovernanceStore
from tests.conftest import REPO, require_postgres
from tests.integration.cluster import local_deployment

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DAG_ID = "certrisk_digits"
RUN_TIMEOUT_S = 240


def test_scheduler_runs_certrisk_digits_through_the_rest_api(tmp_path, demo_assets, small_batches):
    require_postgres()
    batch = str(small_batches["clean"])
    with local_deployment(tmp_path, dags_folder=REPO / "dags") as (af, gov_url):
        af.login()
        af.unpause_when_parsed(DAG_ID)
        run_id = af.trigger(DAG_ID, {"batch_uri": batch})
        state = af.wait_run(DAG_ID, run_id, RUN_TIMEOUT_S)
        ti_states = af.task_states(DAG_ID, run_id)
        assert state == "success", ti_states
        assert ti_states[("certify", 0)] == "success"
        gov = GovernanceStore(gov_url)  # before the deployment drops its databases
        try:
            runs = gov.list_runs()
            assert runs["run_id"].tolist() == [run_id]
            expected = sorted(pd.read_parquet(batch)["sample_id"])
            assert int(runs.iloc[0]["n_samples"]) == len(expected)
            assert sorted(gov.samples(run_id, limit=None)["sample_id"]) == expected
            assert gov.verify().ok
        finally:
            gov.dispose()
