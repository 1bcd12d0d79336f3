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

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from tests.conftest import REPO, require_postgres

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DAG_ID = "certrisk_digits"
START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 240
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _create_db(name: str) -> str:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def _drop_db(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class AirflowCluster:
    """The three Airflow services as child processes, each in its own process group."""

    def __init__(self, home: Path, env: dict[str, str], port: int):
        self.home = home
        self.env = env
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.token: str | None = None

    def start(self, name: str, *args: str) -> None:
        log = open(self.home / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.procs[name] = subprocess.Popen(
            [AIRFLOW, *args], env=self.env, cwd=self.home, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name].log_file = log

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # children the service forked (executor workers)
            except ProcessLookupError:
                pass
            proc.wait()
            proc.log_file.close()

    def log_tails(self, lines: int = 40) -> str:
        out = []
        for name in self.procs:
            text = (self.home / f"{name}.log").read_text(errors="replace").splitlines()
            out.append(f"----- {name} (exit {self.procs[name].poll()}) -----\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise AssertionError(f"Airflow process(es) exited early: {dead}")

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, {"detail": raw.decode(errors="replace")}

    def wait_for(self, what: str, probe, timeout: float, interval: float = 1.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                last = probe()
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


@pytest.fixture
def cluster(tmp_path, demo_assets):
    require_postgres()
    suffix = uuid.uuid4().hex[:10]
    meta_db, gov_db = f"certrisk_af_{suffix}", f"certrisk_t_{suffix}"
    home = tmp_path / "airflow"
    home.mkdir()
    port = _free_port()
    with ExitStack() as stack:
        meta_url = _create_db(meta_db)
        stack.callback(_drop_db, meta_db)
        gov_url = _create_db(gov_db)
        stack.callback(_drop_db, gov_db)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update({
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta_url,
            # psycopg 3 serves the async engine too (Airflow's derived default wants asyncpg)
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": meta_url.replace("+psycopg:", "+psycopg_async:"),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            # Only the runs this test triggers: no run for the @daily schedule's last interval.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "CERTRISK_DB_URL": gov_url,
            "GX_ANALYTICS_ENABLED": "False",
        })
        migrate = subprocess.run([AIRFLOW, "db", "migrate"], check=False, env=env, cwd=home, capture_output=True, text=True,
                                 timeout=180)
        assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
        from certrisk.governance import GovernanceStore

        gov = GovernanceStore(gov_url)
        gov.upgrade()  # a configured governance DB is migrated by an administrator, not by the pipeline
        stack.callback(gov.dispose)

        af = AirflowCluster(home, env, port)
        af.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1")
        af.start("scheduler", "scheduler")
        af.start("dag-processor", "dag-processor")
        stack.callback(af.stop)
        yield af, gov


def test_scheduler_runs_certrisk_digits_through_the_rest_api(cluster, small_batches):
    af, gov = cluster
    try:
        af.wait_for("the API server", lambda: af.request("GET", "/api/v2/monitor/health")[0] == 200,
                    START_TIMEOUT_S)
        status, body = af.request("GET", "/auth/token")
        assert status in (200, 201), body
        af.token = body["access_token"]
        af.wait_for(f"{DAG_ID} to be parsed", lambda: af.request("GET", f"/api/v2/dags/{DAG_ID}")[0] == 200,
                    START_TIMEOUT_S)
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
