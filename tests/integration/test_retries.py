"""Idempotent retries: real faults on the first try, Airflow's own retry, and then exactly one
governance record with the certificates the first try computed.

One DAG run of the digits pipeline (built with the factory under the example's dag_id, one
retry per task, 1 s retry delay) under ``dag.test()``, with two faults that happen for real:

- certify: before its first try, a plain file sits where the run's ``predictions/`` directory
  goes, so writing the shard's predictions raises an OSError after the certificates were
  computed and written (an artifact store that refused a write). The retry callback keeps the
  first try's certificate file as evidence and removes the obstacle; the retry recomputes.
- governance_write: the ``certrisk_governance`` connection names a PostgreSQL database that
  does not exist yet, so the first try raises StoreUnavailableError (retryable, not an
  AirflowFailException). The retry callback creates and migrates the database (the DBA
  bringing it back); the retry writes.

Then: both tasks succeeded on try 2; the retried certificates equal the first try's (seeds from
run key and sample_id); the governance DB holds exactly one run, revision 1, one audit entry,
one row per sample, and its certificates are the merged artifact's.
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import timedelta

import pandas as pd
import psycopg
import pytest

from certrisk.operators.artifacts import read_parquet, run_root
from tests.conftest import require_postgres
from tests.factories import digits_pipeline, task_instances

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CONN_ID = "certrisk_retry_test"
COST_COLUMNS = ["seconds", "peak_bytes"]


class Faults:
    """Plants the faults and clears them from Airflow's callbacks; records what it saw."""

    def __init__(self, db_name: str, evidence_dir):
        self.db_name = db_name
        self.evidence_dir = evidence_dir
        self.retries: list[tuple[str, int, str]] = []
        self.n_samples = 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.db_name}"

    @staticmethod
    def _blocker(context):
        dag_run = context["dag_run"]
        return run_root(None, dag_run.dag_id, dag_run.run_id) / "predictions"

    def on_execute(self, context) -> None:
        ti = context["ti"]
        if ti.task_id == "certify" and ti.try_number == 1:
            self._blocker(context).write_text("not a directory: the artifact store refuses this write\n")

    def on_retry(self, context) -> None:
        ti = context["ti"]
        exc = context.get("exception")
        self.retries.append((ti.task_id, ti.try_number, f"{type(exc).__name__}: {exc}"))
        if ti.task_id == "certify":
            dag_run = context["dag_run"]
            first = run_root(None, dag_run.dag_id, dag_run.run_id) / "certificates" / "shard-00000.parquet"
            shutil.copy(str(first.path), self.evidence_dir / "try1-certificates.parquet")
            self._blocker(context).unlink()
        elif ti.task_id == "governance_write":
            from certrisk.governance import GovernanceStore

            with psycopg.connect(
                "host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True
            ) as c:
                c.execute(f'CREATE DATABASE "{self.db_name}"')
            store = GovernanceStore(self.url)
            store.upgrade()
            store.dispose()


@pytest.fixture(scope="module")
def faulty_run(airflow_db, small_batches, tmp_path_factory):
    require_postgres()
    db_name = f"certrisk_t_{uuid.uuid4().hex[:12]}"
    faults = Faults(db_name, tmp_path_factory.mktemp("retry-evidence"))
    conn = {
        "conn_type": "certrisk_governance",
        "host": "127.0.0.1",
        "port": 5432,
        "login": "postgres",
        "schema": db_name,
    }
    env_key = f"AIRFLOW_CONN_{CONN_ID.upper()}"
    mp = pytest.MonkeyPatch()
    mp.setenv(env_key, json.dumps(conn))
    batch = str(small_batches["clean"])
    dag = digits_pipeline(
        batch,
        certrisk_conn_id=CONN_ID,
        write_retries=1,
        alert=False,
        report=False,
        default_args={
            "retries": 1,
            "retry_delay": timedelta(seconds=1),
            "on_execute_callback": faults.on_execute,
            "on_retry_callback": faults.on_retry,
        },
    )
    try:
        run = dag.test(run_conf={"batch_uri": batch})
        faults.n_samples = len(pd.read_parquet(batch))
        yield run, faults
    finally:
        mp.undo()
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def _tries(run) -> dict[str, tuple[str, int]]:
    return {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in task_instances(run)}


def test_both_faults_hit_the_first_try_and_the_retry_succeeds(faulty_run):
    run, faults = faulty_run
    assert run.state == "success"
    seen = {task: (try_number, error) for task, try_number, error in faults.retries}
    assert set(seen) == {"certify", "governance_write"}, faults.retries
    assert seen["certify"][0] == 1 and "predictions" in seen["certify"][1]
    assert seen["governance_write"][0] == 1
    assert seen["governance_write"][1].startswith("StoreUnavailableError"), seen["governance_write"]
    tries = _tries(run)
    assert tries["certify"] == ("success", 2)
    assert tries["governance_write"] == ("success", 2)
    assert tries["validate"] == ("success", 1)


def test_retried_certificates_equal_the_first_try(faulty_run):
    run, faults = faulty_run
    first = pd.read_parquet(faults.evidence_dir / "try1-certificates.parquet")
    retried = read_parquet(run_root(None, run.dag_id, run.run_id) / "certificates" / "shard-00000.parquet")
    assert len(first) == faults.n_samples
    pd.testing.assert_frame_equal(
        first.drop(columns=COST_COLUMNS), retried.drop(columns=COST_COLUMNS), check_exact=True
    )


def test_exactly_one_governance_record(faulty_run):
    from certrisk.governance import GovernanceStore

    run, faults = faulty_run
    store = GovernanceStore(faults.url)
    try:
        runs = store.list_runs()
        assert runs["run_id"].tolist() == [run.run_id]
        recorded = store.get_run(run.dag_id, run.run_id)
        assert int(recorded["revision"]) == 1
        assert len(store.samples(run.run_id, limit=None)) == faults.n_samples
        merged = read_parquet(run_root(None, run.dag_id, run.run_id) / "certificates.parquet")
        certs = recorded["certificates"]
        assert certs["sample_id"].tolist() == merged["sample_id"].tolist()
        assert certs["seed"].tolist() == merged["seed"].tolist()
        assert certs["radius"].tolist() == merged["radius"].tolist()
        report = store.verify()
        assert report.ok, report
        with store.engine.connect() as conn:
            import sqlalchemy as sa

            kinds = conn.execute(sa.text("SELECT kind, count(*) FROM audit_log GROUP BY kind")).all()
        # one chained entry for the run; the model and the policy are chained once each (0005)
        assert dict(kinds) == {"run": 1, "model": 1, "policy": 1}
    finally:
        store.dispose()
