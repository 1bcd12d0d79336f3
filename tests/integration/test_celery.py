"""Scale-out on a real executor: the digits pipeline under the CeleryExecutor with two workers.

The deployment (``celery_cluster.py``): a private ``redis-server`` broker on a free loopback port;
api-server, scheduler and dag-processor with the CeleryExecutor on a fresh PostgreSQL metadata
database (also Celery's result backend); Celery worker ``cpu-1`` consuming ``default`` and worker
``gpu-1`` consuming ``gpu``, the certification queue of the test policy (a copy of the digits
policy with ``queue: gpu``, ``torch_threads: 1`` and a small n, so the test stays short). Each
worker's tasks record its name as their host (``[core] hostname_callable``).

Two runs of one DAG through the REST API, 192 samples in three shards of 64, one fixed run key
(so both runs draw the same noise):

1. undisturbed: every certify shard ran on ``gpu-1`` from queue ``gpu``, every other task on
   ``cpu-1`` from ``default``, all at the first try; the governance record holds the run once,
   one certificate row per sample, each naming its worker and queue;
2. lost worker: ``gpu-1`` and every process under it are SIGKILLed while a shard runs; a
   replacement ``gpu-2`` starts; the scheduler notices the silent task instance (heartbeat
   timeout) and retries it (``retries=1`` on the certify task) on ``gpu-2``. The run succeeds,
   the record holds it once, and its certificates (prediction, abstention, radius, p_lower per
   sample) equal the undisturbed run's.
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import ExitStack

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, require_postgres
from tests.factories import head_batch
from tests.integration.celery_cluster import (
    CeleryCluster,
    RedisServer,
    celery_executor_env,
    redis_server_binary,
)
from tests.integration.cluster import create_db, drop_db, free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DAG_ID = "certrisk_digits"
CERT_QUEUE = "gpu"
N_SAMPLES, SHARD = 192, 64
START_TIMEOUT_S = 180
RUN_TIMEOUT_S = 300
RECORD_COLUMNS = ["prediction", "abstained", "radius", "p_lower"]

# Airflow's DAG discovery (safe mode) parses only files that mention both "airflow" and "dag".
DAG_FILE = '''"""The digits pipeline on the Celery test policy for Airflow (certify on queue gpu, one retry)."""
from datetime import timedelta
from pathlib import Path

from certrisk.operators import certrisk_dag

dag = certrisk_dag(
    str(Path(__file__).parent / "policies" / "digits.yaml"),
    dag_id="certrisk_digits",
    schedule=None,
    batch_uri={batch!r},
    run_key="tests/celery",
    report=False,
    certify_task_kwargs={{"retries": 1, "retry_delay": timedelta(seconds=1)}},
)
'''


def require_redis() -> None:
    """Skip without redis-server; fail instead under CI (``.ci/run`` installs it)."""
    if redis_server_binary() is not None:
        return
    reason = "redis-server is not installed (apt-get install redis-server)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the Celery test must run in CI: {reason}")
    pytest.skip(reason)


def write_dags(folder, batch) -> None:
    """The test DAG and its policy: the digits policy routed to queue ``gpu``, one torch thread per
    shard, n = 400 noise draws (n0 = 32) instead of 2000 to keep the test short."""
    policy = yaml.safe_load((REPO / "dags" / "policies" / "digits.yaml").read_text())
    cert = policy["certification"]
    cert.update({"queue": CERT_QUEUE, "torch_threads": 1, "shard_size": SHARD})
    cert["methods"][0].update({"n0": 32, "n": 400})
    (folder / "policies").mkdir(parents=True)
    (folder / "policies" / "digits.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    (folder / "certrisk_digits.py").write_text(DAG_FILE.format(batch=str(batch)))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, demo_assets):
    require_postgres()
    require_redis()
    root = tmp_path_factory.mktemp("celery")
    batch = head_batch(demo_assets.batches["clean"], N_SAMPLES, root / "clean-192.parquet")
    home, dags = root / "airflow", root / "dags"
    home.mkdir()
    write_dags(dags, batch)
    started = time.monotonic()
    suffix = uuid.uuid4().hex[:10]
    meta_db, gov_db = f"certrisk_af_{suffix}", f"certrisk_t_{suffix}"
    with ExitStack() as stack:
        meta_url = create_db(meta_db)
        stack.callback(drop_db, meta_db)
        gov_url = create_db(gov_db)
        stack.callback(drop_db, gov_db)
        redis = RedisServer(root)
        redis.start()
        stack.callback(redis.stop)
        port = free_port()
        env = celery_executor_env(
            home=home,
            port=port,
            metadata_url=meta_url,
            dags_folder=dags,
            broker_url=redis.url,
            extra={"CERTRISK_DB_URL": gov_url},
        )
        af = CeleryCluster(home, env, port)
        af.migrate()
        from certrisk.governance import GovernanceStore

        gov = GovernanceStore(gov_url)
        gov.upgrade()
        stack.callback(gov.dispose)
        stack.callback(af.stop)
        af.start_all()
        af.start_worker("cpu-1", ["default"])
        af.start_worker("gpu-1", [CERT_QUEUE])
        try:
            af.login(START_TIMEOUT_S)
            af.unpause_when_parsed(DAG_ID, START_TIMEOUT_S)
        except BaseException:
            print(af.log_tails())
            raise
        print(f"deployment up in {time.monotonic() - started:.0f}s")
        yield af, gov, batch


def task_instances(af: CeleryCluster, run_id: str) -> list[dict]:
    status, body = af.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")
    assert status == 200, body
    return body["task_instances"]


def tries(af: CeleryCluster, run_id: str, task_id: str, map_index: int) -> list[dict]:
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/tries"
    status, body = af.request("GET", path)
    assert status == 200, body
    return sorted(body["task_instances"], key=lambda t: t["try_number"])


def timeline(tis: list[dict]) -> str:
    """One line per task instance (start order): task, map index, try, worker, queue, seconds."""
    rows = sorted((t for t in tis if t["start_date"]), key=lambda t: t["start_date"])
    return "\n".join(
        f"  {t['start_date'][11:19]} {t['task_id']}[{t['map_index']}] try {t['try_number']} "
        f"on {t['hostname']} ({t['queue']}): {t['duration'] or 0:.1f}s"
        for t in rows
    )


def assert_routed(tis: list[dict], gpu_workers: set[str]) -> None:
    """Certify shards ran from queue gpu on a gpu worker; every other task from default on cpu-1."""
    where = {(t["task_id"], t["map_index"]): (t["queue"], t["hostname"], t["state"]) for t in tis}
    certify = {k: v for k, v in where.items() if k[0] == "certify"}
    assert sorted(m for _, m in certify) == list(range(N_SAMPLES // SHARD)), where
    for key, (queue, host, state) in where.items():
        assert state == "success", where
        if key[0] == "certify":
            assert queue == CERT_QUEUE and host in gpu_workers, (key, queue, host)
        else:
            assert queue == "default" and host == "cpu-1", (key, queue, host)


def recorded_certificates(gov, run_id: str, batch) -> pd.DataFrame:
    """The run's certificates from the governance record, after checking it holds the run once."""
    runs = gov.list_runs()
    assert runs["run_id"].tolist().count(run_id) == 1, runs["run_id"].tolist()
    certs = gov.get_run(DAG_ID, run_id)["certificates"]
    ids = sorted(pd.read_parquet(batch)["sample_id"])
    assert sorted(certs["sample_id"]) == ids  # one smoothing certificate per sample, none twice
    assert (certs["queue"] == CERT_QUEUE).all(), certs["queue"].unique()
    return certs.set_index("sample_id").sort_index()


@pytest.fixture(scope="module")
def undisturbed(deployment):
    af = deployment[0]
    try:
        run_id = af.trigger(DAG_ID)
        state = af.wait_run(DAG_ID, run_id, RUN_TIMEOUT_S)
        tis = task_instances(af, run_id)
        assert state == "success", [(t["task_id"], t["map_index"], t["state"]) for t in tis]
    except BaseException:
        print(af.log_tails())
        raise
    print(f"undisturbed run {run_id}:\n{timeline(tis)}")
    return run_id, tis


def test_certify_shards_run_on_the_certification_queue_worker(deployment, undisturbed):
    _, gov, batch = deployment
    run_id, tis = undisturbed
    assert_routed(tis, {"gpu-1"})
    assert {t["try_number"] for t in tis} == {1}
    certs = recorded_certificates(gov, run_id, batch)
    assert (certs["worker"] == "gpu-1").all(), certs["worker"].unique()
    assert certs["abstained"].sum() < len(certs)
    assert gov.verify().ok


def kill_during_a_shard(af: CeleryCluster, run_id: str) -> dict:
    """SIGKILL gpu-1 (and its task processes) while it runs a certify shard; start gpu-2."""

    def running_shard():
        running = [
            t for t in task_instances(af, run_id) if t["task_id"] == "certify" and t["state"] == "running"
        ]
        return running[0] if running and running[0]["hostname"] == "gpu-1" else None

    shard = af.wait_for("a certify shard running on gpu-1", running_shard, RUN_TIMEOUT_S, interval=0.3)
    killed = af.kill_worker("gpu-1")
    assert len(killed) >= 3, killed  # the worker, its pool process and the task's processes
    af.start_worker("gpu-2", [CERT_QUEUE])
    return shard


def test_a_lost_certification_worker_is_retried_and_recorded_once(deployment, undisturbed):
    af, gov, batch = deployment
    first_id, _ = undisturbed
    started = time.monotonic()
    try:
        run_id = af.trigger(DAG_ID)
        shard = kill_during_a_shard(af, run_id)
        state = af.wait_run(DAG_ID, run_id, RUN_TIMEOUT_S)
        tis = task_instances(af, run_id)
        assert state == "success", [(t["task_id"], t["map_index"], t["state"]) for t in tis]
    except BaseException:
        print(af.log_tails())
        raise
    print(f"lost-worker run {run_id}, {time.monotonic() - started:.0f}s:\n{timeline(tis)}")

    assert_routed(tis, {"gpu-1", "gpu-2"})
    history = tries(af, run_id, "certify", shard["map_index"])
    assert [(t["try_number"], t["hostname"]) for t in history] == [(1, "gpu-1"), (2, "gpu-2")], history
    assert history[0]["state"] == "failed" and history[1]["state"] == "success", history

    certs = recorded_certificates(gov, run_id, batch)
    reference = recorded_certificates(gov, first_id, batch)
    pd.testing.assert_frame_equal(certs[RECORD_COLUMNS], reference[RECORD_COLUMNS], check_exact=True)
    lo = shard["map_index"] * SHARD
    retried_ids = pd.read_parquet(batch)["sample_id"].iloc[lo : lo + SHARD].tolist()  # contiguous shards
    assert (certs.loc[retried_ids, "worker"] == "gpu-2").all(), certs.loc[retried_ids, "worker"].unique()
    assert len(gov.list_runs()) == 2
    assert gov.verify().ok
