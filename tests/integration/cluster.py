"""A local Airflow deployment for tests and benchmarks: api-server, scheduler (LocalExecutor) and
dag-processor as child processes on a PostgreSQL metadata database and a free loopback port.

Used by the real-scheduler tests and by ``bench/scale.py``. Importing it has no side effects.
``local_deployment`` starts one (with a fresh governance database) and tears it down; the REST
helpers (``login``, ``trigger``, ``wait_run``, ...) drive it as a client would.
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
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_db(name: str) -> str:
    """Create a PostgreSQL database on the local server; returns its SQLAlchemy URL."""
    import psycopg

    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_db(name: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def local_executor_env(
    *,
    home: Path,
    port: int,
    metadata_url: str,
    dags_folder: Path,
    parallelism: int = 2,
    extra: dict | None = None,
) -> dict[str, str]:
    """The environment all three services share (the parent's, minus its AIRFLOW_* settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
            # psycopg 3 serves the async engine too (Airflow's derived default wants asyncpg)
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": metadata_url.replace("+psycopg:", "+psycopg_async:"),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            # Only the runs a caller triggers: no run for a schedule's last interval.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "GX_ANALYTICS_ENABLED": "False",
        }
    )
    env.update(extra or {})
    return env


class AirflowCluster:
    """The three Airflow services as child processes, each in its own process group."""

    def __init__(self, home: Path, env: dict[str, str], port: int):
        self.home = home
        self.env = env
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.token: str | None = None

    def migrate(self, timeout: float = 180) -> None:
        done = subprocess.run(
            [AIRFLOW, "db", "migrate"],
            check=False,
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError("airflow db migrate failed:\n" + done.stdout[-3000:] + done.stderr[-3000:])

    def start(self, name: str, *args: str) -> None:
        with open(self.home / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [AIRFLOW, *args],
                env=self.env,
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_all(self) -> None:
        self.start(
            "api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"
        )
        self.start("scheduler", "scheduler")
        self.start("dag-processor", "dag-processor")

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

    def log_tails(self, lines: int = 40) -> str:
        out = []
        for name in self.procs:
            text = (self.home / f"{name}.log").read_text(errors="replace").splitlines()
            out.append(f"----- {name} (exit {self.procs[name].poll()}) -----\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"Airflow process(es) exited early: {dead}\n{self.log_tails()}")

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
        raise RuntimeError(
            f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}\n{self.log_tails()}"
        )

    # ------------------------------------------------------------------ REST helpers
    def login(self, timeout: float = 120) -> None:
        """Wait for the API server, then take a token (``GET /auth/token``: the all-admins mode)."""
        self.wait_for(
            "the API server", lambda: self.request("GET", "/api/v2/monitor/health")[0] == 200, timeout
        )
        status, body = self.request("GET", "/auth/token")
        if status not in (200, 201):
            raise RuntimeError(f"GET /auth/token answered {status}: {body}")
        self.token = body["access_token"]

    def unpause_when_parsed(self, dag_id: str, timeout: float = 120) -> None:
        """Wait until the dag-processor has parsed ``dag_id``, then unpause it."""
        self.wait_for(
            f"{dag_id} to be parsed", lambda: self.request("GET", f"/api/v2/dags/{dag_id}")[0] == 200, timeout
        )
        status, body = self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        if status != 200 or body.get("is_paused") is not False:
            raise RuntimeError(f"unpausing {dag_id} answered {status}: {body}")

    @staticmethod
    def run_path(dag_id: str, run_id: str) -> str:
        return f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        """Trigger a run of ``dag_id`` now; returns its run id."""
        status, body = self.request(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}}
        )
        if status != 200:
            raise RuntimeError(f"triggering {dag_id} answered {status}: {body}")
        return body["dag_run_id"]

    def task_states(self, dag_id: str, run_id: str) -> dict[tuple[str, int], str | None]:
        """(task_id, map_index) -> state of every task instance of a run."""
        status, body = self.request("GET", self.run_path(dag_id, run_id) + "/taskInstances?limit=1000")
        if status != 200:
            raise RuntimeError(f"listing task instances of {dag_id}/{run_id} answered {status}: {body}")
        return {(t["task_id"], t["map_index"]): t["state"] for t in body["task_instances"]}

    def wait_task_state(
        self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout: float
    ) -> str:
        """Wait until ``task_id`` (unmapped) of a run is in one of ``states``; returns the state."""

        def probe():
            state = self.task_states(dag_id, run_id).get((task_id, -1))
            return state if state in states else None

        return self.wait_for(
            f"{dag_id}/{run_id} task {task_id} in {sorted(states)}", probe, timeout, interval=2.0
        )

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        """Wait until a run has finished; returns "success" or "failed"."""

        def finished():
            state = self.request("GET", self.run_path(dag_id, run_id))[1].get("state")
            return state if state in ("success", "failed") else None

        return self.wait_for(f"run {dag_id}/{run_id}", finished, timeout, interval=2.0)


@contextmanager
def local_deployment(
    tmp_path: Path, *, dags_folder: Path, parallelism: int = 2, extra: dict | None = None
) -> Iterator[tuple[AirflowCluster, str]]:
    """A started ``AirflowCluster`` on fresh PostgreSQL metadata and governance databases (the
    governance one migrated, as an administrator would; ``CERTRISK_DB_URL`` points the tasks at
    it), yielded with the governance URL. Stops every process and drops both databases after,
    printing the tail of each process's log when the body raised."""
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
            dags_folder=dags_folder,
            parallelism=parallelism,
            extra={"CERTRISK_DB_URL": gov_url, **(extra or {})},
        )
        af = AirflowCluster(home, env, port)
        af.migrate()
        from certrisk.governance import GovernanceStore

        gov = GovernanceStore(gov_url)
        gov.upgrade()
        gov.dispose()
        af.start_all()
        stack.callback(af.stop)
        try:
            yield af, gov_url
        except BaseException:
            print(af.log_tails())
            raise
